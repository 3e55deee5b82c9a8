"""tools/gpu_mini.sh in its CPU smoke mode: every stage runs, the by-kind tables print, a re-run reuses the work."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.integration
def test_gpu_mini_smoke_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "gm"
    env = {**os.environ, "SMOKE": "1", "VIDEOS": "6", "STEPS": "2", "TUNE": "2", "BENCH": "1", "JOBS": "2",
           "OMP_NUM_THREADS": "1", "VINCIE": f"{sys.executable} -m vincie_cli"}  # fmt: skip
    run = lambda: subprocess.run(["bash", str(REPO / "tools" / "gpu_mini.sh"), str(out)], cwd=REPO, env=env,  # noqa: E731
                                 capture_output=True, text=True, timeout=600)  # fmt: skip
    first = run()
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert len(list((out / "synth").glob("*.mp4"))) == 6 and (out / "sessions" / "index.json").is_file()
    done = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines() if '"done"' in x]
    assert done[-1]["step"] == 2 and (out / "run" / "latest").read_text().strip() == "step-00000002"
    recipe = (out / "run" / "step-00000002" / "recipe.yaml").read_text()  # the package's last stage: t = 1000 only
    assert "timestep_dist: grid" in recipe and "timestep_grid_steps: 1" in recipe and "csp: 0.3" in recipe
    for r in ("tune", "ctx", "noctx"):
        assert f"== {r} " in first.stdout
        report = json.loads((out / "eval" / r / "report.json").read_text())
        assert report["by_kind"] and report["n_sessions"] == (2 if r == "tune" else 1)
    assert first.stdout.count("| edit kind |") == 3
    again = run()
    assert again.returncode == 0, again.stderr[-2000:]
    assert "(already there)" in (out / "synth.log").read_text()
    assert "resumed from" in (out / "train.log").read_text()
