"""Training checkpoints: self-describing model folders that also resume a run exactly.

    <out>/step-00001000/
      model_config.json        the architecture and the conditioning layout (`VincieModel.from_pretrained`)
      dit.safetensors          EMA weights (the model's default weights; raw when EMA is off)
      dit_raw.safetensors      the raw weights (only with EMA)
      vae.safetensors          the frozen autoencoder (KL VAE only), text_encoder/ the frozen text encoder
      trainer_state.safetensors  optimizer tensors, LoRA adapters and their EMA, torch RNG state
      trainer_state.json       step, counters, optimizer groups, data positions per rank, cache identity
      recipe.yaml              the resolved recipe
      meta.json                file hashes (pipeline.write_meta) and training provenance
    <out>/latest               "step-00001000": always names a complete checkpoint

A checkpoint is written into a hidden temporary folder and renamed into place only when complete; then
`latest` is replaced atomically; then checkpoints beyond `keep_last` are deleted. Any failure while writing
(a full disk, say) removes the temporary folder and leaves the previous checkpoint and `latest` untouched.
Loading reads safetensors and JSON only (no pickle).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from vincie_cli.utils.io import BadInputError, VincieError, atomic_write_json, atomic_write_text
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)

STEP_RE = re.compile(r"^step-(\d{8})$")
LATEST = "latest"
RAW_FILE = "dit_raw.safetensors"
STATE_FILE = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
RECIPE_FILE = "recipe.yaml"
STATE_FORMAT = "vincie-train-state/1"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


@dataclass
class CheckpointWriter:
    """What one checkpoint holds; `write(out_dir, step, keep_last)` puts it on disk atomically."""

    name: str
    model_config: dict[str, Any]
    dit: dict[str, Tensor]  # the model's weights (EMA when enabled)
    dit_raw: dict[str, Tensor] | None
    vae: Any  # a VincieVAE (saved) or a PixelAE (nothing to save)
    text_encoder: Any
    state_tensors: dict[str, Tensor]
    state_json: dict[str, Any]
    recipe_yaml: str
    source: dict[str, Any]
    reuse_from: Path | None = None  # a complete checkpoint of the same run whose frozen files can be linked

    def _files(self, tmp: Path) -> dict[str, str]:
        from vincie_cli.model.pipeline import DIT_FILE, MODEL_CONFIG_FILE, TEXT_DIR, VAE_FILE, keep_fp32
        from vincie_cli.model.vae import VincieVAE
        from vincie_cli.model.weights import save_state_dict

        known = {DIT_FILE: save_state_dict(tmp / DIT_FILE, self.dit, None, keep_dtype=keep_fp32)}
        if self.dit_raw is not None:
            known[RAW_FILE] = save_state_dict(tmp / RAW_FILE, self.dit_raw, None, keep_dtype=keep_fp32)
        # the autoencoder and the text encoder are frozen: link their files from the previous checkpoint
        reused = _link_frozen(self.reuse_from, tmp, (VAE_FILE, TEXT_DIR)) if self.reuse_from else {}
        known.update(reused)
        if isinstance(self.vae, VincieVAE) and VAE_FILE not in reused:
            known[VAE_FILE] = save_state_dict(tmp / VAE_FILE, self.vae.state_dict(), None)
        if self.text_encoder is not None and not any(k.startswith(TEXT_DIR + "/") for k in reused):
            hashes = self.text_encoder.save_pretrained(tmp / TEXT_DIR)
            known.update({f"{TEXT_DIR}/{k}": v for k, v in hashes.items()})
        known[STATE_FILE] = save_state_dict(tmp / STATE_FILE, self.state_tensors, None)
        atomic_write_json(tmp / MODEL_CONFIG_FILE, self.model_config)
        atomic_write_json(tmp / STATE_JSON, self.state_json)
        atomic_write_text(tmp / RECIPE_FILE, self.recipe_yaml)
        return known

    def write(self, out_dir: str | Path, step: int, keep_last: int) -> Path:
        from vincie_cli.model.pipeline import write_meta

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        final = out / step_dir_name(step)
        tmp = out / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            known = self._files(tmp)
            write_meta(tmp, self.name, known, self.source)
            _fsync_dir(tmp)
            old = None
            if final.exists():  # the same step saved again (e.g. right after a resume)
                old = out / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
            os.replace(tmp, final)
            _fsync_dir(out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                prev = read_latest_name(out)
                kept = f"the previous checkpoint {prev} is intact" if prev else "no earlier checkpoint exists"
                raise VincieError(
                    f"{out}: could not write checkpoint {final.name} ({e.strerror or e}); {kept}"
                ) from None
            raise
        atomic_write_text(out / LATEST, final.name + "\n")
        prune(out, keep_last, protect=final.name)
        return final


def _link_frozen(prev: Path, tmp: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Hard-link (or copy) frozen files/folders of `prev` into `tmp`; returns {relative path: sha256} taken from
    prev's meta.json. Nothing is linked when prev has no usable record of a file."""
    try:
        files = json.loads((prev / "meta.json").read_text()).get("files", {})
    except (OSError, json.JSONDecodeError):
        return {}
    out: dict[str, str] = {}
    for name in names:
        rels = [r for r in files if r == name or r.startswith(name + "/")]
        if not rels or not all((prev / r).is_file() for r in rels):
            continue
        for rel in rels:
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(prev / rel, dst)
            except OSError:
                shutil.copy2(prev / rel, dst)
            out[rel] = files[rel]["sha256"]
    return out


