"""VincieModel and the presets: build, save/load round trips, prompt cache, session text, identity, hub ids."""

from __future__ import annotations

import json

import pytest
import torch

from vincie_cli.model.dit import DiTConfig, assemble_session_text
from vincie_cli.model.pipeline import VincieModel
from vincie_cli.model.presets import ModelConfig, build_model, get_preset
from vincie_cli.model.text import TextEncoderConfig
from vincie_cli.model.vae import PixelAE, VAEConfig
from vincie_cli.utils.io import BadInputError, UsageError, VincieError


def _forward(model: VincieModel, prompts: list[str], seed: int = 0) -> torch.Tensor:
    """One DiT call on a 2-frame session of random latents with the model's own session text."""
    g = torch.Generator().manual_seed(seed)
    c = model.vae.latent_channels
    vid = torch.randn(2 * 4 * 6, 2 * c + 1, generator=g)
    txt, txt_shape = model.session_text(prompts)
    with torch.no_grad():
        return model.dit(vid, txt, torch.tensor([[2, 4, 6]]), txt_shape, torch.tensor([500.0]))


def test_presets():
    big = build_model("3b", device="meta")
    assert sum(p.numel() for p in big.dit.parameters()) == 3_391_803_456
    assert big.config.text.kind == "qwen" and big.config.text.dim == 5120 and big.vae.spatial_factor == 8
    seven = get_preset("7b")
    assert (seven.dit.vid_dim, seven.dit.heads, seven.dit.num_layers, seven.dit.mlp_hidden) == (3584, 28, 36, 9728)
    mini = get_preset("mini")
    assert (mini.dit.vid_in_channels, mini.dit.vid_out_channels, mini.vae.kind, mini.vae.factor) == (97, 48, "pixel", 4)
    with pytest.raises(UsageError, match="unknown model preset 'huge'"):
        get_preset("huge")
    tiny = get_preset("tiny")
    with pytest.raises(BadInputError, match="txt_in_dim 32 != text encoder dim 64"):
        ModelConfig("bad", tiny.dit, tiny.vae, TextEncoderConfig(kind="byte", dim=64))
    with pytest.raises(BadInputError, match="vid_in_channels 33 != 2 x 48 \\+ 1"):
        ModelConfig("bad", tiny.dit, VAEConfig.pixel(4), tiny.text)
    assert ModelConfig.from_dict(json.loads(json.dumps(tiny.to_dict()))) == tiny
    x0s = {"kind": "paper", "condition": "source", "prediction": "x0_source"}
    ModelConfig("ok", tiny.dit, tiny.vae, tiny.text, layout={**x0s, "source_sigma": 0.3})
    with pytest.raises(BadInputError, match=r"layout\.source_sigma=-1 \(a number > 0\)"):
        ModelConfig("bad", tiny.dit, tiny.vae, tiny.text, layout={**x0s, "source_sigma": -1})
    with pytest.raises(BadInputError, match=r"layout\.prediction='eps'"):
        ModelConfig("bad", tiny.dit, tiny.vae, tiny.text, layout={**x0s, "prediction": "eps"})


def test_mini_runs_end_to_end():
    model = build_model("mini")
    assert isinstance(model.vae, PixelAE)
    img = torch.rand(1, 3, 32, 48) * 2 - 1
    lat = model.vae.encode(img)
    assert lat.shape == (1, 8, 12, 48) and torch.equal(model.vae.decode(lat), img)
    out = _forward(model, ["add a red ball", "move it left"])
    assert out.shape == (2 * 4 * 6, 48) and torch.isfinite(out).all()


