"""The training benchmark script runs (its GPU section on the tiny DiT, anywhere) and prints its numbers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import yaml

from tests.conftest import REPO, load_script


def test_bench_train_gpu_section_runs_tiny_on_cpu():
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "gpu", "--tiny", "--steps", "1",
           "--warmup", "0", "--tokens", "600", "--res", "32", "--turns", "1", "--text-len", "8"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert res.returncode == 0, res.stderr[-2000:]
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    assert rec["bench"] == "train_step_gpu" and rec["model"] == "tiny"
    assert rec["tokens"] > 0 and rec["tokens_per_s"] > 0 and rec["tflops_per_s"] > 0


def test_loss_by_timestep_noises_every_target_to_the_given_t(tmp_path, shards):

    from tests.train.helpers import tiny_overrides
    from vincie_cli.train import loop as L
    from vincie_cli.train.recipe import load_recipe

    sets = ["model.prediction=x0_source", "flow.loss=x0", "train.max_steps=2", "train.checkpoint_every=2"]
    L.train(load_recipe(REPO / "recipes" / "tiny.yaml", tiny_overrides(shards) + sets), out_dir=tmp_path)
    ckpt = tmp_path / (tmp_path / "latest").read_text().strip()
    lbt = load_script("benchmarks/loss_by_timestep.py")
    run = lambda seed: lbt.loss_by_timestep(str(ckpt), (0.5, 1.0), batches=1, seed=seed, zero=True)  # noqa: E731
    a, b = run(0), run(1)
    blank = lbt.loss_by_timestep(str(ckpt), (1.0,), batches=1, no_text=True)[0]
    assert blank["model"] == a[1]["model"] and blank["no_text"]["nip"] > 0
    assert blank["no_text"] != blank["model"]  # the blanked texts reached the model
    assert [r["t"] for r in a] == [500.0, 1000.0]
    assert all(r["model"]["nip"] > 0 and r["zero"]["nip"] > 0 for r in a)
    # a zero output of x0_source at t = T is the source image: its loss is |target - source|^2, whatever the
    # noise; at t = T/2 it carries noise (so the rows really were noised to the t asked for)
    assert abs(a[1]["zero"]["nip"] - b[1]["zero"]["nip"]) < 1e-6 * a[1]["zero"]["nip"]
    assert abs(a[0]["zero"]["nip"] - b[0]["zero"]["nip"]) > 1e-4 * a[0]["zero"]["nip"]
    assert a == run(0)  # the same seed, the same numbers
    # a run trained with another train.seed is scored on the same batches (the seed composes them)
    other = tmp_path / "other-seed"
    shutil.copytree(ckpt, other)
    cfg = yaml.safe_load((other / "recipe.yaml").read_text())
    cfg["train"]["seed"] += 5
    (other / "recipe.yaml").write_text(yaml.safe_dump(cfg))
    assert lbt.loss_by_timestep(str(other), (0.5, 1.0), batches=1, seed=0, zero=True) == a
    # the images' loss split by what their edit changed: copying the source at t = T costs nothing (below
    # the threshold) where nothing changed and everything where something did
    z = a[1]["zero"]
    assert z["nip_kept"] <= 0.01 < z["nip_changed"]
    assert min(z["nip_kept"], z["nip_changed"]) <= z["nip"] <= max(z["nip_kept"], z["nip_changed"])
