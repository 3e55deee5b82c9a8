"""Model configurations: `ModelConfig` (DiT + autoencoder + text encoder) and the named presets.

| preset | DiT | autoencoder | text | use |
|---|---|---|---|---|
| `tiny` | 32 wide, 2 layers | KL VAE (8, 8, 16, 16), 16 ch | bytes, 32-d, 1 layer | tests, seconds on CPU |
| `mini` | 256 wide, 6 layers (2 mm), 4 x 64 heads | PixelAE x4, 48 ch | bytes, 256-d, 2 layers | the synthetic world |
| `3b` | the release: 2560 wide, 32 layers (10 mm) | the released VAE | QWen-14B v1 (5120-d) | VINCIE-3B |
| `7b` | 3584 wide, 36 layers (10 mm), 28 x 128 heads | the released VAE | QWen-14B v1 | a guess, see below |

The 7B release ships no config. When its checkpoint is loaded, every DiT number is derived from the
checkpoint's shapes (`DiTConfig.from_state_dict`), so the `7b` preset only matters for building a model
from scratch or benchmarking; its values are a plausible 7B member of the same family.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from vincie_cli.model.dit import DiTConfig
from vincie_cli.model.layouts import ATTENTION_KINDS, CONDITION_KINDS, LAYOUT_KINDS, PREDICTION_KINDS, ROPE_KINDS
from vincie_cli.model.text import TextEncoderConfig
from vincie_cli.model.vae import VAEConfig
from vincie_cli.utils.io import BadInputError, UsageError

SAMPLING_KEYS = ("steps", "shift", "guidance", "rescale", "partial", "resolution")

# Qwen-14B (v1) as Qwen2Config fields (spec §7.1/7.4); a released llm14b/config.json takes precedence.
QWEN14B_ARCH: dict[str, Any] = {
    "vocab_size": 152064,
    "hidden_size": 5120,
    "intermediate_size": 13696,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 40,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
}


def swiglu_hidden(dim: int, ratio: float = 4.0) -> int:
    """The release's SwiGLU width: round_up(int(2 * dim * ratio / 3), 256)."""
    return 256 * math.ceil(int(2 * dim * ratio / 3) / 256)


