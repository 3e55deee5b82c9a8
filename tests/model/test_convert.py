"""`vincie convert` and release-folder loading on a tiny fake release: both layouts give identical outputs,
options work, and every kind of bad input gets one clear line, a non-zero exit and no output folder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.model.fake_release import write_release
from vincie_cli.cli import main
from vincie_cli.model.pipeline import VincieModel
from vincie_cli.model.vae import VAEConfig, build_vae
from vincie_cli.utils.io import VincieError

PROMPTS = ["Based on <IMG0>, hello world. Output <IMG1>: ", "at the end"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    parts = write_release(root / "VINCIE-T", old_attention_names=True, qwen_fmt="bin")
    return root / "VINCIE-T", parts


def _convert(runner, *args):
    return runner.invoke(main, ["convert", *map(str, args)])


def _outputs(model: VincieModel) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vid = torch.randn(2 * 4 * 6, 33, generator=g)
    img = torch.rand(1, 3, 16, 24, generator=g) * 2 - 1
    txt, txt_shape = model.session_text(PROMPTS)
    ntxt, _ = model.negative_text("blurry")
    with torch.no_grad():
        v = model.dit(vid, txt, torch.tensor([[2, 4, 6]]), txt_shape, torch.tensor([998.3]))
        lat = model.vae.encode(img)
        dec = model.vae.decode(lat)
    return {"txt": txt, "neg": ntxt, "v": v, "lat": lat, "dec": dec}


def _one_error_line(res) -> str:
    """The single "error: ..." line on stderr (progress logs may precede it; no traceback)."""
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.rstrip().endswith(errors[0])
    return errors[0]


def test_convert_and_both_layouts_agree(runner, release, tmp_path):
    rel, parts = release
    out = tmp_path / "converted"
    res = _convert(runner, rel, out)
    assert res.exit_code == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(records) == 1 and records[0]["type"] == "converted"
    rec = records[0]
    assert rec["params"]["dit"] == sum(v.numel() for k, v in parts["dit"].items() if not k.endswith("freqs"))
    assert rec["dit_config"]["num_layers"] == 2 and rec["dit_config"]["txt_in_dim"] == 32
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"model_config.json", "meta.json", "dit.safetensors", "vae.safetensors", "text_encoder/qwen.tiktoken",
            "text_encoder/model.safetensors", "text_encoder/text_encoder.json"} <= files  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # the DiT tensors are the released ones (prefix stripped), the VAE is the converted 2-D form
    dit_sd = load_file(str(out / "dit.safetensors"))
    assert all(torch.equal(dit_sd[k], v) for k, v in parts["dit"].items())
    vae_sd = load_file(str(out / "vae.safetensors"))
    assert set(vae_sd) == set(parts["vae"])
    assert all(torch.allclose(vae_sd[k], v, atol=1e-6) for k, v in parts["vae"].items())

    a = VincieModel.from_pretrained(rel, attention="fp32", text_dtype=torch.float32)
    b = VincieModel.from_pretrained(out, attention="fp32")
    assert a.layout == "release" and b.layout == "vincie"
    assert a.config.dit == b.config.dit and a.config.vae == b.config.vae
    assert b.text_encoder.dtype == torch.float32 and b.text_encoder.tokenize("hello world")[-1] == 267
    oa, ob = _outputs(a), _outputs(b)
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k
    assert b.identity()["sha256"] == rec["sha256"] == json.loads((out / "meta.json").read_text())["sha256"]
    assert a.identity()["sha256"] != rec["sha256"]
    # the release's own VAE, in the release layout, equals the module it was made from
    orig = build_vae(a.config.vae).eval()
    orig.load_state_dict(parts["vae"])
    with torch.no_grad():
        assert torch.allclose(orig.decode(oa["lat"]), oa["dec"], atol=1e-5)


def test_convert_bf16_and_skip_text(runner, release, tmp_path):
    rel, _ = release
    out = tmp_path / "bf16"
    res = _convert(runner, rel, out, "--dtype", "bf16", "--skip-text")
    assert res.exit_code == 0, res.stderr
    assert not (out / "text_encoder").exists()
    sd = load_file(str(out / "dit.safetensors"))
    assert sd["vid_in.proj.weight"].dtype == torch.bfloat16
    assert sd["blocks.0.attn.rope.rope.freqs"].dtype == torch.float32
    assert load_file(str(out / "vae.safetensors"))["encoder.conv_in.weight"].dtype == torch.bfloat16
    cfg = json.loads((out / "model_config.json").read_text())
    assert cfg["text"]["kind"] == "qwen" and cfg["text"]["dim"] == 32
    model = VincieModel.from_pretrained(out)
    assert model.text_encoder is None
    with pytest.raises(VincieError, match="has no text encoder"):
        model.session_text(["a"])
    full = VincieModel.from_pretrained(out, text_path=rel / "llm14b", text_dtype=torch.float32, attention="fp32")
    ref = VincieModel.from_pretrained(rel, text_dtype=torch.float32, attention="fp32")
    assert all(torch.equal(x, y) for x, y in zip(ref.encode_prompts(PROMPTS), full.encode_prompts(PROMPTS)))
    oa, ob = _outputs(ref), _outputs(full)  # the DiT and VAE now hold bf16-rounded weights
    assert torch.allclose(oa["txt"], ob["txt"], atol=0.02) and not torch.equal(oa["txt"], ob["txt"])
    assert torch.allclose(oa["v"], ob["v"], atol=0.05, rtol=0.05) and not torch.equal(oa["v"], ob["v"])


def test_vae_config_option(runner, tmp_path):
    cfg = VAEConfig(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)
    rel = tmp_path / "rel"
    write_release(rel, vae_config=cfg)
    res = _convert(runner, rel, tmp_path / "out")
    assert res.exit_code == 1
    line = _one_error_line(res)
    assert "vae.pth: invalid VAE config: norm_num_groups 32 does not divide channels [8, 8, 16, 16]" in line
    assert not (tmp_path / "out").exists()
    args = {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "latent_channels": 16}
    official = {"constructor_args": {**args, "use_quant_conv": False, "use_post_quant_conv": False}}
    (tmp_path / "vae_config.json").write_text(json.dumps(official))
    res = _convert(runner, rel, tmp_path / "out", "--vae-config", tmp_path / "vae_config.json", "--skip-text")
    assert res.exit_code == 0, res.stderr
    loaded = VincieModel.from_pretrained(tmp_path / "out", load_text=False)
    assert loaded.config.vae == cfg
    direct = VincieModel.from_pretrained(rel, vae_config=cfg, load_text=False)
    assert direct.config.vae == cfg
    # our own VAEConfig JSON works as well
    (tmp_path / "ours.json").write_text(json.dumps(cfg.to_dict()))
    res = _convert(runner, rel, tmp_path / "out2", "--vae-config", tmp_path / "ours.json", "--skip-text")
    assert res.exit_code == 0, res.stderr


def _broken_copy(release, tmp_path, name):
    rel, _ = release
    dst = tmp_path / name
    shutil.copytree(rel, dst)
    return dst


class _NotAWeight:
    def __init__(self) -> None:
        self.x = 1


def _break_truncated_dit(d):
    data = (d / "dit.pth").read_bytes()
    (d / "dit.pth").write_bytes(data[: len(data) // 2])
    return "dit.pth: corrupt or truncated checkpoint"


def _break_corrupt_vae(d):
    (d / "vae.pth").write_bytes(b"\x00garbage" * 100)
    return "vae.pth: corrupt or truncated checkpoint"


def _break_truncated_llm(d):
    shutil.rmtree(d / "llm14b")
    from tests.model.fake_release import write_qwen_v1_folder

    write_qwen_v1_folder(d / "llm14b", fmt="safetensors")
    f = d / "llm14b" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    return "model.safetensors: truncated safetensors file"


def _break_missing_vae(d):
    (d / "vae.pth").unlink()
    return "missing vae.pth (a VINCIE release folder has dit.pth, vae.pth and llm14b/)"


def _break_missing_llm(d):
    shutil.rmtree(d / "llm14b")
    return "missing llm14b/"


def _break_other_architecture(d):
    torch.save({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, d / "dit.pth")
    return "dit.pth: not a VINCIE DiT state_dict: key 'vid_in.proj.weight' is missing"


def _break_extra_and_misshaped_keys(d):
    sd = torch.load(d / "dit.pth", weights_only=True)
    sd["blocks.0.attn.extra.weight"] = torch.zeros(3)
    sd["vid_out_ada.out_scale"] = torch.zeros(5)
    torch.save(sd, d / "dit.pth")
    return "unexpected keys: blocks.0.attn.extra.weight"


def _break_pickled_object(d):
    sd = torch.load(d / "dit.pth", weights_only=True)
    sd["config"] = _NotAWeight()
    torch.save(sd, d / "dit.pth")
    return "dit.pth: refused: the pickle holds objects other than tensors"


def _break_vae_keys(d):
    sd = torch.load(d / "vae.pth", weights_only=True)
    sd.pop("decoder.conv_out.bias")
    torch.save(sd, d / "vae.pth")
    return "do not fit the VAE: missing keys: decoder.conv_out.bias"


BREAKS = [
    _break_truncated_dit,
    _break_corrupt_vae,
    _break_truncated_llm,
    _break_missing_vae,
    _break_missing_llm,
    _break_other_architecture,
    _break_extra_and_misshaped_keys,
    _break_pickled_object,
    _break_vae_keys,
]


@pytest.mark.parametrize("breaker", BREAKS, ids=[b.__name__.removeprefix("_break_") for b in BREAKS])
def test_bad_release_folders(runner, release, tmp_path, breaker):
    d = _broken_copy(release, tmp_path, "rel")
    expected = breaker(d)
    out = tmp_path / "out"
    res = _convert(runner, d, out)
    assert res.exit_code == 1
    line = _one_error_line(res)
    assert expected in line, line
    assert res.stdout == ""
    assert not out.exists()  # a failed conversion leaves nothing that could look complete
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_misshaped_key_is_named(release, tmp_path):
    d = _broken_copy(release, tmp_path, "rel")
    sd = torch.load(d / "dit.pth", weights_only=True)
    sd["vid_out_ada.out_scale"] = torch.zeros(5)
    torch.save(sd, d / "dit.pth")
    with pytest.raises(VincieError, match=r"mis-shaped keys: vid_out_ada\.out_scale \[5\] \(model \[32\]\)"):
        VincieModel.from_pretrained(d, load_text=False)


def test_output_folder_rules(runner, release, tmp_path):
    rel, _ = release
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = _convert(runner, rel, out, "--skip-text")
    assert res.exit_code == 1 and "exists and is not empty" in _one_error_line(res)
    assert (out / "keep.txt").read_text() == "mine"
    res = _convert(runner, rel, out, "--skip-text", "--overwrite")
    assert res.exit_code == 0 and not (out / "keep.txt").exists() and (out / "meta.json").is_file()
    res = _convert(runner, tmp_path / "nope", tmp_path / "x")
    assert res.exit_code == 1 and "nope: no such release folder" in _one_error_line(res)


def test_convert_benchmark_release_is_loadable(tmp_path, capsys):
    """The benchmark's random release (released VAE shapes, sharded QWen stand-in) converts and loads."""
    import argparse

    from tests.conftest import load_script

    bench = load_script("benchmarks/bench_convert.py")
    args = argparse.Namespace(tiny=True, dim=64, layers=2, mm_layers=1, qwen_hidden=64, qwen_layers=2)
    info = bench.write_release(tmp_path / "rel", args)
    assert info["params"]["dit"] > 0 and info["bytes"]["dit.pth"] > 4 * info["params"]["dit"]
    bench.child_convert(str(tmp_path / "rel"), str(tmp_path / "out"), "fp32")
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["seconds"] > 0 and rec["peak_rss_kib"] > 0
    model = VincieModel.from_pretrained(tmp_path / "out")
    assert model.identity()["sha256"] == rec["sha256"]
    assert model.session_text(["hello"])[1].tolist() == [[1 + 5 + 1]]  # turn row + 5 byte tokens + EOD
