"""`VincieModel`: the DiT, the autoencoder and the text encoder of one VINCIE model, loaded and saved together.

Two folder layouts load with `VincieModel.from_pretrained(path_or_hub_id)`:
- the release (`dit.pth`, `vae.pth`, `llm14b/`): the DiT config is derived from the checkpoint's shapes, the
  VAE's from `vae.pth`'s shapes (GroupNorm 32 groups, scale 0.9152, unless `vae_config` says otherwise),
  the text encoder is the QWen v1 folder; pickles are read with `weights_only=True` and mmap;
- ours (`vincie convert` / `save_pretrained`): `model_config.json`, `dit.safetensors`, `vae.safetensors`
  (absent for a pixel autoencoder), `text_encoder/` (its own config, weights and tokenizer files) and
  `meta.json` (file hashes, provenance).
A Hugging Face hub id (`owner/name`) is downloaded with `huggingface_hub.snapshot_download` when online.

Big models are built on the meta device and take the loaded tensors with `assign=True`, so loading needs
about the weights' size in memory, not twice that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vincie_cli.model.dit import DiTConfig, VincieTransformer, assemble_session_text, build_dit, load_dit_weights
from vincie_cli.model.presets import ModelConfig
from vincie_cli.model.text import TextEncoder, TextEncoderConfig, load_text_encoder
from vincie_cli.model.vae import PixelAE, VAEConfig, VincieVAE, build_vae, load_vae_weights
from vincie_cli.model.weights import (
    SafetensorsReader,
    load_torch_state_dict,
    safetensors_header_digest,
    save_state_dict,
)
from vincie_cli.utils.io import BadInputError, VincieError, atomic_write_json, cached_sha256_file, sha256_file
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)

FORMAT_NAME = "vincie"
FORMAT_VERSION = 1
MODEL_CONFIG_FILE = "model_config.json"
META_FILE = "meta.json"
DIT_FILE = "dit.safetensors"
VAE_FILE = "vae.safetensors"
TEXT_DIR = "text_encoder"
RELEASE_FILES = ("dit.pth", "vae.pth")
RELEASE_TEXT_DIR = "llm14b"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# models that ship inside the package, usable by name wherever a model folder is asked for
PACKAGED_MODELS = {"mini": Path(__file__).resolve().parents[1] / "assets" / "mini"}


def keep_fp32(name: str) -> bool:
    """Tensors stored in fp32 whatever the weight dtype (the RoPE frequency buffers)."""
    return name.endswith("rope.rope.freqs")


# --------------------------------------------------------------------------------------------
# folders: where a model is, atomic output, hashes


def resolve_model_path(path_or_hub_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is (a `vincie train` run folder means its `latest` checkpoint); the name of a packaged
    model (`mini`) when no such folder exists; an `owner/name` hub id through huggingface_hub (cache first when
    offline)."""
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BadInputError(f"{path}: not a model folder")
        latest = path / "latest"
        if latest.is_file() and not (path / MODEL_CONFIG_FILE).exists():
            step = path / latest.read_text().strip()
            if not step.is_dir():
                raise BadInputError(f"{latest}: points at {step.name}, which does not exist")
            return step
        return path
    text = str(path_or_hub_id)
    if text in PACKAGED_MODELS and (PACKAGED_MODELS[text] / MODEL_CONFIG_FILE).is_file():
        return PACKAGED_MODELS[text]
    if not _HUB_ID.match(text) or text.startswith((".", "/")):
        raise BadInputError(f"{text}: no such model folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(text, revision=revision, local_files_only=offline))
    except (LocalEntryNotFoundError, OSError) as e:
        if offline:
            raise VincieError(
                f"{text}: not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE=1 forbids "
                "downloading it; unset HF_HUB_OFFLINE (or download it elsewhere) and try again"
            ) from None
        raise VincieError(f"{text}: could not download from the Hugging Face hub ({_one_line(e)})") from None
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as e:
        raise VincieError(f"{text}: not available on the Hugging Face hub ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:200]


def detect_layout(folder: Path) -> str:
    """'vincie' (model_config.json) or 'release' (dit.pth); anything else is refused."""
    if (folder / MODEL_CONFIG_FILE).is_file():
        return "vincie"
    if (folder / "dit.pth").is_file() or (folder / "vae.pth").is_file():
        return "release"
    raise BadInputError(
        f"{folder}: not a VINCIE model folder (expected {MODEL_CONFIG_FILE} from `vincie convert`, "
        f"or the release's dit.pth, vae.pth and {RELEASE_TEXT_DIR}/)"
    )


def check_release_folder(folder: Path, need_text: bool = True) -> None:
    missing = [f for f in RELEASE_FILES if not (folder / f).is_file()]
    if need_text and not (folder / RELEASE_TEXT_DIR).is_dir():
        missing.append(f"{RELEASE_TEXT_DIR}/")
    if missing:
        raise BadInputError(
            f"{folder}: missing {', '.join(missing)} (a VINCIE release folder has dit.pth, vae.pth and "
            f"{RELEASE_TEXT_DIR}/)"
        )


def prepare_output_dir(out: Path, overwrite: bool = False) -> Path:
    """Check `out` can be written and make a fresh hidden temp folder next to it; returns the temp folder.

    Everything is written into the temp folder and moved into place by `finalize_output_dir`, so `out`
    only ever appears complete.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VincieError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise VincieError(f"{out}: exists and is not empty; choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def finalize_output_dir(tmp: Path, out: Path, overwrite: bool = False) -> None:
    """Move the finished temp folder onto `out` (an existing `out` is replaced only with `overwrite`)."""
    out = Path(out)
    old = None
    if out.is_dir():
        if not any(out.iterdir()):
            out.rmdir()
        elif overwrite:
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        else:
            raise VincieError(f"{out}: exists and is not empty; choose another folder or pass --overwrite")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        fd = os.open(out.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


@contextlib.contextmanager
def output_dir(out: Path, overwrite: bool = False):
    """Yield a temp folder; on success it becomes `out`, on any failure it is removed."""
    tmp = prepare_output_dir(out, overwrite)
    try:
        yield tmp
        finalize_output_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rel_files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != META_FILE and not p.name.startswith(".")
    )


def _combined(hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(hashes):
        h.update(f"{rel} {hashes[rel]}\n".encode())
    return h.hexdigest()


def write_meta(folder: Path, name: str, known: dict[str, str], source: dict[str, Any] | None = None) -> dict:
    """Write meta.json: per file size + sha256 (+ header digest for safetensors) and the combined sha256.

    `known` holds hashes computed while writing (no second pass over big files); other files are hashed here.
    """
    files = {}
    for rel in _rel_files(folder):
        p = folder / rel
        entry: dict[str, Any] = {"size": p.stat().st_size, "sha256": known.get(rel) or sha256_file(p)}
        if rel.endswith(".safetensors"):
            entry["header_sha256"] = safetensors_header_digest(p)
        files[rel] = entry
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sha256": _combined({k: v["sha256"] for k, v in files.items()}),
        "files": files,
        "source": source or {},
    }
    atomic_write_json(folder / META_FILE, meta)
    return meta


def folder_sha256(folder: Path, verify: bool = False) -> str:
    """The combined sha256 of a folder's files (except meta.json).

    Safetensors files reuse meta.json's recorded hash when their size and header digest still match
    (`verify=True` rehashes everything); other files are hashed (they are small in our layout).
    """
    recorded: dict[str, Any] = {}
    meta_path = folder / META_FILE
    if meta_path.is_file() and not verify:
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            recorded = json.loads(meta_path.read_text()).get("files", {})
    hashes = {}
    for rel in _rel_files(folder):
        p = folder / rel
        rec = recorded.get(rel)
        if (
            rec
            and rel.endswith(".safetensors")
            and rec.get("size") == p.stat().st_size
            and rec.get("header_sha256") == safetensors_header_digest(p)
        ):
            hashes[rel] = rec["sha256"]
        else:
            if rec and rel.endswith(".safetensors"):
                log.warning("%s: changed since meta.json was written; hashing it again", p)
            hashes[rel] = sha256_file(p)
    return _combined(hashes)


# --------------------------------------------------------------------------------------------
# the model


class VincieModel(nn.Module):
    """DiT + autoencoder + text encoder, with cached prompt encoding and session-text assembly."""

    def __init__(
        self,
        config: ModelConfig,
        dit: VincieTransformer,
        vae: VincieVAE | PixelAE,
        text_encoder: TextEncoder | None,
        path: str | os.PathLike | None = None,
        layout: str = "built",
        text_cache_size: int = 4096,
    ) -> None:
        super().__init__()
        self.config = config
        self.dit = dit
        self.vae = vae
        self.text_encoder = text_encoder
        self.path = Path(path) if path is not None else None
        self.layout = layout
        self.text_cache_size = text_cache_size
        self._text_cache: OrderedDict[str, Tensor] = OrderedDict()
        self._sha256: str | None = None

    @property
    def device(self) -> torch.device:
        return self.dit.device

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.dtype

    @property
    def attention(self) -> str:
        return self.dit.attention

    @attention.setter
    def attention(self, mode: str) -> None:
        self.dit.attention = mode

    # text -------------------------------------------------------------------------------------

    def _require_text(self) -> TextEncoder:
        if self.text_encoder is None:
            where = f" ({self.path})" if self.path else ""
            raise VincieError(
                f"this model{where} has no text encoder; load one with text_path=... (e.g. the release's llm14b/)"
            )
        return self.text_encoder

    def encode_prompts(self, prompts: list[str]) -> list[Tensor]:
        """(n_k, dim) valid-token states per prompt; each distinct prompt string is encoded once and cached."""
        te = self._require_text()
        todo = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if todo:
            for p, s in zip(todo, te.encode(todo)):
                self._text_cache[p] = s
        out = []
        for p in prompts:
            self._text_cache.move_to_end(p)
            out.append(self._text_cache[p])
        while len(self._text_cache) > max(self.text_cache_size, len(set(prompts))):
            self._text_cache.popitem(last=False)
        return out

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def session_texts(self, sessions: list[list[str]]) -> tuple[Tensor, Tensor]:
        """Packed text of several sessions: per session `[P[k]; prompt k]` over its turns, concatenated.

        Returns txt (sum L, txt_in_dim) in the DiT's dtype and device, and txt_shape (B, 1) long.
        """
        flat = [p for s in sessions for p in s]
        states = self.encode_prompts(flat)
        per_session, i = [], 0
        for s in sessions:
            per_session.append(states[i : i + len(s)])
            i += len(s)
        table = self.dit.prompt_id_embedding.embedding.weight
        txt, txt_shape = assemble_session_text(per_session, table)
        return txt.to(dtype=self.dit.dtype), txt_shape

    def session_text(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """One session's packed text (its prompts in turn order)."""
        return self.session_texts([list(prompts)])

    def negative_text(self, prompt: str) -> tuple[Tensor, Tensor]:
        """The negative prompt as one segment with turn embedding 0."""
        return self.session_texts([[prompt]])

    def negative_texts(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        return self.session_texts([[p] for p in prompts])

    # identity ---------------------------------------------------------------------------------

    def identity(self, verify: bool = False) -> dict[str, Any]:
        """{"name", "path", "sha256"}: sha256 over the weight and tokenizer files (cached in meta.json for our
        layout, computed once per process for the release layout), or over the tensors of an unsaved model."""
        if self._sha256 is None or verify:
            if self.path is not None and self.layout == "vincie":
                self._sha256 = folder_sha256(self.path, verify=verify)
            elif self.path is not None and self.layout == "release":
                rels = list(RELEASE_FILES)
                if (self.path / RELEASE_TEXT_DIR).is_dir():
                    rels += [f"{RELEASE_TEXT_DIR}/{r}" for r in _rel_files(self.path / RELEASE_TEXT_DIR)]
                self._sha256 = _combined({rel: cached_sha256_file(self.path / rel) for rel in rels})
            else:
                h = hashlib.sha256()
                for part in (self.dit, self.vae, self.text_encoder):
                    if part is None:
                        continue
                    for k, v in part.state_dict().items():
                        h.update(k.encode())
                        t = v.detach().cpu().contiguous().reshape(-1)
                        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
                self._sha256 = h.hexdigest()
        return {"name": self.config.name, "path": str(self.path) if self.path else None, "sha256": self._sha256}

    # saving -------------------------------------------------------------------------------------

    def save_pretrained(
        self, directory: str | os.PathLike, dtype: torch.dtype | None = None, overwrite: bool = False
    ) -> dict[str, Any]:
        """Write our self-describing folder atomically (temp folder + rename). Returns meta.json's content.

        dtype: storage dtype of DiT and autoencoder weights (default: as they are); the text encoder is
        saved as it is.
        """
        out = Path(directory)
        with output_dir(out, overwrite) as tmp:
            known = {DIT_FILE: save_state_dict(tmp / DIT_FILE, self.dit.state_dict(), dtype, keep_dtype=keep_fp32)}
            if isinstance(self.vae, VincieVAE):
                known[VAE_FILE] = save_state_dict(tmp / VAE_FILE, self.vae.state_dict(), dtype)
            text_cfg = self.config.text
            if self.text_encoder is not None:
                hashes = self.text_encoder.save_pretrained(tmp / TEXT_DIR)
                known.update({f"{TEXT_DIR}/{k}": v for k, v in hashes.items()})
                text_cfg = self.text_encoder.config
            cfg = dataclasses.replace(self.config, dit=self.dit.config, vae=self.vae.config, text=text_cfg)
            atomic_write_json(tmp / MODEL_CONFIG_FILE, cfg.to_dict())
            source = {"from": str(self.path) if self.path else None, "layout": self.layout}
            if self.text_encoder is None:
                source["text_encoder"] = "not included"
            meta = write_meta(tmp, self.config.name, known, source)
        self.path, self.layout, self._sha256 = out, "vincie", meta["sha256"]
        return meta

    # loading ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        text_device: str | torch.device | None = None,
        attention: str = "bf16",
        strict: bool = True,
        *,
        text_dtype: torch.dtype | None = None,
        vae_dtype: torch.dtype | None = None,
        vae_config: VAEConfig | None = None,
        text_path: str | os.PathLike | None = None,
        load_text: bool = True,
        eod_tokens: int | None = None,
        revision: str | None = None,
    ) -> VincieModel:
        """Load a model folder (ours or the release) or a hub id.

        device/dtype: DiT (and, unless vae_dtype, autoencoder). text_device/text_dtype: the text encoder
        (default: `device` and its configured dtype, bf16 for QWen). attention: "bf16" (released numerics) or
        "fp32". strict: DiT keys must match exactly (the autoencoder and text encoder always load strictly).
        vae_config: the released VAE's config when it is not the release's (GroupNorm groups are not visible
        in the weights). text_path: a text encoder folder to use instead of the model's own (or for a model
        saved without one). load_text=False skips the text encoder. eod_tokens: override (QWen, 1 or 2).
        """
        folder = resolve_model_path(path_or_hub_id, revision)
        layout = detect_layout(folder)
        text_device = text_device or device
        vae_dtype = vae_dtype or dtype
        overrides = {"eod_tokens": eod_tokens} if eod_tokens is not None else {}
        if layout == "release":
            check_release_folder(folder, need_text=load_text and text_path is None)
            dit = _load_release_dit(folder / "dit.pth", device, dtype, strict)
            vae = _load_release_vae(folder / "vae.pth", device, vae_dtype, vae_config)
            text_dir = Path(text_path) if text_path else folder / RELEASE_TEXT_DIR
            text = load_text_encoder(text_dir, text_device, text_dtype, **overrides) if load_text else None
            text_cfg = text.config if text is not None else _release_text_config(folder)
            config = ModelConfig(folder.name, dit.config, vae.config, text_cfg)
        else:
            config = _read_model_config(folder)
            dit = _load_dit_safetensors(folder / DIT_FILE, config.dit, device, dtype, strict)
            vae = build_vae(config.vae, device="meta" if config.vae.kind == "kl" else device, dtype=vae_dtype)
            if config.vae.kind == "kl":
                vf = folder / VAE_FILE
                if not vf.is_file():
                    raise BadInputError(f"{folder}: missing {VAE_FILE}")
                load_vae_weights(vae, _read_safetensors(vf, device), str(vf))
                vae = vae.to(device)
            text = None
            if load_text:
                text_dir = Path(text_path) if text_path else folder / TEXT_DIR
                if text_dir.is_dir():
                    text = load_text_encoder(text_dir, text_device, text_dtype, **overrides)
                else:
                    log.warning(
                        "%s: no %s/ folder; the model has no text encoder (pass text_path=...)", folder, TEXT_DIR
                    )
            if text is not None:
                config = dataclasses.replace(config, text=text.config)
        if text is not None and text.dim != dit.config.txt_in_dim:
            raise BadInputError(
                f"{folder}: text encoder width {text.dim} does not match the DiT's txt_in_dim {dit.config.txt_in_dim}"
            )
        dit.attention = attention
        model = cls(config, dit.eval(), vae.eval(), text, path=folder, layout=layout)
        return model.eval()


# --------------------------------------------------------------------------------------------
# loading helpers


def _read_model_config(folder: Path) -> ModelConfig:
    path = folder / MODEL_CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BadInputError(f"{path}: not valid JSON ({e.msg})") from None
    try:
        return ModelConfig.from_dict(data)
    except (BadInputError, TypeError) as e:
        raise BadInputError(f"{path}: {e}") from None


def _read_safetensors(path: Path, device: str | torch.device) -> dict[str, Tensor]:
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    return dict(SafetensorsReader(path, device).items())


def _cast(sd: dict[str, Tensor], device, dtype: torch.dtype) -> dict[str, Tensor]:
    return {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() and not keep_fp32(k) else v.dtype)
        for k, v in sd.items()
    }


def _load_dit_safetensors(path: Path, config: DiTConfig, device, dtype: torch.dtype, strict: bool) -> VincieTransformer:
    sd = _cast(_read_safetensors(path, device), device, dtype)
    dit = build_dit(config, device="meta", dtype=dtype)
    try:
        load_dit_weights(dit, sd, strict=strict)
    except BadInputError as e:
        raise BadInputError(f"{path}: {e}") from None
    return dit


def _load_release_dit(path: Path, device, dtype: torch.dtype, strict: bool) -> VincieTransformer:
    sd = load_torch_state_dict(path)
    try:
        config = DiTConfig.from_state_dict(sd)
        dit = build_dit(config, device="meta", dtype=dtype)
        load_dit_weights(dit, _cast(sd, device, dtype), strict=strict)
    except BadInputError as e:
        raise BadInputError(f"{path}: {e}") from None
    return dit


def _load_release_vae(path: Path, device, dtype: torch.dtype, vae_config: VAEConfig | None) -> VincieVAE:
    from vincie_cli.model.vae import convert_vae_state_dict

    sd = convert_vae_state_dict(load_torch_state_dict(path))
    try:
        config = vae_config or VAEConfig.from_state_dict(sd)
    except BadInputError as e:
        raise BadInputError(f"{path}: {e}") from None
    vae = build_vae(config, device="meta", dtype=dtype)
    load_vae_weights(vae, sd, str(path))
    return vae.to(device)


def _release_text_config(folder: Path) -> TextEncoderConfig:
    """The text config of a release folder without loading the LLM (its config.json, else Qwen-14B)."""
    from vincie_cli.model.presets import QWEN14B_ARCH
    from vincie_cli.model.text import qwen2_arch_from_qwen_v1

    cfg_path = folder / RELEASE_TEXT_DIR / "config.json"
    arch = dict(QWEN14B_ARCH)
    if cfg_path.is_file():
        try:
            arch = qwen2_arch_from_qwen_v1(json.loads(cfg_path.read_text()), str(cfg_path))
        except json.JSONDecodeError as e:
            raise BadInputError(f"{cfg_path}: not valid JSON ({e.msg})") from None
    return TextEncoderConfig(kind="qwen", dim=arch["hidden_size"], max_length=150, dtype="bf16", arch=arch)
