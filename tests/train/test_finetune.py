"""Fine-tuning: a tiny release-format folder (dit.pth, vae.pth, llm14b/) trains, saves and loads in `vincie edit`;
LoRA adapters train only themselves and save merged weights."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from tests.model.fake_release import write_release
from tests.train.helpers import tiny_overrides
from vincie_cli.cli import main
from vincie_cli.train import loop as L
from vincie_cli.train.recipe import load_recipe


def test_release_checkpoint_trains_saves_and_edits(tiny_recipe, shards, tmp_path, runner):
    from vincie_cli.model.pipeline import VincieModel
    from vincie_cli.model.weights import load_safetensors

    pieces = write_release(tmp_path / "release")
    sets = {"model.preset": "null", "model.init": tmp_path / "release", "model.layout": "released",
            "train.max_steps": 2, "train.checkpoint_every": 2, "tasks.max_targets": 2}  # fmt: skip
    r = load_recipe(tiny_recipe, tiny_overrides(shards, **sets))
    state = L.train(r, out_dir=tmp_path / "run")
    assert all(h["finite"] for h in state.history) and state.model.text_encoder.config.kind == "qwen"
    ck = tmp_path / "run" / "step-00000002"
    raw = load_safetensors(ck / "dit_raw.safetensors")
    moved = [k for k, v in pieces["dit"].items() if not torch.equal(v, raw[k])]
    assert moved, "training did not change the released weights"
    model = VincieModel.from_pretrained(ck)
    assert model.dit.config == state.model.dit.config and model.text_encoder.config.kind == "qwen"
    assert json.loads((ck / "model_config.json").read_text())["layout"]["kind"] == "released"
    # and `vincie edit` runs a turn with it
    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(img)
    res = runner.invoke(
        main,
        ["edit", str(img), "-p", "add a red square", "--model", str(ck), "-o", str(tmp_path / "edit"),
         "--steps", "2", "--resolution", "32"],
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert lines and all("type" in x for x in lines)
    assert len(list((tmp_path / "edit").glob("*.png"))) >= 1


def test_lora_trains_adapters_only_and_saves_merged_weights(tiny_recipe, shards, tmp_path):
    from vincie_cli.model.pipeline import VincieModel
    from vincie_cli.model.weights import load_safetensors
    from vincie_cli.train.lora import merged_state_dict

    sets = {"model.lora.rank": 4, "train.max_steps": 3, "train.checkpoint_every": 2, "optim.warmup_steps": 0}
    r = load_recipe(tiny_recipe, tiny_overrides(shards, **sets))
    state = L.setup(r, out_dir=tmp_path / "run")
    base = {k: p.detach().clone() for k, p in state.dit.named_parameters() if ".lora_" not in k}
    L.fit(state)
    assert all(".lora_" in k for k in state.trainable)
    for k, p in state.dit.named_parameters():
        if ".lora_" not in k:
            assert torch.equal(p, base[k]), k  # the base stays frozen
    ck = tmp_path / "run" / "step-00000003"
    raw = load_safetensors(ck / "dit_raw.safetensors")
    assert not any(".lora_" in k or ".base_layer." in k for k in raw)
    merged = merged_state_dict(state.dit)
    for k, v in merged.items():
        assert torch.equal(raw[k], v), k
    adapted = [k for k in raw if k.replace(".weight", ".base_layer.weight") in base]
    assert adapted and any(not torch.equal(raw[k], base[k.replace(".weight", ".base_layer.weight")]) for k in adapted)
    VincieModel.from_pretrained(ck)  # a plain model folder
    # resuming restores the adapters exactly
    resumed = L.setup(load_recipe(tiny_recipe, tiny_overrides(shards, **{**sets, "train.max_steps": 4})),
                      out_dir=tmp_path / "run", resume=True)  # fmt: skip
    resumed.lock.release()
    for k, p in resumed.trainable.items():
        assert torch.equal(p, state.trainable[k]), k


def test_cli_trains_and_reports_json_lines(tiny_recipe, shards, tmp_path, runner):
    out = tmp_path / "cli-run"
    args = ["train", str(tiny_recipe), "--out-dir", str(out)]
    for s in tiny_overrides(shards, **{"train.max_steps": 3, "log.every": 1}):
        args += ["--set", s]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.stderr
    recs = [json.loads(x) for x in res.stdout.splitlines()]
    assert all(r["type"] == "train_event" for r in recs)
    assert [r["step"] for r in recs if r["event"] == "step"] == [1, 2, 3]
    assert recs[-1]["event"] == "done" and recs[-1]["checkpoint"] == str(out / "step-00000003")
    res = runner.invoke(main, [*args[:3], str(tmp_path / "b"), "--set", f"data.sources=[{tmp_path / 'missing'}]"])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "missing: no such shard" in res.stderr
