"""benchmarks/context_restore.py: the erased object is one that the turn and the one before leave alone; the
exact frames restore every erased object and the erased sources none; the four conditions give the model the
right frames; the command runs the packaged model end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, load_script

SCRIPT = REPO / "benchmarks" / "context_restore.py"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from vincie_cli.synth.benchmark import make_benchmark, save_benchmark

    folder = tmp_path_factory.mktemp("restore") / "bench"
    save_benchmark(make_benchmark(6, size=64, turns=3), folder)
    return folder


@pytest.fixture(scope="module")
def mod():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def sessions(bench):
    from vincie_cli.synth.benchmark import load_benchmark

    return load_benchmark(bench)


def test_cases_pick_an_object_left_alone_and_erase_its_box(mod, sessions):
    from vincie_cli.synth.render import render_masks

    cases = mod.erase_cases(sessions)
    assert len(cases) >= 4 and {c.turn for c in cases} <= {2, 3}
    by_id = {s.id: s for s in sessions}
    for c in cases:
        s = by_id[c.sid]
        frames = [s.start_image] + [t.image for t in s.turns]
        states = [s.start_state] + [t.state for t in s.turns]
        x0, y0, x1, y1 = c.box
        assert all(v % mod.GRID == 0 for v in c.box) and x0 < x1 and y0 < y1
        assert (x1 - x0) * (y1 - y0) <= 0.25 * 64 * 64
        crops = [frames[j][y0:y1, x0:x1] for j in (c.turn - 2, c.turn - 1, c.turn)]
        assert all(np.array_equal(crops[0], x) for x in crops[1:])  # the context shows what was erased
        mask = render_masks(states[c.turn - 1], s.size)[c.obj]
        assert mask[y0:y1, x0:x1].sum() == mask.sum()  # the whole object is inside the box
        colour = next(o.colour for o in states[c.turn].present_objects if o.id == c.obj)
        assert c.colour == colour
        erased = mod.erase(frames[c.turn - 1], c.box)
        mean = np.round(frames[c.turn - 1].reshape(-1, 3).mean(0))
        assert (erased[y0:y1, x0:x1] == mean).all()
        outside = np.ones(erased.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(erased[outside], frames[c.turn - 1][outside])


def test_the_conditions_give_the_right_frames(mod, bench, sessions, tmp_path):
    cases = mod.erase_cases(sessions)
    sources = mod.write_sources(sessions, cases, tmp_path / "sources")
    c = cases[0]
    assert sources[(c.sid, c.turn)] == tmp_path / "sources" / c.sid / f"turn{c.turn - 1}_erased.png"
    erased = mod.edit_sessions(bench, sessions, cases, sources, "erased_context")[0]
    exact = mod.edit_sessions(bench, sessions, cases, sources, "exact_context")[0]
    alone = mod.edit_sessions(bench, sessions, cases, sources, "erased_no_context")[0]
    instr = {s.id: s.instructions for s in sessions}[c.sid]
    assert erased["id"] == f"{c.sid}__turn{c.turn}" and erased["prompts"] == [instr[c.turn - 1]]
    assert erased["images"] == [str(bench / "images" / c.sid / "start.png")]
    assert [h["prompt"] for h in erased["history"]] == instr[: c.turn - 1]
    assert erased["history"][-1]["image"] == str(sources[(c.sid, c.turn)])
    assert exact["history"][-1]["image"] == str(bench / "images" / c.sid / f"turn{c.turn - 1}.png")
    assert [h["image"] for h in erased["history"][:-1]] == [h["image"] for h in exact["history"][:-1]]
    assert alone["images"] == [str(sources[(c.sid, c.turn)])] and "history" not in alone


def test_exact_frames_restore_everything_and_erased_sources_nothing(mod, bench, sessions, tmp_path):
    cases = mod.erase_cases(sessions)
    sources = mod.write_sources(sessions, cases, tmp_path / "sources")
    for c in cases:  # "results" laid out as run_sessions writes them: with context turn k, alone turn 1
        run = f"{c.sid}__turn{c.turn}"
        (tmp_path / "exact" / run).mkdir(parents=True)
        (tmp_path / "exact" / run / f"turn{c.turn}.png").write_bytes(
            (bench / "images" / c.sid / f"turn{c.turn}.png").read_bytes()
        )
        (tmp_path / "copy" / run).mkdir(parents=True)
        (tmp_path / "copy" / run / "turn1.png").write_bytes(sources[(c.sid, c.turn)].read_bytes())
    exact = mod.score(sessions, cases, tmp_path / "exact", context=True)
    copied = mod.score(sessions, cases, tmp_path / "copy", context=False)
    assert mod.judge(sessions, cases, [sources[(c.sid, c.turn)] for c in cases]) == copied  # the reference row
    assert all(x["restored"] and x["box_mse"] == 0 for x in exact)
    assert not any(x["restored"] for x in copied) and all(x["box_mse"] > 0 for x in copied)
    assert mod.summary("a", exact) == {"condition": "a", "cases": len(cases), "restored": 1.0, "box_mse": 0.0}
    assert mod.paired(exact, copied) == {
        "pairs": len(cases), "only_context": len(cases), "only_no_context": 0, "p": round(2 / 2 ** len(cases), 4)
    }  # fmt: skip
    missing = mod.score(sessions, cases, tmp_path / "exact", context=False)  # no turn1.png there
    assert missing == [None] * len(cases) and mod.summary("b", missing)["cases"] == 0
    run = f"{cases[0].sid}__turn{cases[0].turn}"
    Image.open(tmp_path / "copy" / run / "turn1.png").resize((32, 32)).save(tmp_path / "copy" / run / "turn1.png")
    with pytest.raises(SystemExit, match="32x32, the benchmark is 64x64"):
        mod.score(sessions, cases, tmp_path / "copy", context=False)


def test_cli_runs_the_packaged_model_and_resumes(bench, tmp_path):
    cmd = [sys.executable, str(SCRIPT), "mini", str(bench), "-o", str(tmp_path / "out"), "--limit", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert [r.get("condition") for r in rows[:4]] == list(load_script(SCRIPT).CONDITIONS)
    n = rows[0]["cases"]
    assert n >= 1 and all(r["cases"] == n for r in rows[:4])
    assert rows[2]["restored"] >= rows[0]["restored"]  # nothing erased: at least as much kept
    copy = rows[4]  # the reference: the erased source as the output restores nothing
    assert copy["condition"] == "copy_erased_source" and copy["cases"] == n and copy["restored"] == 0.0
    assert copy["box_mse"] > 0
    assert rows[5]["pairs"] == n and rows[6]["pairs"] == n
    out = tmp_path / "out"
    runs = sorted(p.name for p in (out / "erased_context").iterdir() if p.is_dir())
    assert len(runs) == n and len(list((out / "sources").glob("*/turn*_erased.png"))) == n
    for run in runs:  # with context the session's turn k is made, alone its turn 1
        k = int(run.rsplit("__turn", 1)[1])
        assert (out / "erased_context" / run / f"turn{k}.png").is_file()
        assert (out / "exact_context" / run / f"turn{k}.png").is_file()
        assert (out / "erased_no_context" / run / "turn1.png").is_file()
        assert (out / "exact_no_context" / run / "turn1.png").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout == res.stdout  # finished turns are kept, the scores the same
    bad = subprocess.run(cmd + ["--gen-set", "steps"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--gen-set 'steps': expected KEY=VALUE" in bad.stderr
