import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vincie_cli.cli import main
from vincie_cli.eval import generate as gen_mod
from vincie_cli.eval import synthetic
from vincie_cli.eval.report import finalize, markdown
from vincie_cli.utils.io import BadInputError, UsageError


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from vincie_cli.synth.benchmark import make_benchmark, save_benchmark

    folder = tmp_path_factory.mktemp("synth") / "bench"
    save_benchmark(make_benchmark(2, size=64, turns=3), folder)
    return folder


def exact_results(bench, dest, masks_for=()):
    """The benchmark's own frames as results; masks copied for the sessions in `masks_for`."""
    shutil.copytree(bench / "images", dest)
    for sid in masks_for:
        for m in (bench / "masks" / sid).glob("*.png"):
            shutil.copy(m, dest / sid / m.name)
    return dest


def test_scores_per_turn_with_masks(bench, tmp_path):
    items, _ = synthetic.load_or_make(str(bench), tmp_path, 0, 0, 0, 0)
    a, b = items[0].id, items[1].id
    res = exact_results(bench, tmp_path / "res", masks_for=[a])
    shutil.copy(res / b / "start.png", res / b / "turn2.png")  # session b does nothing at turn 2
    report = synthetic.run_synthetic(items, res, tmp_path / "run")
    m = report["metrics"]
    assert m["success_rate"] == [1.0, 0.5, 0.5]  # cumulative: b stops counting at turn 2
    assert m["turn_success_rate"][:2] == [1.0, 0.5]
    assert m["psnr"][0] == 100.0 and m["ssim"][0] == 1.0
    assert m["iou_dst"] == [1.0, 1.0, 1.0] and m["iou_src"] == [1.0, 1.0, 1.0]  # only a has masks
    assert report["summary"]["mean_successful_turns"] == (3 + 1) / 2
    assert report["summary"]["turns_with_masks"] == 3
    scores = [json.loads(x) for x in (tmp_path / "run/scores.jsonl").read_text().splitlines()]
    assert scores[1]["turns"][1]["success"] is False and scores[1]["turns"][1]["reason"]
    assert scores[1]["turns"][1]["edit_ok"] is False and scores[0]["turns"][1]["edit_ok"] is True
    # object by object: b's turn 2 (a background change) returned the start frame, which undoes turn 1's
    # resize, so from turn 2 on that object is kept at the wrong size; every object a turn changes is right
    assert [t.kind for t in items[1].turns[:2]] == ["resize", "background"]
    assert m["edited_right"] == [1.0] * 3 and m["kept_intact"] == [1.0, 0.75, 0.6667]
    kept = [o["ok"] for sc in scores for t in sc["turns"] for o in t["objects"] if o["role"] == "kept"]
    assert report["summary"]["kept_objects_intact"] == round(sum(kept) / len(kept), 4) < 1
    assert report["summary"]["edited_objects_right"] == 1.0
    assert report["plot_metrics"][:3] == ["success_rate", "turn_success_rate", "kept_intact"]  # compare shows drift
    # per edit kind: b's turn 2 did nothing, so its kind is not always right
    kinds = report["by_kind"]
    assert sum(v["turns"] for v in kinds.values()) == 6
    k = items[1].turns[1].kind
    assert kinds[k]["edit_ok_rate"] < 1.0 and kinds[k]["success_rate"] < 1.0
    assert kinds[items[0].turns[0].kind]["edit_ok_rate"] > 0  # a's turn 1 is exact
    md = markdown(finalize(report, "exact"))
    assert "## By edit kind (every turn)" in md and f"| {k} | {kinds[k]['turns']} |" in md


