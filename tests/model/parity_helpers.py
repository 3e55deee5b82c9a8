"""Helpers shared by the parity tests: metrics, tolerances from tolerances.json, fixture loading.

Everything is discovered from the fixture folder (configs, case files, keys), so the same tests run on any
fixture set of the same structure.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

from vincie_cli.model.dit import DiTConfig, VincieTransformer, build_dit, load_dit_weights

# documented bounds (README of the fixture set); tolerances.json overrides them when it has the entry
DEFAULT_TOLERANCES = {
    "dit_fp32": (1e-5, 1e-5),
    "dit_bf16": (1e-3, 1e-4),
    "dit_bf16_gpu": (5e-3, 1e-3),
    "timesteps": (2e-4, 1e-6),
    "sampler_fp32": (1e-4, 1e-5),
    "sampler_bf16": (5e-3, 1e-3),
    "sampler_bf16_guided": (1e-2, 3e-3),
    "preprocess": (5e-4, 1e-3),
}
_TOLERANCE_KEYS = {  # prefix of the tolerances.json key -> our name
    "dit/*/case_*.safetensors:vid_sample_fp32attn": "dit_fp32",
    "dit/*/case_*.safetensors:vid_sample (port emulates": "dit_bf16",
    "dit/*/case_*.safetensors:vid_sample (port uses a GPU": "dit_bf16_gpu",
    "sampler/timesteps.safetensors": "timesteps",
    "sampler/e2e.safetensors:*_fp32attn_*": "sampler_fp32",
    "sampler/e2e.safetensors:*_bf16attn_* (not v_guided)": "sampler_bf16",
    "sampler/e2e.safetensors:run10_bf16attn_v_guided_step0": "sampler_bf16_guided",
    "preprocess/preprocess.safetensors": "preprocess",
}


def tolerances(parity: Path) -> dict[str, tuple[float, float]]:
    tol = dict(DEFAULT_TOLERANCES)
    f = parity / "tolerances.json"
    if f.is_file():
        for key, entry in json.loads(f.read_text()).items():
            for prefix, name in _TOLERANCE_KEYS.items():
                if key.startswith(prefix) and isinstance(entry, dict) and "max_abs" in entry:
                    tol[name] = (float(entry["max_abs"]), float(entry["rel_l2"]))
    return tol


def metrics(port: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max_abs, rel_l2) in float64."""
    a, b = port.detach().double().reshape(ref.shape), ref.detach().double()
    diff = a - b
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    denom = b.norm().item()
    rel = diff.norm().item() / denom if denom > 0 else diff.norm().item()
    return max_abs, rel


def assert_close(port: torch.Tensor, ref: torch.Tensor, tol: tuple[float, float], what: str) -> None:
    assert port.numel() == ref.numel(), f"{what}: {port.numel()} values, reference has {ref.numel()}"
    max_abs, rel = metrics(port, ref)
    assert max_abs <= tol[0] and rel <= tol[1], (
        f"{what}: max_abs {max_abs:.3g} (bound {tol[0]:g}), rel_l2 {rel:.3g} (bound {tol[1]:g})"
    )


def dit_folders(parity: Path) -> list[Path]:
    folders = sorted(p for p in (parity / "dit").glob("*") if (p / "config.json").is_file())
    assert folders, f"no dit/*/config.json under {parity}"
    return folders


def fixture_config(folder: Path) -> DiTConfig:
    cfg = json.loads((folder / "config.json").read_text())
    turns = cfg.get("prompt_id_embedding", {}).get("constructor_args", {}).get("max_num_prompts", 64)
    return DiTConfig.from_official(cfg["constructor_args"], max_turns=int(turns))


@cache
def _load(folder: str) -> tuple[DiTConfig, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return fixture_config(Path(folder)), load_file(str(Path(folder) / "weights.safetensors"))


def fixture_model(folder: Path, device: str = "cpu") -> VincieTransformer:
    """The fixture's DiT in fp32 with its weights loaded strictly."""
    cfg, sd = _load(str(folder))
    model = build_dit(cfg, device=device).eval()
    load_dit_weights(model, sd, strict=True)
    return model


def fixture_weights(folder: Path) -> dict[str, torch.Tensor]:
    return _load(str(folder))[1]
