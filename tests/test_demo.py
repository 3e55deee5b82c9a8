"""`vincie demo` end to end, the README's main job, on a smaller setting than its defaults."""

import json
import subprocess
import sys

import pytest


@pytest.mark.integration
def test_demo_runs_every_stage_and_keeps_the_artifacts(tmp_path):
    out = tmp_path / "demo"
    args = ["--videos", "4", "--train-steps", "20", "--sessions", "2", "--turns", "2", "--steps", "8"]
    proc = subprocess.run(
        [sys.executable, "-m", "vincie_cli", "demo", "--out-dir", str(out), *args], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["stage"] for r in records] == ["synth", "annotate", "segment", "build-sessions", "train", "eval"]
    assert all(r["type"] == "demo_stage" for r in records)
    assert records[0]["videos"] == 4 and records[3]["sessions"] >= 3
    assert records[4]["steps"] == 20 and records[4]["last_loss"] < records[4]["first_loss"]
    metrics = records[5]["metrics"]
    assert len(metrics["success_rate"]) == 2 and all(0.0 <= v <= 1.0 for v in metrics["success_rate"])
    # every artifact a user wants to open is there
    assert len(list((out / "videos").glob("*.mp4"))) == 4
    assert list((out / "annotations").rglob("*.png")) and list((out / "segments" / "masks").rglob("*.png"))
    assert list((out / "sessions").glob("*.tar")) and (out / "train" / "latest").is_file()
    assert len(list((out / "eval" / "generated").rglob("turn2.png"))) == 2
    for f in ("report.json", "report.md", "report.png"):
        assert (out / "eval" / f).is_file()
    assert "| success_rate |" in proc.stderr
    # a re-run resumes: every stage finds its work done
    again = subprocess.run(
        [sys.executable, "-m", "vincie_cli", "demo", "--out-dir", str(out), *args], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert [json.loads(line)["stage"] for line in again.stdout.splitlines()][-1] == "eval"
