"""benchmarks/context_sensitivity.py: the gradient of a blank's prediction with respect to the inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, load_script
from tests.train.helpers import tiny_overrides
from vincie_cli.train import loop as L
from vincie_cli.train.recipe import load_recipe

X0 = ["model.condition=source", "model.prediction=x0_source", "flow.loss=x0"]


@pytest.fixture(scope="module")
def mod():
    return load_script("benchmarks/context_sensitivity.py")


def test_a_zero_output_looks_only_at_its_source_and_a_trained_one_at_the_context(mod, shards, tmp_path):
    recipe = REPO / "recipes" / "tiny.yaml"
    sets = tiny_overrides(shards) + X0
    # a fresh x0_source model has a zeroed output projection: at t = T its prediction is its source
    state = L.setup(load_recipe(recipe, sets), tmp_path / "fresh-run")
    state.model.save_pretrained(tmp_path / "fresh")
    state.lock.release()
    zero = mod.sensitivity(tmp_path / "fresh", recipe, sets, batches=2, side=2)
    assert zero["sessions"] > 0
    assert zero["first_same"] == 0.0 and zero["first_other"] == 0.0  # nothing flows from the context
    assert zero["source_same"] > 0 and math.isnan(zero["same_over_other"])
    assert zero["source_net_same"] == pytest.approx(0.0, abs=1e-6)  # only the identity path: no network part
    # a few training steps later the prediction depends on the context too
    L.train(load_recipe(recipe, sets + ["train.max_steps=3", "train.checkpoint_every=3"]), out_dir=tmp_path / "run")
    ckpt = tmp_path / "run" / (tmp_path / "run" / "latest").read_text().strip()
    trained = mod.sensitivity(ckpt, recipe, sets, batches=2, side=2)
    assert trained["sessions"] == zero["sessions"]  # the same sessions and blanks
    assert trained["first_same"] > 0 and trained["first_other"] > 0 and trained["source_net_same"] > 0
    assert trained["same_over_other"] == pytest.approx(trained["first_same"] / trained["first_other"])
    assert torch.isfinite(torch.tensor(list(trained.values()))).all()


def test_cli_prints_one_json_line_and_names_a_missing_model(shards, tmp_path):
    recipe = REPO / "recipes" / "tiny.yaml"
    sets = tiny_overrides(shards) + X0
    state = L.setup(load_recipe(recipe, sets), tmp_path / "fresh-run")
    state.model.save_pretrained(tmp_path / "fresh")
    state.lock.release()
    script = str(REPO / "benchmarks" / "context_sensitivity.py")
    args = [a for s in sets for a in ("--set", s)] + ["--batches", "2", "--side", "2"]
    run = lambda model: subprocess.run(  # noqa: E731
        [sys.executable, script, str(model), str(recipe), *args], capture_output=True, text=True
    )
    ok = run(tmp_path / "fresh")
    assert ok.returncode == 0, ok.stderr
    rec = json.loads([ln for ln in ok.stdout.splitlines() if ln.startswith("{")][-1])
    assert rec["model"] == str(tmp_path / "fresh") and rec["sessions"] > 0 and rec["first_same"] == 0.0
    assert set(rec) >= {"sessions", "first_other", "source_same", "source_net_same", "same_over_other"}
    bad = run(tmp_path / "nowhere")
    assert bad.returncode != 0 and "nowhere" in bad.stderr