def test_save_and_load_roundtrip(tmp_path):
    model = build_model("tiny")
    model.attention = "fp32"
    prompts = ["Based on <IMG0>, add a hat. Output <IMG1>: ", "now make it blue"]
    ref = _forward(model, prompts)
    img = torch.rand(1, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        ref_lat = model.vae.encode(img)
    meta = model.save_pretrained(tmp_path / "m")
    files = {p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert files == {
        "model_config.json", "meta.json", "dit.safetensors", "vae.safetensors",
        "text_encoder/text_encoder.json", "text_encoder/model.safetensors",
    }  # fmt: skip
    assert set(meta["files"]) == files - {"meta.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    back = VincieModel.from_pretrained(tmp_path / "m", attention="fp32")
    assert back.config == model.config and back.layout == "vincie"
    assert torch.equal(_forward(back, prompts), ref)
    with torch.no_grad():
        assert torch.equal(back.vae.encode(img), ref_lat)
    ident = back.identity()
    assert ident == {"name": "tiny", "path": str(tmp_path / "m"), "sha256": meta["sha256"]}
    assert back.identity(verify=True)["sha256"] == meta["sha256"]
    # bf16 loading of the same folder
    half = VincieModel.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert half.dit.dtype == torch.bfloat16 and half.vae.dtype == torch.bfloat16
    assert half.dit.blocks[0].attn.rope.rope.freqs.dtype == torch.float32
    assert half.session_text(prompts)[0].dtype == torch.bfloat16
    # an existing non-empty folder is never overwritten silently
    with pytest.raises(VincieError, match="exists and is not empty"):
        model.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m", overwrite=True)
    assert VincieModel.from_pretrained(tmp_path / "m").identity()["sha256"] == meta["sha256"]


def test_identity_uses_recorded_hash_and_detects_changes(tmp_path):
    model = build_model("tiny")
    meta = model.save_pretrained(tmp_path / "a")
    # a recorded hash is trusted while size and header match (no rehash of big files) ...
    meta_path = tmp_path / "a" / "meta.json"
    data = json.loads(meta_path.read_text())
    data["files"]["dit.safetensors"]["sha256"] = "0" * 64
    meta_path.write_text(json.dumps(data))
    cached = VincieModel.from_pretrained(tmp_path / "a").identity()["sha256"]
    assert cached != meta["sha256"]
    assert VincieModel.from_pretrained(tmp_path / "a").identity(verify=True)["sha256"] == meta["sha256"]
    # ... and different weights give a different identity
    with torch.no_grad():
        model.dit.vid_in.proj.bias.add_(1.0)
    other = model.save_pretrained(tmp_path / "b")
    assert other["sha256"] != meta["sha256"]
    assert build_model("tiny", seed=1).identity()["sha256"] != build_model("tiny", seed=2).identity()["sha256"]


def test_prompt_cache_and_session_text():
    model = build_model("tiny")
    calls = []
    encode = model.text_encoder.encode
    model.text_encoder.encode = lambda prompts: calls.append(list(prompts)) or encode(prompts)
    a, b, neg = "add a hat", "make it red", "blurry, low quality"
    txt, shape = model.session_text([a, b])
    txt2, _ = model.session_text([a, b])
    assert calls == [[a, b]] and torch.equal(txt, txt2)  # each prompt encoded once
    n_a, n_b = len(a.encode()) + 1, len(b.encode()) + 1  # bytes + EOD
    assert shape.tolist() == [[n_a + 1 + n_b + 1]]
    table = model.dit.prompt_id_embedding.embedding.weight
    assert torch.equal(txt[0], table[0]) and torch.equal(txt[n_a + 1], table[1])
    expected, _ = assemble_session_text([model.encode_prompts([a, b])], table)
    assert torch.equal(txt, expected)
    ntxt, nshape = model.negative_text(neg)
    assert nshape.tolist() == [[len(neg.encode()) + 2]] and torch.equal(ntxt[0], table[0])
    assert calls[-1] == [neg]
    btxt, bshape = model.session_texts([[a, b], [b]])
    assert bshape.tolist() == [[n_a + n_b + 2], [n_b + 1]]
    assert torch.equal(btxt[: n_a + n_b + 2], txt) and torch.equal(btxt[n_a + n_b + 2], table[0])
    assert len(calls) == 2  # everything came from the cache
    with pytest.raises(BadInputError, match="at most 64 turns"):
        model.session_text([f"p{i}" for i in range(65)])
    model.text_cache_size = 2
    model.encode_prompts(["x", "y", "z"])
    assert len(model._text_cache) <= 3


def test_missing_text_encoder_is_a_clear_error():
    model = build_model("tiny")
    model.text_encoder = None
    with pytest.raises(VincieError, match="has no text encoder"):
        model.session_text(["a"])


def test_paths_and_hub_ids(tmp_path, monkeypatch):
    with pytest.raises(BadInputError, match="no such model folder"):
        VincieModel.from_pretrained(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="not a VINCIE model folder"):
        VincieModel.from_pretrained(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(VincieError, match="HF_HUB_OFFLINE=1 forbids downloading"):
        VincieModel.from_pretrained("vincie-tests/no-such-model")


def test_dit_config_of_saved_model_matches_weights(tmp_path):
    from vincie_cli.model.weights import load_safetensors

    model = build_model("tiny")
    model.save_pretrained(tmp_path / "m")
    derived = DiTConfig.from_state_dict(load_safetensors(tmp_path / "m" / "dit.safetensors"))
    assert derived == model.config.dit


def test_a_training_run_folder_means_its_latest_checkpoint(tmp_path):
    from vincie_cli.model.pipeline import resolve_model_path
    from vincie_cli.utils.io import BadInputError

    run = tmp_path / "run"
    (run / "step-00000010").mkdir(parents=True)
    (run / "latest").write_text("step-00000010\n")
    assert resolve_model_path(run) == run / "step-00000010"
    (run / "latest").write_text("step-00000099")
    with pytest.raises(BadInputError, match="step-00000099, which does not exist"):
        resolve_model_path(run)