def read_latest_name(out_dir: Path) -> str | None:
    p = Path(out_dir) / LATEST
    if not p.is_file():
        return None
    name = p.read_text().strip()
    return name if STEP_RE.match(name) else None


def is_complete(path: Path) -> bool:
    return (path / STATE_JSON).is_file() and (path / "meta.json").is_file() and (path / "model_config.json").is_file()


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete step folders, oldest first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    dirs = [p for p in out.iterdir() if p.is_dir() and STEP_RE.match(p.name) and is_complete(p)]
    return sorted(dirs, key=lambda p: p.name)


def find_latest(out_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names (or, if that file is missing or stale, the newest complete one)."""
    out = Path(out_dir)
    name = read_latest_name(out)
    if name and is_complete(out / name):
        return out / name
    found = list_checkpoints(out)
    return found[-1] if found else None


def prune(out_dir: Path, keep_last: int, protect: str) -> None:
    """Delete complete checkpoints beyond the newest `keep_last`, and leftovers of interrupted saves."""
    found = list_checkpoints(out_dir)
    for p in found[: max(0, len(found) - keep_last)]:
        if p.name != protect:
            shutil.rmtree(p, ignore_errors=True)
            log.info("removed old checkpoint %s", p.name)


def clean_partial(out_dir: str | Path) -> None:
    """Remove hidden temporary folders that a crash during a save left behind."""
    out = Path(out_dir)
    if out.is_dir():
        for p in out.glob(".step-*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


@dataclass
class LoadedState:
    path: Path
    json: dict[str, Any]
    tensors: dict[str, Tensor]
    model_config: dict[str, Any]

    def dit_weights(self, raw: bool) -> dict[str, Tensor]:
        """Raw weights (dit_raw.safetensors, or dit.safetensors when EMA was off) or the EMA ones."""
        from vincie_cli.model.weights import load_safetensors

        f = self.path / (RAW_FILE if raw and (self.path / RAW_FILE).is_file() else "dit.safetensors")
        return load_safetensors(f)


def load_state(path: str | Path, device: str = "cpu") -> LoadedState:
    """Read a checkpoint's trainer state (JSON + safetensors; never a pickle)."""
    from vincie_cli.model.weights import load_safetensors

    p = Path(path)
    if not is_complete(p):
        raise BadInputError(
            f"{p}: not a complete training checkpoint (missing {STATE_JSON}, meta.json or model_config.json)"
        )
    try:
        state = json.loads((p / STATE_JSON).read_text())
        cfg = json.loads((p / "model_config.json").read_text())
    except json.JSONDecodeError as e:
        raise BadInputError(f"{p}: unreadable checkpoint JSON ({e.msg})") from None
    if state.get("format") != STATE_FORMAT:
        raise BadInputError(f"{p / STATE_JSON}: format {state.get('format')!r}, expected {STATE_FORMAT}")
    tensors = load_safetensors(p / STATE_FILE, device) if (p / STATE_FILE).is_file() else {}
    return LoadedState(p, state, tensors, cfg)


def config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config mappings (for clear errors)."""
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}.{k}" if prefix else k
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(config_differences(va, vb, key))
        elif va != vb and not (isinstance(va, list | tuple) and isinstance(vb, list | tuple) and list(va) == list(vb)):
            out.append(f"{key} {va!r} vs {vb!r}")
    return out
