"""Parity of the VAE (released 5-D weights -> diffusers AutoencoderKL + pixel-shuffle upsamplers) with the release.

The architecture comes from the fixture's vae/config.json and the cases from vae/vae_cases.safetensors, so the
test runs unchanged on any fixture set of the same structure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.model.parity_helpers import assert_close
from vincie_cli.model.convert import read_vae_config_file
from vincie_cli.model.vae import build_vae, load_vae_weights

FP32_DEFAULT = (1e-4, 1e-5)
BF16_DEFAULT = (0.25, 0.1)


def _vae_dir(parity: Path) -> Path:
    d = parity / "vae"
    if not (d / "config.json").is_file() or not (d / "vae_cases.safetensors").is_file():
        pytest.skip(f"no VAE fixtures under {d}")
    return d


def _tolerances(parity: Path) -> tuple[tuple[float, float], tuple[float, float]]:
    fp32, bf16 = FP32_DEFAULT, BF16_DEFAULT
    f = parity / "tolerances.json"
    if f.is_file():
        for key, entry in json.loads(f.read_text()).items():
            if not key.startswith("vae/") or not isinstance(entry, dict) or "max_abs" not in entry:
                continue
            bound = (float(entry["max_abs"]), float(entry["rel_l2"]))
            if "bf16" in key:
                bf16 = bound
            else:
                fp32 = bound
    return fp32, bf16


def _model(d: Path, dtype: torch.dtype):
    config = read_vae_config_file(d / "config.json")
    vae = build_vae(config, dtype=dtype).eval()
    load_vae_weights(vae, load_file(str(d / "weights.safetensors")), "fixture weights")
    return vae


def _outputs(vae, cases: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our VAE on the fixture inputs, in the fixture's layouts."""
    with torch.no_grad():
        mean, logvar = vae.encode_moments(cases["image"])
        video = cases["session_video"]  # (3, T, H, W): frames encoded one by one, channels-last, scaled
        return {
            "posterior_mean": mean,
            "posterior_logvar": logvar,
            "decoded": vae.decode_raw(cases["decode_latent"]),
            "session_latents": vae.encode(video.permute(1, 0, 2, 3)),
            "session_decoded": vae.decode(cases["session_latents"]).permute(1, 0, 2, 3),
        }


def test_vae_fp32_matches_release(parity):
    d = _vae_dir(parity)
    fp32, _ = _tolerances(parity)
    cases = load_file(str(d / "vae_cases.safetensors"))
    out = _outputs(_model(d, torch.float32), cases)
    for key, value in out.items():
        assert value.shape == cases[key].shape, f"{key}: {tuple(value.shape)} vs {tuple(cases[key].shape)}"
        assert_close(value, cases[key], fp32, f"vae {key}")


def test_vae_bf16_within_informational_bounds(parity):
    """The release runs the VAE in bf16; CPU bf16 kernels differ, so only the documented loose bounds apply."""
    d = _vae_dir(parity)
    _, bf16 = _tolerances(parity)
    cases = load_file(str(d / "vae_cases.safetensors"))
    present = {k.removesuffix("_bf16") for k in cases if k.endswith("_bf16")}
    if not present:
        pytest.skip("no *_bf16 keys in this fixture set")
    out = _outputs(_model(d, torch.bfloat16), cases)
    for key in sorted(present & set(out)):
        assert out[key].dtype == torch.bfloat16
        assert_close(out[key].float(), cases[key + "_bf16"].float(), bf16, f"vae {key} (bf16)")