def test_missing_turns_and_wrong_sizes(bench, tmp_path):
    items, _ = synthetic.load_or_make(str(bench), tmp_path, 0, 0, 0, 0)
    res = exact_results(bench, tmp_path / "res")
    (res / items[1].id / "turn3.png").unlink()
    with pytest.raises(BadInputError, match=rf"1 of 2 sessions are incomplete: {items[1].id} \(turn 3 missing\)"):
        synthetic.run_synthetic(items, res, tmp_path / "run")
    big = res / items[0].id / "turn1.png"
    Image.open(big).resize((128, 128), Image.Resampling.NEAREST).save(big)
    report = synthetic.run_synthetic(items, res, tmp_path / "run", allow_missing=True)
    assert report["failures"] == [{"session": items[1].id, "turns": [3], "status": "missing"}]
    assert report["metrics"]["success_rate"][2] == 0.5
    assert "128x128, the benchmark frame is 64x64; resized" in report["warnings"][0]
    assert "iou_dst" not in report["metrics"]
    with pytest.raises(BadInputError, match="no result images for any session"):
        synthetic.run_synthetic(items, bench, tmp_path / "run")


def test_mask_names_and_session_json(tmp_path):
    d = tmp_path / "s1"
    d.mkdir()
    (d / "turn1_current_mask.png").write_bytes(b"")
    (d / "m2.png").write_bytes(b"")
    (d / "session.json").write_text(json.dumps({"turns": [{"turn": 2, "mask_next": "m2.png"}]}))
    listed = synthetic._session_json_masks(tmp_path, "s1")
    assert synthetic.find_mask(tmp_path, "s1", 1, "src", listed) == d / "turn1_current_mask.png"
    assert synthetic.find_mask(tmp_path, "s1", 2, "dst", listed) == d / "m2.png"
    assert synthetic.find_mask(tmp_path, "s1", 1, "dst", listed) is None


