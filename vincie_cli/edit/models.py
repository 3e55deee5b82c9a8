"""Which model an editing session runs, and getting it ready: loading, device, precision, offloading, compile.

`load_model(spec, settings)` takes a model folder (ours or the release's), a Hugging Face hub id, an already
loaded `VincieModel`, or None for the packaged default (`default_model_path()`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from vincie_cli.edit.settings import EditSettings
from vincie_cli.model.pipeline import PACKAGED_MODELS
from vincie_cli.utils.io import UsageError
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PACKAGED_MODEL = PACKAGED_MODELS["mini"]


def dtype_of(name: str) -> torch.dtype:
    return _DTYPES[name]


def default_model_path() -> Path:
    """The model used when no --model is given: the small `mini` model shipped in the package.

    It is trained on the synthetic world, so it is only meant for synthetic-world scenes
    (`is_synthetic_world_scene`). Raises UsageError explaining how to pass real weights when it is absent.
    """
    if (PACKAGED_MODEL / "model_config.json").is_file():
        return PACKAGED_MODEL
    raise UsageError(
        "no --model given and no packaged model is installed; pass the released weights with "
        "--model path/to/VINCIE-3B (a folder with dit.pth, vae.pth and llm14b/, from the Hugging Face repo "
        "ByteDance-Seed/VINCIE-3B), a folder written by `vincie convert` or `vincie train`, or a hub id "
        "(owner/name; needs network access)"
    )


def is_synthetic_world_scene(image: Any) -> bool:
    """Whether an input image (path or PIL image) is a synthetic-world scene the packaged `mini` model can edit."""
    from vincie_cli.synth.detect import looks_synthetic

    try:
        return looks_synthetic(image)
    except OSError:
        return False  # unreadable: the image loader reports it with its own message


def resolve_device(name: str) -> str:
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process under `accelerate launch` / torchrun (else 0, 1, 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    return rank, world, local


def process_device(settings: EditSettings) -> str:
    """The device of this process: settings.device, with one GPU per process under a multi-process launch."""
    device = resolve_device(settings.device)
    for name, dev in (("--device", device), ("--text-device", settings.text_device or "")):
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"{name} {dev}: CUDA is not available on this machine (use cpu or auto)")
    _, world, local = distributed_rank()
    if world > 1 and device == "cuda":
        return f"cuda:{local}"
    return device


def load_model(spec: Any, settings: EditSettings):
    """A `VincieModel` ready for editing with `settings` (device, precision, attention, text device).

    spec: a model folder or hub id (str / Path), a loaded VincieModel (moved and cast as the settings say,
    unless settings.device is "auto", which keeps it where it is), or None for `default_model_path()`.
    """
    from vincie_cli.model.pipeline import VincieModel

    dtype, vae_dtype = dtype_of(settings.precision), dtype_of(settings.vae_precision)
    if spec is None:
        spec = default_model_path()
    if isinstance(spec, (str, os.PathLike)):
        device = process_device(settings)
        text_device = settings.text_device or device
        log.info("loading %s on %s (%s, text encoder on %s)", spec, device, settings.precision, text_device)
        model = VincieModel.from_pretrained(
            spec, device=device, dtype=dtype, vae_dtype=vae_dtype, text_device=text_device, attention=settings.attention
        )
    else:
        model = spec
        if settings.device != "auto":
            device = process_device(settings)
            model.dit.to(device=device)
            model.vae.to(device=device)
        if model.dit.dtype != dtype:
            model.dit.to(dtype=dtype)
            for blk in model.dit.blocks:  # the RoPE frequency buffers stay fp32
                blk.attn.rope.rope.freqs = blk.attn.rope.rope.freqs.float()
        if model.vae.dtype != vae_dtype:
            model.vae.to(dtype=vae_dtype)
        if settings.text_device and model.text_encoder is not None:
            model.text_encoder.to(settings.text_device)
    model.dit.attention = settings.attention
    return model


def with_model_defaults(settings: EditSettings, given: Iterable[str], model) -> EditSettings:
    """`settings` with the model's recommended sampling settings (model_config.json "sampling") filled in for
    every key the user did not give (`given`: the names of explicitly set fields)."""
    recommended = getattr(getattr(model, "config", None), "sampling", None) or {}
    fill = {k: v for k, v in recommended.items() if k not in set(given)}
    if fill:
        log.info("using the model's recommended settings: %s", ", ".join(f"{k}={v}" for k, v in fill.items()))
    return dataclasses.replace(settings, **fill) if fill else settings


def conditioning_layout(model) -> dict[str, str]:
    """The conditioning layout the model runs with: {"kind": "released"} or the paper layout's
    {"kind": "paper", "attention": ..., "rope": ...} that `vincie train` records in the model config."""
    layout = getattr(getattr(model, "config", None), "layout", None)
    if layout is None:
        return {"kind": "released"}
    from vincie_cli.model.layouts import LayoutSpec

    spec = LayoutSpec.of(layout)
    return {"kind": "released"} if spec.kind == "released" else spec.to_dict()


def trained_by_vincie(model) -> bool:
    """Whether `vincie train` made the model (it records the conditioning layout in the model config); such
    models learned guidance against empty texts (text dropout), the release against a negative prompt."""
    return getattr(getattr(model, "config", None), "layout", None) is not None


def offload_text_encoder(model) -> None:
    """Move the text encoder to the CPU (its prompt states stay cached) and free its accelerator memory."""
    te = getattr(model, "text_encoder", None)
    if te is None:
        return
    dev = te.device
    if dev.type != "cpu":
        te.to("cpu")
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        log.info("text encoder moved from %s to the CPU", dev)


def compiled_dit(model, backend: str = "inductor"):
    """torch.compile'd DiT (built once per model and backend; dynamic shapes, since T and L change per round)."""
    cache = model.__dict__.setdefault("_vincie_compiled", {})
    if backend not in cache:
        cache[backend] = torch.compile(model.dit, dynamic=True, backend=backend)
    return cache[backend]
