"""Release folder (`dit.pth`, `vae.pth`, `llm14b/`) -> our self-describing folder, streamed tensor by tensor.

Output (written into a hidden temp folder next to OUT_DIR and renamed at the end, so OUT_DIR never exists
half-written): `model_config.json`, `dit.safetensors`, `vae.safetensors`, `text_encoder/` (`text_encoder.json`,
`config.json` (Qwen2Config), `model.safetensors` or shards + index, `qwen.tiktoken`, `qwen_v1_config.json`),
`meta.json` (per-file sha256, computed while writing).

Memory: the pickles are opened with mmap and the DiT is built on the meta device and takes the mmap'd
tensors with assign=True; each tensor is then cast and written on its own, and its file pages are given back
(`FilePages`). The VAE and the QWen shards are converted tensor by tensor the same way, so peak RAM is the
imports plus about the largest tensor, whatever the model size (646 MiB for a 5.9 GB release, docs/loading.md).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from vincie_cli.model.dit import DiTConfig, build_dit, load_dit_weights
from vincie_cli.model.pipeline import (
    DIT_FILE,
    MODEL_CONFIG_FILE,
    RELEASE_TEXT_DIR,
    TEXT_DIR,
    VAE_FILE,
    _release_text_config,
    check_release_folder,
    keep_fp32,
    output_dir,
    write_meta,
)
from vincie_cli.model.presets import ModelConfig
from vincie_cli.model.text import (
    MAX_SHARD_BYTES,
    QWEN_TIKTOKEN_FILE,
    TEXT_CONFIG_FILE,
    QwenTextEncoder,
    QwenTokenizer,
    QwenV1Checkpoint,
    TextEncoderConfig,
    save_sharded_safetensors,
)
from vincie_cli.model.vae import (
    VAEConfig,
    build_vae,
    check_vae_state_dict,
    convert_vae_state_dict,
    convert_vae_tensor,
)
from vincie_cli.model.weights import (
    FilePages,
    dtype_name,
    load_torch_state_dict,
    save_state_dict,
    specs_of,
    write_safetensors,
)
from vincie_cli.utils.io import BadInputError, atomic_write_json
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)


def convert_release(
    release_dir: str | Path,
    out_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    skip_text: bool = False,
    vae_config: VAEConfig | None = None,
    eod_tokens: int = 1,
    max_length: int = 150,
    overwrite: bool = False,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> dict[str, Any]:
    """Convert a release folder; returns a summary (paths, configs, parameter counts, sha256, seconds).

    dtype: storage dtype of the DiT and VAE weights (RoPE frequency buffers stay fp32). The text encoder keeps
    its stored dtype, except that dtype=bf16 stores it in bf16 too. skip_text: leave out `llm14b/` (the
    folder then needs `text_path=` when loaded). vae_config: the VAE's config when it is not the release's.
    """
    t0 = time.perf_counter()
    release, out = Path(release_dir), Path(out_dir)
    if not release.is_dir():
        raise BadInputError(f"{release}: no such release folder")
    check_release_folder(release, need_text=not skip_text)
    summary: dict[str, Any] = {"release": str(release), "out": str(out), "dtype": dtype_name(dtype)}
    with output_dir(out, overwrite) as tmp:
        known: dict[str, str] = {}
        dit_cfg, n_dit = _convert_dit(release / "dit.pth", tmp / DIT_FILE, dtype, known)
        vae_cfg, n_vae = _convert_vae(release / "vae.pth", tmp / VAE_FILE, dtype, vae_config, known)
        if skip_text:
            text_cfg, n_text = _release_text_config(release), 0
            text_cfg.eod_tokens, text_cfg.max_length = eod_tokens, max_length
        else:
            text_cfg, n_text = _convert_text(
                release / RELEASE_TEXT_DIR, tmp / TEXT_DIR, dtype, eod_tokens, max_length, max_shard_bytes, known
            )
        config = ModelConfig(release.name, dit_cfg, vae_cfg, text_cfg)
        atomic_write_json(tmp / MODEL_CONFIG_FILE, config.to_dict())
        source = {"from": str(release.resolve()), "layout": "release", "converted_with": "vincie convert"}
        if skip_text:
            source["text_encoder"] = f"not included (--skip-text); load with text_path=<release>/{RELEASE_TEXT_DIR}"
        meta = write_meta(tmp, config.name, known, source)
    summary.update(
        params={"dit": n_dit, "vae": n_vae, "text_encoder": n_text},
        dit_config=dit_cfg.to_dict(),
        sha256=meta["sha256"],
        seconds=round(time.perf_counter() - t0, 3),
    )
    return summary


def _convert_dit(src: Path, dst: Path, dtype: torch.dtype, known: dict[str, str]) -> tuple[DiTConfig, int]:
    log.info("reading %s", src)
    sd = load_torch_state_dict(src)  # mmap: tensors stay on disk until written
    pages = FilePages(src)  # and their pages are given back once written
    try:
        config = DiTConfig.from_state_dict(sd)
        stored = _main_dtype(sd)
        dit = build_dit(config, device="meta", dtype=stored)
        load_dit_weights(dit, sd, strict=True)  # strict names/shapes; assign keeps the mmap'd tensors
    except BadInputError as e:
        raise BadInputError(f"{src}: {e}") from None
    out_sd = dit.state_dict()
    log.info("writing %s (%d tensors, %s)", dst.name, len(out_sd), dtype_name(dtype))
    known[dst.name] = save_state_dict(dst, out_sd, dtype, keep_dtype=keep_fp32, after_write=pages.release)
    n = sum(v.numel() for k, v in out_sd.items() if not keep_fp32(k))
    del dit, out_sd, sd
    return config, n


def _convert_vae(
    src: Path, dst: Path, dtype: torch.dtype, vae_config: VAEConfig | None, known: dict[str, str]
) -> tuple[VAEConfig, int]:
    log.info("reading %s", src)
    raw = load_torch_state_dict(src)  # mmap'd
    pages = FilePages(src)
    on_meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in raw.items()}
    shapes = convert_vae_state_dict(on_meta)  # names and shapes only; tensors are converted one by one below
    source_of = {convert_vae_tensor(k, on_meta)[0]: k for k in on_meta}
    try:
        config = vae_config or VAEConfig.from_state_dict(shapes)
    except BadInputError as e:
        raise BadInputError(f"{src}: {e}") from None
    check_vae_state_dict(build_vae(config, device="meta"), shapes, str(src))

    def get(name: str) -> torch.Tensor:
        t = convert_vae_tensor(source_of[name], raw)[1]
        pages.release(raw[source_of[name]])
        return t

    specs = specs_of(shapes, dtype)
    known[dst.name] = write_safetensors(dst, specs, get, after_write=pages.release)
    return config, sum(v.numel() for v in shapes.values())


def _convert_text(
    src: Path,
    dst: Path,
    dtype: torch.dtype,
    eod_tokens: int,
    max_length: int,
    max_shard_bytes: int,
    known: dict[str, str],
) -> tuple[TextEncoderConfig, int]:
    log.info("reading %s", src)
    ckpt = QwenV1Checkpoint(src)
    tokenizer = QwenTokenizer(ckpt.tokenizer_file())  # validates the ranks file before anything is written
    stored = {s.dtype for s in ckpt.specs()}
    out_dtype = torch.bfloat16 if dtype == torch.bfloat16 else (stored.pop() if len(stored) == 1 else torch.bfloat16)
    config = TextEncoderConfig(
        kind="qwen",
        dim=ckpt.arch["hidden_size"],
        max_length=max_length,
        eod_tokens=eod_tokens,
        dtype=dtype_name(out_dtype) if out_dtype in (torch.float32, torch.bfloat16, torch.float16) else "bf16",
        arch=ckpt.arch,
    )
    empty = QwenTextEncoder._empty(config, tokenizer)
    expected = {k: tuple(v.shape) for k, v in empty.model.state_dict().items()}
    got = {s.name: s.shape for s in ckpt.specs()}
    missing = [k for k in expected if k not in got]
    misshaped = [f"{k} {list(got[k])} (model {list(v)})" for k, v in expected.items() if k in got and got[k] != v]
    if missing or misshaped:
        problems = []
        if missing:
            problems.append("missing keys " + ", ".join(missing[:10]))
        if misshaped:
            problems.append("mis-shaped keys " + ", ".join(misshaped[:10]))
        raise BadInputError(f"{src}: weights do not fit its config.json: " + "; ".join(problems))
    dst.mkdir(parents=True)
    atomic_write_json(dst / TEXT_CONFIG_FILE, config.to_dict())
    atomic_write_json(dst / "config.json", empty.model.config.to_dict())
    shutil.copyfile(ckpt.tokenizer_file(), dst / QWEN_TIKTOKEN_FILE)
    shutil.copyfile(src / "config.json", dst / "qwen_v1_config.json")
    specs = ckpt.specs(out_dtype)
    log.info("writing %s/ (%d tensors, %s)", dst.name, len(specs), dtype_name(out_dtype))
    hashes = save_sharded_safetensors(
        dst, [(s.name, s.shape, s.dtype) for s in specs], ckpt.get, max_shard_bytes, ckpt.release_pages
    )
    known.update({f"{dst.name}/{k}": v for k, v in hashes.items()})
    ckpt.release()
    return config, sum(_numel(s.shape) for s in specs)


def _main_dtype(sd: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype most parameters are stored in (the released DiT is expected to be fp32)."""
    counts: dict[torch.dtype, int] = {}
    for v in sd.values():
        if v.is_floating_point():
            counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def read_vae_config_file(path: str | Path) -> VAEConfig:
    """A VAE config from JSON: the release's constructor args ({"constructor_args": {...}} or flat) or ours."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BadInputError(f"{path}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: expected a JSON object")
    if "kind" in data:
        return VAEConfig.from_dict(data)
    args = data.get("constructor_args", data)
    settings = data.get("generate_yaml_vae_settings", {})
    try:
        return VAEConfig.from_official(
            args,
            scaling_factor=float(settings.get("scaling_factor", args.get("scaling_factor", 0.9152))),
            shift_factor=float(settings.get("shifting_factor", args.get("shifting_factor", 0.0)) or 0.0),
        )
    except BadInputError as e:
        raise BadInputError(f"{path}: {e}") from None