def test_cli_makes_and_reuses_a_benchmark(tmp_path, runner):
    out = tmp_path / "run"
    base = ["eval", "synthetic", "--sessions", "2", "--size", "48", "--turns", "2", "-o", str(out)]
    r = runner.invoke(main, base + ["--results", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "nothing: results folder not found" in r.stderr
    made = json.loads((out / "benchmark" / "benchmark.json").read_text())
    assert made["sessions"] == 2 and made["seeds"][0] >= 1_000_000  # held-out seeds only
    stamp = (out / "benchmark" / "sessions.jsonl").stat().st_mtime_ns
    r = runner.invoke(main, base + ["--results", str(out / "benchmark" / "images"), "--name", "oracle"])
    assert r.exit_code == 0, r.output
    assert (out / "benchmark" / "sessions.jsonl").stat().st_mtime_ns == stamp  # reused, not made again
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["success_rate"] == [1.0, 1.0] and report["name"] == "oracle"
    assert json.loads(r.stdout.splitlines()[-1])["summary"]["success_rate_turn2"] == 1.0
    r = runner.invoke(main, base + ["--results", str(out), "--no-context"])
    assert r.exit_code == 2 and "need --model" in r.stderr
    r = runner.invoke(main, base + ["--model", "m", "--chain", "previous"])
    assert r.exit_code == 2 and "--chain 'previous'" in r.stderr


# --------------------------------------------------------------------------------------------
# generation wiring (edit's run_sessions replaced by an oracle editor that draws the expected frame)


class OracleEditor:
    """Stands in for `vincie_cli.edit.run_sessions`: the output for an instruction is the benchmark's
    expected frame for it; every call is recorded."""

    def __init__(self, bench, items, wrong=()):
        self.frames = {
            t.instruction: bench / "images" / s.id / f"turn{k}.png" for s in items for k, t in enumerate(s.turns, 1)
        }
        for p in wrong:  # instructions it gets wrong: it returns the start frame
            sid = next(s.id for s in items if any(t.instruction == p for t in s.turns))
            self.frames[p] = bench / "images" / sid / "start.png"
        self.masks = {t.instruction: t.roe for s in items for t in s.turns}  # written with chain-of-editing
        self.calls = []

    def __call__(self, model, sessions, out_dir, settings):
        self.calls.append((model, [dict(s) for s in sessions], settings))
        for s in sessions:
            (out_dir / s["id"]).mkdir(parents=True, exist_ok=True)
            given = s.get("history", [])
            for k, h in enumerate(given, 1):  # as `vincie edit` does: the given turns come first
                shutil.copy(h["image"], out_dir / s["id"] / f"turn{k}.png")
            for k, p in enumerate(s["prompts"], len(given) + 1):
                shutil.copy(self.frames[p], out_dir / s["id"] / f"turn{k}.png")
                roe = self.masks[p]
                if settings.get("chain") and roe is not None and roe.src is not None:
                    Image.fromarray(roe.src).save(out_dir / s["id"] / f"turn{k}_mask_current.png")
                    Image.fromarray(roe.dst).save(out_dir / s["id"] / f"turn{k}_mask_next.png")


@pytest.mark.parametrize("no_context", [False, True])
def test_generation_through_run_sessions(bench, tmp_path, monkeypatch, no_context):
    items, folder = synthetic.load_or_make(str(bench), tmp_path, 0, 0, 0, 0)
    editor = OracleEditor(bench, items)
    monkeypatch.setattr(gen_mod, "_run_sessions", lambda: editor)
    sessions = synthetic.generation_sessions(items, folder)
    out = gen_mod.generate("ckpt", sessions, tmp_path / "gen", {"seed": 3, "chain": "current,next"}, no_context)
    report = synthetic.run_synthetic(items, out, tmp_path / "run")
    assert report["metrics"]["success_rate"] == [1.0, 1.0, 1.0]
    assert report["summary"]["turns_with_masks"] > 0 and report["metrics"]["iou_src"][0] == 1.0  # masks kept
    if not no_context:
        assert (
            len(editor.calls) == 1 and editor.calls[0][1] == sessions and editor.calls[0][2]["chain"] == "current,next"
        )
    else:
        assert len(editor.calls) == 3  # one batch per turn, each session edited from its previous output
        turn2 = editor.calls[1][1][0]
        assert turn2["id"] == f"{items[0].id}__turn2" and turn2["prompts"] == [items[0].turns[1].instruction]
        assert turn2["images"] == [str(out / items[0].id / "turn1.png")]
        again = len(editor.calls)
        gen_mod.generate("ckpt", sessions, out, {}, no_context=True)  # resumed: nothing left to do
        assert len(editor.calls) == again


def test_swapped_instructions_control(bench, tmp_path, monkeypatch, runner):
    items, folder = synthetic.load_or_make(str(bench), tmp_path, 0, 0, 0, 0)
    own = synthetic.generation_sessions(items, folder)
    swapped = synthetic.generation_sessions(items, folder, swap_instructions=True)
    assert [s["prompts"] for s in swapped] == [own[1]["prompts"], own[0]["prompts"]]
    assert [s["images"] for s in swapped] == [s["images"] for s in own]  # same start frames, same ids
    # an editor that follows its instructions perfectly fails the control: it does the other session's edits
    editor = OracleEditor(bench, items)
    monkeypatch.setattr(gen_mod, "_run_sessions", lambda: editor)
    out = gen_mod.generate("ckpt", swapped, tmp_path / "gen", {}, False)
    report = synthetic.run_synthetic(items, out, tmp_path / "run")
    assert report["metrics"]["success_rate"] == [0.0, 0.0, 0.0]
    with pytest.raises(UsageError, match="at least 2 sessions"):
        synthetic.generation_sessions(items[:1], folder, swap_instructions=True)
    args = ["eval", "synthetic", "-o", str(tmp_path / "x"), "--benchmark", str(bench), "--results", str(out)]
    r = runner.invoke(main, args + ["--swap-instructions"])
    assert r.exit_code == 2 and "need --model" in r.stderr
    # through the CLI: the flag reaches generation and the report records it
    for flag, want in (([], 1.0), (["--swap-instructions"], 0.0)):
        dest = tmp_path / f"cli{len(flag)}"
        r = runner.invoke(
            main, ["eval", "synthetic", "-o", str(dest), "--benchmark", str(bench), "--model", "m"] + flag
        )
        assert r.exit_code == 0, r.stderr
        report = json.loads((dest / "report.json").read_text())
        assert report["metrics"]["success_rate"][0] == want
        assert report["config"]["swap_instructions"] is bool(flag)


@pytest.mark.parametrize("no_context", [False, True])
def test_true_masks_are_given_per_turn(bench, tmp_path, monkeypatch, runner, no_context):
    items, folder = synthetic.load_or_make(str(bench), tmp_path, 0, 0, 0, 0)
    sessions = synthetic.generation_sessions(items, folder, true_masks=True)
    for s, item in zip(sessions, items):
        assert len(s["masks"]) == len(item.turns)
        for k, (m, t) in enumerate(zip(s["masks"], item.turns), 1):
            if t.roe.src is None:
                assert m is None
                continue
            assert m == {"current": str(folder / "masks" / s["id"] / f"turn{k}_src.png"),
                         "next": str(folder / "masks" / s["id"] / f"turn{k}_dst.png")}  # fmt: skip
            assert Path(m["current"]).is_file() and Path(m["next"]).is_file()
    assert any(m for s in sessions for m in s["masks"])
    editor = OracleEditor(bench, items)
    monkeypatch.setattr(gen_mod, "_run_sessions", lambda: editor)
    gen_mod.generate("ckpt", sessions, tmp_path / "gen", {}, no_context)
    if no_context:  # each one-turn session carries its own turn's masks
        for k, call in enumerate(editor.calls):
            assert [b["masks"] for b in call[1]] == [[s["masks"][k]] for s in sessions if k < len(s["masks"])]
    else:
        assert editor.calls[0][1] == sessions
    args = ["eval", "synthetic", "-o", str(tmp_path / "x"), "--benchmark", str(bench)]
    r = runner.invoke(main, args + ["--results", str(tmp_path / "gen"), "--true-masks"])
    assert r.exit_code == 2 and "need --model" in r.stderr
    r = runner.invoke(main, args + ["--model", "m", "--true-masks", "--chain", "next"])
    assert r.exit_code == 2 and "pass one of them" in r.stderr
    gen = ["--gen-set", "steps=1", "--gen-set", "keep_outside=2"]
    r = runner.invoke(main, args + ["--model", "m", "--true-masks"] + gen)
    assert r.exit_code == 0, r.stderr
    config = json.loads((tmp_path / "x" / "report.json").read_text())["config"]
    assert config["true_masks"] is True
    assert config["generation"] == {"seed": 0, "device": "auto", "steps": 1, "keep_outside": 2, "resolution": 64}
    assert editor.calls[-1][1][0]["masks"] == sessions[0]["masks"]


@pytest.mark.parametrize("no_context", [False, True])
def test_true_history_control(bench, tmp_path, monkeypatch, runner, no_context):
    """--true-history: every turn is made from the exact frames before it (not from the model's outputs), all
    turns at once, each as its own session; a wrong turn 1 costs only turn 1's turn success."""
    items, folder = synthetic.load_or_make(str(bench), tmp_path, 0, 0, 0, 0)
    sessions = synthetic.generation_sessions(items, folder)
    frames = synthetic.true_frames(items, folder)
    assert frames[items[0].id] == [str(folder / "images" / items[0].id / f"turn{k}.png") for k in (1, 2)]
    wrong = [items[0].turns[0].instruction]
    editor = OracleEditor(bench, items, wrong=wrong)
    monkeypatch.setattr(gen_mod, "_run_sessions", lambda: editor)
    out = gen_mod.generate("ckpt", sessions, tmp_path / "gen", {"chain": "current,next"}, no_context, frames)
    report = synthetic.run_synthetic(items, out, tmp_path / "r2", exact_inputs=True)
    assert report["metrics"]["turn_success_rate"] == [0.5, 1.0, 1.0]  # only turn 1 of session 0 is wrong
    assert report["plot_metrics"][0] == "turn_success_rate" and "success_rate" not in report["plot_metrics"]
    assert report["summary"]["turn_success_rate_turn3"] == 1.0
    assert report["metrics"]["iou_src"][1] == 1.0  # the predicted masks are collected too
    (call,) = editor.calls  # every turn of every session in one batch
    runs = {b["id"]: b for b in call[1]}
    sid = items[0].id
    assert sorted(runs) == sorted(f"{s.id}__turn{k}" for s in items for k in (1, 2, 3))
    third = runs[f"{sid}__turn3"]
    assert third["prompts"] == [items[0].turns[2].instruction]
    if no_context:
        assert third["images"] == [frames[sid][1]] and "history" not in third
    else:
        assert third["images"] == sessions[0]["images"]
        assert third["history"] == [{"prompt": items[0].turns[j].instruction, "image": frames[sid][j]} for j in (0, 1)]
    assert "history" not in runs[f"{sid}__turn1"] and runs[f"{sid}__turn1"]["images"] == sessions[0]["images"]
    gen_mod.generate("ckpt", sessions, out, {}, no_context, frames)  # resumed: nothing left to do
    assert len(editor.calls) == 1
    # through the CLI: needs --model, recorded in the report's config
    args = ["eval", "synthetic", "-o", str(tmp_path / "x"), "--benchmark", str(bench)]
    r = runner.invoke(main, args + ["--results", str(out), "--true-history"])  # scoring images made that way
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "x" / "report.json").read_text())["config"]["true_history"] is True
    r = runner.invoke(main, args + ["--model", "m", "--true-history"] + (["--no-context"] if no_context else []))
    assert r.exit_code == 0, r.stderr
    report = json.loads((tmp_path / "x" / "report.json").read_text())
    assert report["config"]["true_history"] is True and report["metrics"]["turn_success_rate"] == [0.5, 1.0, 1.0]


