"""benchmarks/context_drift.py: the exact frames do not drift; a fade that grows turn by turn shows as a
residual that grows turn by turn; a missing result ends its session."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, load_script

SCRIPT = REPO / "benchmarks" / "context_drift.py"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from vincie_cli.synth.benchmark import make_benchmark, save_benchmark

    folder = tmp_path_factory.mktemp("drift") / "bench"
    save_benchmark(make_benchmark(4, size=64, turns=3), folder)
    return folder


def _module():
    return load_script(SCRIPT)


def test_exact_frames_do_not_drift_and_a_growing_fade_does(bench, tmp_path):
    drift = _module().context_drift
    exact = drift(bench, bench / "images")
    assert [r["turn"] for r in exact] == [1, 2, 3] and all(r["sessions"] == 4 for r in exact)
    assert all(r["median_abs"] == 0 and r["near"] == 1 and r["mean_shift"] == 0 for r in exact), exact

    faded = tmp_path / "faded"
    sessions = sorted((bench / "images").iterdir())
    for sid_dir in sessions:
        (faded / sid_dir.name).mkdir(parents=True)
        for k in range(1, 4):
            if sid_dir == sessions[0] and k == 3:
                continue  # one session stops after turn 2
            img = np.asarray(Image.open(sid_dir / f"turn{k}.png").convert("RGB"), dtype=np.float64)
            img = np.full_like(img, 250.0) * 0.2 * k + img * (1 - 0.2 * k)  # toward white, more each turn
            Image.fromarray(np.round(img).astype(np.uint8)).save(faded / sid_dir.name / f"turn{k}.png")
    rows = drift(bench, faded)
    assert [r["sessions"] for r in rows] == [4, 4, 3]
    med = [r["median_abs"] for r in rows]
    near = [r["near"] for r in rows]
    assert med[0] > 0 and med[0] < med[1] < med[2], rows
    assert near[0] > near[1] > near[2] and near[2] < 0.9, rows
    assert all(r["mean_shift"] > 0 for r in rows), rows  # toward white: every residual is positive
    loose = drift(bench, faded, near=2.0)
    assert all(r["near"] == 1 for r in loose)


def test_cli_prints_one_line_per_turn_and_names_a_wrong_size(bench, tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), str(bench), str(bench / "images")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert [r["turn"] for r in rows] == [1, 2, 3]
    wrong = tmp_path / "wrong"
    shutil.copytree(bench / "images", wrong)
    sid = sorted(p.name for p in wrong.iterdir())[0]
    Image.open(wrong / sid / "turn2.png").resize((32, 32)).save(wrong / sid / "turn2.png")
    res = subprocess.run([sys.executable, str(SCRIPT), str(bench), str(wrong)], capture_output=True, text=True)
    assert res.returncode != 0 and f"{sid}/turn2.png: 32x32, the benchmark is 64x64" in res.stderr
    res = subprocess.run([sys.executable, str(SCRIPT), str(bench), str(wrong), "--near", "0"],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "--near 0.0: must be in (0, 2]" in res.stderr
