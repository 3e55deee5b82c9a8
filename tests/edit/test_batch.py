"""`run_sessions`: the batch API `vincie eval` drives (layout, resumability, failures, data-parallel split)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.edit.conftest import make_image
from vincie_cli.edit import batch as batch_mod
from vincie_cli.edit.batch import read_manifest, run_sessions
from vincie_cli.edit.session import read_session
from vincie_cli.utils.io import BadInputError, sha256_file

FAST = {"steps": 2, "resolution": 64, "device": "cpu"}


@pytest.fixture
def sessions(tmp_path):
    a = make_image(tmp_path / "a.png", 64, 48)
    b = make_image(tmp_path / "b.png", 48, 64, seed=2)
    return [
        {"id": "s1", "images": [str(a)], "prompts": ["add a hat", "make it blue"]},
        {"id": "s2", "images": [str(b)], "prompts": ["remove the square"], "seed": 4},
    ]


def test_layout_results_and_skip_when_done(model_dir, sessions, tmp_path):
    out = tmp_path / "gen"
    turns = []
    results = run_sessions(str(model_dir), sessions, out, dict(FAST, chain="next"), on_turn=turns.append)
    assert [(r["id"], r["status"]) for r in results] == [("s1", "done"), ("s2", "done")]
    assert results[0]["images"] == [str(out / "s1" / "turn1.png"), str(out / "s1" / "turn2.png")]
    for sid, n in (("s1", 2), ("s2", 1)):
        rec = read_session(out / sid / "session.json")
        assert [t["prompt"] for t in rec["turns"]] == sessions[int(sid[1]) - 1]["prompts"]
        assert all((out / sid / f"turn{k}.png").is_file() for k in range(1, n + 1))
        assert rec["turns"][0]["masks"] == {"next": "turn1_mask_next.png"}  # dict settings with the CLI's spelling
    assert read_session(out / "s2" / "session.json")["turns"][0]["seed"] == 4
    assert [(t["session"], t["turn"]) for t in turns] == [("s1", 1), ("s1", 2), ("s2", 1)]
    before = sha256_file(out / "s1" / "turn2.png")
    again = run_sessions(str(model_dir), sessions, out, dict(FAST, chain="next"))
    assert [r["status"] for r in again] == ["skipped", "skipped"] and sha256_file(out / "s1" / "turn2.png") == before


def test_partial_session_continues_where_it_stopped(model, sessions, tmp_path):
    out = tmp_path / "gen"
    full = run_sessions(model, sessions[:1], tmp_path / "full", FAST)
    first = dict(sessions[0], prompts=sessions[0]["prompts"][:1])
    run_sessions(model, [first], out, FAST)
    model.clear_text_cache()
    results = run_sessions(model, sessions[:1], out, FAST)
    assert results[0]["status"] == "done" and len(read_session(out / "s1" / "session.json")["turns"]) == 2
    assert sha256_file(out / "s1" / "turn2.png") == sha256_file(full[0]["images"][1])


def test_failures_are_recorded_and_the_rest_runs(model, sessions, tmp_path):
    bad = {"id": "broken", "images": [str(tmp_path / "missing.png")], "prompts": ["x"]}
    out = tmp_path / "gen"
    results = run_sessions(model, [bad, sessions[1]], out, FAST)
    assert [r["status"] for r in results] == ["failed", "done"]
    assert "missing.png: no such image file" in results[0]["error"]
    failure = json.loads((out / "failures.jsonl").read_text().splitlines()[0])
    assert failure["id"] == "broken" and failure["type"] == "failure"
    with pytest.raises(BadInputError, match="missing.png"):
        run_sessions(model, [bad], tmp_path / "strict", FAST, keep_going=False)


def test_other_prompts_in_an_existing_folder_fail_that_session(model, sessions, tmp_path):
    out = tmp_path / "gen"
    run_sessions(model, sessions[1:], out, FAST)
    changed = dict(sessions[1], prompts=["something else"])
    (res,) = run_sessions(model, [changed], out, FAST)
    assert res["status"] == "failed" and "holds a session with other prompts" in res["error"]


def test_processes_split_the_sessions(model, sessions, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    waited = []
    monkeypatch.setattr(batch_mod, "_barrier", lambda: waited.append(True))
    results = run_sessions(model, sessions, tmp_path / "gen", FAST)
    assert [r["id"] for r in results] == ["s2"] and waited == [True]
    assert not (tmp_path / "gen" / "s1").exists()


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"id": "../x", "images": ["a.png"], "prompts": ["p"]}, "must be a plain name"),
        ({"id": "x", "images": [], "prompts": ["p"]}, "'images' must be a non-empty list"),
        ({"id": "x", "images": ["a.png"], "prompts": "p"}, "'prompts' must be a non-empty list"),
        ({"id": "x", "images": ["a.png"], "prompts": ["p"], "seed": "1"}, "'seed' must be an integer"),
        ({"id": "x", "images": ["a.png"], "prompts": ["p"], "colour": 1}, "unknown key"),
        ({"id": "x", "images": ["a.png"], "prompts": ["p", "q"], "masks": [None]}, "'masks' must hold one entry"),
        ({"id": "x", "images": ["a.png"], "prompts": ["p"], "masks": [{"src": "m.png"}]}, "either key"),
        ({"id": "x", "images": ["a.png"], "prompts": ["p"], "masks": [{}]}, "either key"),
        ({"id": "x", "images": ["a.png"], "prompts": ["p"], "history": [{"prompt": "q"}]}, "'history' must be"),
        ({"id": "x", "images": ["a.png"], "prompts": ["p"], "history": {"prompt": "q", "image": "i"}}, "the given"),
    ],
)
def test_bad_sessions_are_named(model, tmp_path, bad, message):
    with pytest.raises(BadInputError, match=message):
        run_sessions(model, [bad], tmp_path, FAST)


def test_given_masks_per_turn(model, sessions, tmp_path):
    """ "masks": per turn the current and/or next change mask is given (not sampled); a re-run skips it."""
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 20:40] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    s = dict(sessions[0], masks=[{"current": str(tmp_path / "m.png"), "next": str(tmp_path / "m.png")}, None])
    (res,) = run_sessions(model, [s], tmp_path / "gen", FAST)
    rec = read_session(tmp_path / "gen" / "s1" / "session.json")
    first, second = rec["turns"]
    assert first["masks"] == {"current": "turn1_mask_current.png", "next": "turn1_mask_next.png"}
    assert first["current_mask"] == "turn1_mask_current.png"
    assert first["dit_calls"] == 2 * FAST["steps"]  # only the image is sampled (guided: two passes a step)
    saved = np.asarray(Image.open(tmp_path / "gen" / "s1" / "turn1_mask_current.png"))[..., 0]
    assert ((saved > 127) == (m > 127)).all()
    assert second["masks"] == {} and res["status"] == "done"
    (again,) = run_sessions(model, [s], tmp_path / "gen", FAST)
    assert again["status"] == "skipped"


def test_history_turns_are_given_then_the_prompts_run(model, sessions, tmp_path):
    """ "history": turns given as images before the prompts (numbered first); a crash between the given turns
    and the prompts resumes with the prompts; the same session re-run is skipped."""
    made = run_sessions(model, sessions[:1], tmp_path / "made", dict(FAST, roundtrip="png"))
    first, second = sessions[0]["prompts"]
    s = dict(sessions[0], prompts=[second], history=[{"prompt": first, "image": made[0]["images"][0]}])
    (res,) = run_sessions(model, [s], tmp_path / "gen", dict(FAST, roundtrip="png"))
    rec = read_session(tmp_path / "gen" / "s1" / "session.json")
    assert [t["prompt"] for t in rec["turns"]] == [first, second] and rec["turns"][0]["given"]
    assert "given" not in rec["turns"][1] and res["images"][1] == str(tmp_path / "gen" / "s1" / "turn2.png")
    # the given turn is the generated turn 1, so turn 2 is the same image
    assert sha256_file(tmp_path / "gen" / "s1" / "turn2.png") == sha256_file(made[0]["images"][1])
    (again,) = run_sessions(model, [s], tmp_path / "gen", FAST)
    assert again["status"] == "skipped"
    # stopped after the history: the prompts still run
    (tmp_path / "gen" / "s1" / "turn2.png").unlink()
    rec["turns"] = rec["turns"][:1]
    (tmp_path / "gen" / "s1" / "session.json").write_text(json.dumps(rec))
    (res,) = run_sessions(model, [s], tmp_path / "gen", dict(FAST, roundtrip="png"))
    assert res["status"] == "done" and sha256_file(tmp_path / "gen" / "s1" / "turn2.png") == sha256_file(
        made[0]["images"][1]
    )


def test_manifest_reading(tmp_path):
    (tmp_path / "imgs").mkdir()
    lines = [
        {"id": "a", "images": ["imgs/a.png"], "prompts": ["p"]},
        {"id": "b", "images": ["/abs/b.png"], "prompts": ["q"], "seed": 3},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    lines.append({"id": "c", "images": ["c.png"], "prompts": ["p", "q"], "masks": [{"next": "m/c.png"}, None]})
    lines.append({"id": "d", "images": ["d.png"], "prompts": ["q"], "history": [{"prompt": "p", "image": "h/1.png"}]})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    got = read_manifest(tmp_path / "m.jsonl")
    assert got[0]["images"] == [str(tmp_path / "imgs" / "a.png")] and got[1]["images"] == ["/abs/b.png"]
    assert got[2]["masks"] == [{"next": str(tmp_path / "m" / "c.png")}, None]
    assert got[3]["history"] == [{"prompt": "p", "image": str(tmp_path / "h" / "1.png")}]
    (tmp_path / "dup.jsonl").write_text("".join(json.dumps(lines[0]) + "\n" for _ in range(2)))
    with pytest.raises(BadInputError, match="dup.jsonl:2: duplicate session id 'a'"):
        read_manifest(tmp_path / "dup.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"id": "a"\n')
    with pytest.raises(BadInputError, match="broken.jsonl:1: not valid JSON"):
        read_manifest(tmp_path / "broken.jsonl")