def test_generation_with_the_real_edit(bench, tmp_path):
    """End to end through the real `vincie edit` batch mode with a tiny random-weight model folder."""
    from vincie_cli.model.presets import build_model

    ckpt = tmp_path / "tiny"
    build_model("tiny", seed=0).save_pretrained(ckpt)
    items, folder = synthetic.load_or_make(str(bench), tmp_path, 0, 0, 0, 0, limit=1)
    settings = {"seed": 0, "device": "cpu", "steps": 3, "resolution": 32}
    out = gen_mod.generate(str(ckpt), synthetic.generation_sessions(items, folder), tmp_path / "gen", settings)
    for k in (1, 2, 3):
        assert (out / items[0].id / f"turn{k}.png").is_file()
    report = synthetic.run_synthetic(items, out, tmp_path / "run")
    assert report["n_sessions"] == 1 and len(report["metrics"]["psnr"]) == 3
    # the exact-history control: turn 3 ran after the two exact frames, given (not generated)
    frames = synthetic.true_frames(items, folder)
    sessions = synthetic.generation_sessions(items, folder)
    out = gen_mod.generate(str(ckpt), sessions, tmp_path / "true", settings, true_frames=frames)
    sid = items[0].id
    rec = json.loads((out / "_turns" / f"{sid}__turn3" / "session.json").read_text())
    assert [bool(t.get("given")) for t in rec["turns"]] == [True, True, False]
    assert [t["prompt"] for t in rec["turns"]] == [t.instruction for t in items[0].turns]
    assert rec["turns"][0]["given"] == str(Path(frames[sid][0]).resolve())
    for k in (1, 2, 3):
        assert (out / sid / f"turn{k}.png").is_file()
    assert (out / sid / "turn3.png").read_bytes() == (out / "_turns" / f"{sid}__turn3" / "turn3.png").read_bytes()