@dataclass
class ModelConfig:
    """Everything needed to build a VINCIE model (no weights)."""

    name: str
    dit: DiTConfig
    vae: VAEConfig
    text: TextEncoderConfig
    # the conditioning layout the weights were trained in (`vincie train` writes it; model/layouts.py):
    # {"kind": "released"} or {"kind": "paper", "attention": "full" | "block_causal", "rope": ...}; None = released
    layout: dict[str, Any] | None = field(default=None)
    # recommended `vincie edit` settings for these weights (e.g. what they were validated with), used where the
    # user sets nothing: a subset of SAMPLING_KEYS; None = the release's defaults
    sampling: dict[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        c = self.vae.latent_channels
        problems = []
        unknown = sorted(set(self.sampling or {}) - set(SAMPLING_KEYS))
        if unknown:
            problems.append(f"sampling keys {', '.join(unknown)} (allowed: {', '.join(SAMPLING_KEYS)})")
        if self.layout is not None:
            allowed = {
                "kind": LAYOUT_KINDS,
                "attention": ATTENTION_KINDS,
                "rope": ROPE_KINDS,
                "condition": CONDITION_KINDS,
                "prediction": PREDICTION_KINDS,
            }
            for key, value in self.layout.items():
                if key == "source_sigma":
                    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                        problems.append(f"layout.source_sigma={value!r} (a number > 0)")
                elif key not in allowed or value not in allowed[key]:
                    problems.append(f"layout.{key}={value!r} (allowed: {', '.join(allowed.get(key, ()))})")
        if self.dit.vid_out_channels != c:
            problems.append(f"DiT vid_out_channels {self.dit.vid_out_channels} != autoencoder latent channels {c}")
        if self.dit.vid_in_channels != 2 * c + 1:
            problems.append(f"DiT vid_in_channels {self.dit.vid_in_channels} != 2 x {c} + 1 ([noisy | clean | mask])")
        if self.dit.txt_in_dim != self.text.dim:
            problems.append(f"DiT txt_in_dim {self.dit.txt_in_dim} != text encoder dim {self.text.dim}")
        if problems:
            raise BadInputError(f"model config {self.name!r} is inconsistent: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "dit": self.dit.to_dict(), "vae": self.vae.to_dict(), "text": self.text.to_dict()}
        if self.layout is not None:
            d["layout"] = dict(self.layout)
        if self.sampling is not None:
            d["sampling"] = dict(self.sampling)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        unknown = sorted(set(d) - {"name", "dit", "vae", "text", "layout", "sampling"})
        if unknown:
            raise BadInputError(f"unknown model config keys: {', '.join(unknown)}")
        missing = [k for k in ("dit", "vae", "text") if k not in d]
        if missing:
            raise BadInputError(f"model config lacks {', '.join(missing)}")
        return cls(
            name=str(d.get("name", "custom")),
            dit=DiTConfig.from_dict(d["dit"]),
            vae=VAEConfig.from_dict(d["vae"]),
            text=TextEncoderConfig.from_dict(d["text"]),
            layout=dict(d["layout"]) if d.get("layout") is not None else None,
            sampling=dict(d["sampling"]) if d.get("sampling") is not None else None,
        )


def _tiny() -> ModelConfig:
    text = TextEncoderConfig(kind="byte", dim=32, max_length=64, layers=1, heads=2, dtype="fp32")
    vae = VAEConfig(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=16)
    dit = DiTConfig(
        vid_in_channels=33, vid_out_channels=16, vid_dim=32, txt_in_dim=32, heads=2, head_dim=16,
        num_layers=2, mm_layers=1, mlp_hidden=64, rope_dim=14,
    )  # fmt: skip
    return ModelConfig("tiny", dit, vae, text)


def _mini() -> ModelConfig:
    vae = VAEConfig.pixel(factor=4)
    c = vae.latent_channels
    text = TextEncoderConfig(kind="byte", dim=256, max_length=128, layers=2, heads=4, dtype="fp32")
    dit = DiTConfig(
        vid_in_channels=2 * c + 1, vid_out_channels=c, vid_dim=256, txt_in_dim=256, heads=4, head_dim=64,
        num_layers=6, mm_layers=2, mlp_hidden=swiglu_hidden(256), rope_dim=64,
    )  # fmt: skip
    return ModelConfig("mini", dit, vae, text)


def _qwen_text() -> TextEncoderConfig:
    return TextEncoderConfig(kind="qwen", dim=5120, max_length=150, eod_tokens=1, dtype="bf16", arch=dict(QWEN14B_ARCH))


def _3b() -> ModelConfig:
    return ModelConfig("3b", DiTConfig(), VAEConfig(), _qwen_text())


def _7b() -> ModelConfig:
    dit = DiTConfig(vid_dim=3584, heads=28, head_dim=128, num_layers=36, mm_layers=10, mlp_hidden=swiglu_hidden(3584))
    return ModelConfig("7b", dit, VAEConfig(), _qwen_text())


PRESETS = {"tiny": _tiny, "mini": _mini, "3b": _3b, "7b": _7b}


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of a named preset (tiny, mini, 3b, 7b)."""
    if name not in PRESETS:
        raise UsageError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]()


def build_model(
    config: ModelConfig | str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    text_device: str | torch.device | None = None,
    seed: int | None = 0,
):
    """A `VincieModel` with fresh weights (seeded when `seed` is set). device="meta" allocates nothing.

    The DiT and the autoencoder take `dtype`; the text encoder keeps its configured dtype. A QWen/T5 text
    encoder built this way has random weights and no tokenizer (load real ones with `from_pretrained`).
    """
    from vincie_cli.model.dit import build_dit
    from vincie_cli.model.pipeline import VincieModel
    from vincie_cli.model.text import build_text_encoder
    from vincie_cli.model.vae import build_vae

    cfg = get_preset(config) if isinstance(config, str) else config
    if seed is not None and str(device) != "meta":
        torch.manual_seed(seed)
    dit = build_dit(cfg.dit, device=device, dtype=dtype)
    vae = build_vae(cfg.vae, device=device, dtype=dtype)
    text = build_text_encoder(cfg.text, device="meta" if str(device) == "meta" else (text_device or device))
    return VincieModel(cfg, dit, vae, text)
