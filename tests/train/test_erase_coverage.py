"""benchmarks/erase_coverage.py: what the erased rectangles hide, anywhere and kept, on training batches."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, load_script
from tests.train.helpers import tiny_overrides


@pytest.fixture(scope="module")
def mod():
    return load_script("benchmarks/erase_coverage.py")


def test_kept_rectangles_hide_more_of_what_the_first_image_holds(mod, tiny_recipe, shards):
    res = mod.coverage(tiny_recipe, tiny_overrides(shards, **{"tasks.degrade_erase": 0.5}), batches=3)
    anywhere, kept = res["anywhere"], res["kept"]
    assert anywhere["frames"] == kept["frames"] > 0  # the same frames both ways
    for row in (anywhere, kept):
        assert 0 <= row["recoverable"] <= row["changed"]
        assert 0 <= row["frames_changed"] <= row["frames"]
    assert kept["recoverable"] > 0
    # centred on kept content, a larger share of what the blank removes can come back from the first image
    assert kept["recoverable"] / kept["changed"] > anywhere["recoverable"] / anywhere["changed"]


def test_cli_prints_one_line_per_placement_and_names_a_bad_recipe(tiny_recipe, shards, tmp_path):
    script = str(REPO / "benchmarks" / "erase_coverage.py")
    sets = [a for s in tiny_overrides(shards) for a in ("--set", s)]
    cmd = [sys.executable, script, str(tiny_recipe), *sets, "--batches", "1"]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    lines = [ln for ln in ok.stdout.splitlines() if ln.startswith("{")]
    assert [ln.split('"erase_at": ')[1].split(",")[0] for ln in lines] == ['"anywhere"', '"kept"']
    missing = tmp_path / "nope.yaml"
    bad = subprocess.run([sys.executable, script, str(missing)], capture_output=True, text=True)
    assert bad.returncode != 0 and "nope.yaml" in bad.stderr
