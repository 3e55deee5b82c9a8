"""Kill -9 during a run, re-run, and the result equals an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

from tests.annotate.conftest import cli_args, make_videos
from tests.annotate.helpers import as_json
from tests.annotate.test_runner import records, stable
from vincie_cli.cli import main


def test_kill_and_resume_equals_an_uninterrupted_run(runner, server, tmp_path):
    folder = tmp_path / "videos"
    make_videos(folder, 4)
    slow = {"delay": 0.3}

    def reply(body):
        # deterministic per frame pair, so a resumed run that mixed pairs up would differ
        urls = [p["image_url"]["url"] for p in body["messages"][1]["content"] if p["type"] == "image_url"]
        digest = hashlib.sha256("".join(urls).encode()).hexdigest()[:10]
        return {"content": as_json(f"Apply change {digest}."), "delay": slow["delay"]}

    srv, _ = server(default=reply)
    out = tmp_path / "killed"
    args = cli_args([str(folder)], out, srv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vincie_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    ann = out / "annotations.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if ann.exists() and ann.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-500:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    n_killed = len(records(out))
    assert 1 <= n_killed < 4

    slow["delay"] = 0.0
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.stderr
    assert len(res.stdout.splitlines()) == 4 - n_killed  # only the unfinished clips
    resumed = records(out)
    assert len({r["clip_id"] for r in resumed}) == len(resumed) == 4

    ref = tmp_path / "reference"
    assert runner.invoke(main, cli_args([str(folder)], ref, srv)).exit_code == 0
    assert [stable(r) for r in resumed] == [stable(r) for r in records(ref)]
    for rec in resumed:
        for f in rec["frames"]:
            assert (out / f["path"]).read_bytes() == (ref / f["path"]).read_bytes()
    assert not list(out.rglob("*.tmp*")), "stray temporary files were not cleaned up"
    assert json.loads((out / "summary.json").read_text())["failures"] == 0
