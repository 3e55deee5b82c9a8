import json

from vincie_cli.cli import main
from vincie_cli.synth import load_ground_truth


def _lines(res):
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_synth_writes_resumes_and_emits_json_lines(runner, tmp_path):
    out = tmp_path / "v"
    args = ["synth", str(out), "--videos", "2", "--size", "32x32", "--fps", "8", "--duration", "1.5"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.stderr
    recs = _lines(res)
    assert [r["type"] for r in recs] == ["synth_video"] * 2
    assert [r["seed"] for r in recs] == [0, 1] and not any(r["skipped"] for r in recs)
    for r in recs:
        gt = load_ground_truth(r["path"])
        assert (gt.width, gt.height, gt.num_frames) == (32, 32, 12)
        assert [e["kind"] for e in r["events"]] == [e.kind for e in gt.events]
    mtime = (out / "synth_0000000.mp4").stat().st_mtime_ns
    res = runner.invoke(main, args[:3] + ["3"] + args[4:])
    assert res.exit_code == 0, res.stderr
    recs = _lines(res)
    assert [(r["seed"], r["skipped"]) for r in recs] == [(0, True), (1, True), (2, False)]
    assert (out / "synth_0000000.mp4").stat().st_mtime_ns == mtime  # finished work untouched
    assert not list(out.glob("*.tmp*"))


def test_synth_heldout_split_and_options(runner, tmp_path):
    res = runner.invoke(
        main,
        [
            "synth",
            str(tmp_path),
            "--videos",
            "1",
            "--split",
            "heldout",
            "--seed",
            "7",
            "--size",
            "32x32",
            "--duration",
            "1",
            "--difficulty",
            "easy",
            "--kinds",
            "move,recolour",
            "--events",
            "1-1",
            "--objects",
            "2",
        ],
    )
    assert res.exit_code == 0, res.stderr
    (rec,) = _lines(res)
    assert rec["seed"] == 1_000_007 and rec["split"] == "heldout" and rec["path"].endswith("synth_1000007.mp4")
    gt = load_ground_truth(rec["path"])
    assert len(gt.states[0].objects) == 2 and all(e.kind in ("move", "recolour") for e in gt.events)


def test_synth_bad_options_are_one_line_errors(runner, tmp_path):
    res = runner.invoke(main, ["synth", str(tmp_path), "--size", "33x32"])
    assert res.exit_code == 2 and "even sizes" in res.stderr and "Traceback" not in res.stderr
    res = runner.invoke(main, ["synth", str(tmp_path), "--kinds", "explode"])
    assert res.exit_code == 2 and "explode" in res.stderr
    res = runner.invoke(main, ["synth", str(tmp_path), "--seed", "999999", "--videos", "2"])
    assert res.exit_code == 2 and "outside the train split" in res.stderr
    res = runner.invoke(main, ["synth", str(tmp_path), "--objects", "a-b"])
    assert res.exit_code == 2 and "--objects" in res.stderr


def test_synth_benchmark_sessions(runner, tmp_path):
    res = runner.invoke(main, ["synth", str(tmp_path / "b"), "--sessions", "2", "--size", "64x64", "--turns", "3"])
    assert res.exit_code == 0, res.stderr
    recs = _lines(res)
    assert [r["type"] for r in recs] == ["synth_session"] * 2
    assert recs[0]["seed"] == 1_000_000 and len(recs[0]["instructions"]) == 3
    assert (tmp_path / "b" / "sessions.jsonl").is_file()
    again = runner.invoke(main, ["synth", str(tmp_path / "b"), "--sessions", "2", "--size", "64x64", "--turns", "3"])
    assert again.exit_code == 0 and _lines(again) == recs
    assert "already holds" in again.stderr
