"""benchmarks/change_focus.py: the exact frames change only the region of edit; uniform noise changes it no more
than the rest of the image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, load_script

SCRIPT = REPO / "benchmarks" / "change_focus.py"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from vincie_cli.synth.benchmark import make_benchmark, save_benchmark

    folder = tmp_path_factory.mktemp("focus") / "bench"
    save_benchmark(make_benchmark(6, size=64, turns=3), folder)
    return folder


def _module():
    return load_script(SCRIPT)


def test_exact_frames_focus_on_the_edit_and_noise_does_not(bench, tmp_path):
    exact = _module().change_focus(bench, bench / "images")
    from vincie_cli.synth.benchmark import load_benchmark

    kinds = {t.kind for s in load_benchmark(bench) for t in s.turns}
    assert exact and set(exact) <= kinds - {"background"}  # a background's region is the whole image: skipped
    for kind, row in exact.items():
        assert row["inside"] > 0.8 and row["focus"] > 5, (kind, row)
        assert 0 < row["area"] < 0.5
    noisy = tmp_path / "noisy"
    rng = np.random.default_rng(0)
    for sid_dir in (bench / "images").iterdir():
        start = np.asarray(Image.open(sid_dir / "start.png").convert("RGB"), dtype=np.int16)
        (noisy / sid_dir.name).mkdir(parents=True)
        for k in range(1, 4):
            img = np.clip(start + rng.integers(-40, 41, start.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(noisy / sid_dir.name / f"turn{k}.png")
    spread = _module().change_focus(bench, noisy, turns=1)
    assert spread and all(0.6 < row["focus"] < 1.5 for row in spread.values()), spread
    assert sum(r["turns"] for r in spread.values()) <= 6


def test_cli_prints_one_line_per_kind_and_names_a_wrong_size(bench, tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), str(bench), str(bench / "images"), "--turns", "1"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert rows and all({"kind", "turns", "area", "inside", "focus"} <= set(r) for r in rows)
    wrong = tmp_path / "wrong"
    shutil.copytree(bench / "images", wrong)
    sid = sorted(p.name for p in wrong.iterdir())[0]
    Image.open(wrong / sid / "turn1.png").resize((32, 32)).save(wrong / sid / "turn1.png")
    res = subprocess.run([sys.executable, str(SCRIPT), str(bench), str(wrong)], capture_output=True, text=True)
    assert res.returncode != 0 and f"{sid}/turn1.png: 32x32, the benchmark is 64x64" in res.stderr
