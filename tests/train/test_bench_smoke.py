"""The training benchmark script runs (its GPU section on the tiny DiT, anywhere) and prints its numbers."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_bench_train_gpu_section_runs_tiny_on_cpu():
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "gpu", "--tiny", "--steps", "1",
           "--warmup", "0", "--tokens", "600", "--res", "32", "--turns", "1", "--text-len", "8"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert res.returncode == 0, res.stderr[-2000:]
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    assert rec["bench"] == "train_step_gpu" and rec["model"] == "tiny"
    assert rec["tokens"] > 0 and rec["tokens_per_s"] > 0 and rec["tflops_per_s"] > 0
