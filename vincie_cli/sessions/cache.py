"""Optional cache of VAE latents and text-encoder outputs beside the shards, keyed by the model.

    DIR/cache/<cache_id>/cache.json              {"format", "cache_id", "identity", "resolution",
                                                  "text_format", "dtype", "masks"}
    DIR/cache/<cache_id>/train-000000.safetensors one file per finished shard, tensors per session:
        "<key>/latent/<i>"     (h, w, C)  VAE latent of frame i
        "<key>/text/<k>"       (L, D)     text-encoder output of turn k
        "<key>/src_mask/<k>", "<key>/dst_mask/<k>"   (h, w, C) latents of the RoE masks (white on black)

`cache_id` hashes the model identity (`VincieModel.identity()`), the resolution and the text format,
so a cache made by another model, at another resolution or with other texts lives in another folder,
and `SessionDataset(cache_identity=...)` refuses to use one made by a different model. Frames are
preprocessed like the release: later frames of a session are first resized to the first frame's
size, then each goes through `model.images.preprocess(img, resolution)`.

Several GPUs: run under `accelerate launch`; every process takes every N-th missing shard.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vincie_cli.utils.io import BadInputError, UsageError, VincieError, atomic_path, atomic_write_json, stable_hash
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)

CACHE_FORMAT = "vincie-cache/1"
TEXT_FORMATS = ("camera", "plain")


def canonical(identity: Any) -> str:
    """A stable string form of a model identity (str as is, anything else as sorted compact JSON).

    A "path" entry is left out: it says where the weights were loaded from, not what they are, so a
    moved checkpoint keeps its cache (`VincieModel.identity()` = {"name", "path", "sha256"}).
    """
    if isinstance(identity, str):
        return identity
    if isinstance(identity, dict):
        identity = {k: v for k, v in identity.items() if k != "path"}
    return json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)


def cache_id(identity: Any, resolution: int, text_format: str) -> str:
    return stable_hash(json.dumps([canonical(identity), int(resolution), text_format]), 16)


@dataclass
class CacheOptions:
    model: str
    resolution: int = 256
    text_format: str = "camera"  # camera: camera tag + text (what the released model saw); plain: text only
    batch_size: int = 16
    device: str = "cpu"
    dtype: str = "bfloat16"
    masks: bool = True


# --------------------------------------------------------------------------------------------
# reading


class CacheStore:
    """One cache folder (local path or fsspec URL) with its cache.json."""

    def __init__(self, url: str, info: dict[str, Any]) -> None:
        self.url = url.rstrip("/")
        self.info = info
        self._warned: set[str] = set()

    def load_shard(self, shard_name: str) -> dict[str, dict[str, Any]] | None:
        """{session key: entry} of one shard, or None (with one warning) when the shard was not cached."""
        import fsspec
        from safetensors.torch import load as load_bytes

        url = f"{self.url}/{Path(shard_name).stem}.safetensors"
        try:
            with fsspec.open(url, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            if shard_name not in self._warned:
                self._warned.add(shard_name)
                log.warning("%s: no cache for this shard; its sessions come without latents", url)
            return None
        try:
            tensors = load_bytes(data)
        except Exception as e:
            raise BadInputError(f"{url}: unreadable cache file ({e})") from None
        return group_entries(tensors, self.info)


def group_entries(tensors: dict[str, Any], info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat "<key>/<what>/<i>" tensors -> {key: {"latents": [...], "texts": [...], "src_masks": [...], ...}}."""
    raw: dict[str, dict[str, dict[int, Any]]] = {}
    for name, t in tensors.items():
        key, what, idx = name.split("/")
        raw.setdefault(key, {}).setdefault(what, {})[int(idx)] = t
    out = {}
    for key, parts in raw.items():
        n_frames = len(parts.get("latent", {}))
        n_turns = len(parts.get("text", {}))
        out[key] = {
            "cache_id": info["cache_id"],
            "identity": info["identity"],
            "resolution": info["resolution"],
            "text_format": info["text_format"],
            "latents": [parts["latent"][i] for i in range(n_frames)],
            "texts": [parts["text"][k] for k in range(n_turns)],
            "src_masks": [parts.get("src_mask", {}).get(k) for k in range(n_turns)],
            "dst_masks": [parts.get("dst_mask", {}).get(k) for k in range(n_turns)],
        }
    return out


def list_caches(root: str) -> list[dict[str, Any]]:
    """cache.json of every cache under `root`/cache (local or fsspec URL), with its "url"."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/cache")
    out = []
    for p in sorted(fs.glob(f"{path}/*/cache.json")):
        with fs.open(p, "rb") as f:
            info = json.loads(f.read())
        info["url"] = fs.unstrip_protocol(p.rsplit("/", 1)[0])
        out.append(info)
    return out


def find_cache(root: str, identity: Any, resolution: int | None = None, text_format: str | None = None) -> CacheStore:
    """The cache under `root` made by model `identity` (optionally also matching resolution / text format).

    A cache made by another model is never returned: it is a VincieError that names both identities.
    """
    caches = list_caches(root)
    want = canonical(identity)
    if not caches:
        raise VincieError(
            f"{root}: no latent cache; build one with `vincie build-sessions --cache-only --cache-model ... "
            f"--out-dir {root}`, or train without cache_identity"
        )
    match = [c for c in caches if canonical(c["identity"]) == want]
    if resolution is not None:
        match = [c for c in match if c["resolution"] == resolution]
    if text_format is not None:
        match = [c for c in match if c["text_format"] == text_format]
    if not match:
        have = "; ".join(f"{_short(c['identity'])} at {c['resolution']} px ({c['text_format']})" for c in caches)
        raise VincieError(
            f"{root}: stale cache: it was computed by another model or setting ({have}), not by {_short(identity)}"
            f"{f' at {resolution} px' if resolution else ''}; it is not used. Rebuild it with "
            "`vincie build-sessions --cache-only --cache-model ...`"
        )
    if len(match) > 1:
        opts = ", ".join(f"{c['resolution']} px ({c['text_format']})" for c in match)
        raise UsageError(f"{root}: several caches of this model ({opts}); choose a resolution / text format")
    return CacheStore(match[0]["url"], match[0])


def _short(identity: Any, n: int = 120) -> str:
    text = canonical(identity)
    return text if len(text) <= n else text[: n - 3] + "..."


# --------------------------------------------------------------------------------------------
# writing


class ModelEncoder:
    """The cache's view of a `VincieModel`: identity, frames -> latents, texts -> embeddings."""

    def __init__(self, model: Any, resolution: int, batch_size: int) -> None:
        self.model = model
        self.resolution = resolution
        self.batch_size = batch_size

    def identity(self) -> Any:
        return self.model.identity()

    def encode_images(self, images: list[Any]) -> list[Any]:
        """PIL images (already sized like their session's first frame) -> latents (h, w, C) on the CPU."""
        import torch

        from vincie_cli.model.images import preprocess

        pixels = [preprocess(img, self.resolution) for img in images]
        out: list[Any] = [None] * len(pixels)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(pixels):
            groups.setdefault(tuple(p.shape), []).append(i)
        vae = self.model.vae
        device, dtype = vae.device, vae.dtype
        with torch.inference_mode():
            for idx in groups.values():
                for s in range(0, len(idx), self.batch_size):
                    chunk = idx[s : s + self.batch_size]
                    batch = torch.stack([pixels[i] for i in chunk]).to(device, dtype)
                    lat = vae.encode(batch)  # (B, h, w, C)
                    for i, z in zip(chunk, lat):
                        out[i] = z.to("cpu", dtype).contiguous()
        return out

    def encode_texts(self, texts: list[str]) -> list[Any]:
        import torch

        with torch.inference_mode():
            return [t.detach().to("cpu").contiguous() for t in self.model.encode_prompts(texts)]


def load_encoder(opts: CacheOptions, device: str) -> ModelEncoder:
    import torch

    from vincie_cli.model.pipeline import VincieModel

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    model = VincieModel.from_pretrained(opts.model, device=device, dtype=dtypes[opts.dtype])
    return ModelEncoder(model.eval(), opts.resolution, opts.batch_size)


def _session_inputs(members: dict[str, bytes], where: str, masks: bool) -> tuple[list, list[str], list[str], list]:
    """(frame PIL images sized like the first, turn texts, cameras, [(turn, side, PIL mask)])."""
    from PIL import Image

    from vincie_cli.sessions.session import SESSION_FORMAT

    info = json.loads(members["json"])
    if info.get("format") != SESSION_FORMAT:
        raise BadInputError(f"{where}: not a {SESSION_FORMAT} session")
    frames = []
    for fr in info["frames"]:
        with Image.open(io.BytesIO(members[fr["member"]])) as im:
            frames.append(im.convert("RGB"))
    size = frames[0].size
    frames = [f if f.size == size else f.resize(size, Image.Resampling.BICUBIC) for f in frames]
    mask_imgs = []
    if masks:
        from vincie_cli.utils.masks import decode_mask_png

        for k, turn in enumerate(info["turns"]):
            for side in ("src", "dst"):
                name = turn.get(f"{side}_mask")
                if name:
                    m = decode_mask_png(members[name], f"{where}: {name}")
                    img = Image.fromarray(np.repeat((m * 255).astype(np.uint8)[..., None], 3, axis=2))
                    mask_imgs.append((k, side, img if img.size == size else img.resize(size, Image.Resampling.NEAREST)))
    texts = [t["text"] for t in info["turns"]]
    cameras = [t.get("camera", "static") for t in info["turns"]]
    return frames, texts, cameras, mask_imgs


def cache_shard(shard_url: str, encoder: Any, text_format: str, masks: bool) -> tuple[dict[str, Any], int]:
    """Tensors for every session of one shard, and the number of sessions."""
    from vincie_cli.records import camera_tag
    from vincie_cli.sessions.shards import read_shard

    tensors: dict[str, Any] = {}
    n = 0
    for key, members in read_shard(shard_url):
        frames, texts, cameras, mask_imgs = _session_inputs(members, f"{shard_url}: {key}", masks)
        if text_format == "camera":
            texts = [camera_tag(c) + t for t, c in zip(texts, cameras)]
        latents = encoder.encode_images(frames + [img for _, _, img in mask_imgs])
        for i in range(len(frames)):
            tensors[f"{key}/latent/{i}"] = latents[i]
        for (k, side, _), z in zip(mask_imgs, latents[len(frames) :]):
            tensors[f"{key}/{side}_mask/{k}"] = z
        for k, e in enumerate(encoder.encode_texts(texts)):
            tensors[f"{key}/text/{k}"] = e
        n += 1
    return tensors, n


def build_cache(out_dir: str | Path, opts: CacheOptions, encoder: Any = None) -> Iterator[dict[str, Any]]:
    """Cache every finished shard of `out_dir` that has no cache file yet; yields one record per shard.

    Under `accelerate launch` each process takes every N-th shard and uses its own device.
    """
    from safetensors.torch import save_file

    if opts.text_format not in TEXT_FORMATS:
        raise UsageError(f"--cache-text {opts.text_format!r}: expected one of {', '.join(TEXT_FORMATS)}")
    out = Path(out_dir)
    index_path = out / "index.json"
    if not index_path.is_file():
        raise BadInputError(f"{out}: no index.json; build the shards first (vincie build-sessions ... -o {out})")
    shards = [row["name"] for row in json.loads(index_path.read_text())["shards"]]
    rank, world, device = 0, 1, opts.device
    try:
        from accelerate import PartialState

        state = PartialState()
        rank, world = state.process_index, state.num_processes
        if world > 1:
            device = str(state.device)
    except ImportError:
        pass
    if encoder is None:
        encoder = load_encoder(opts, device)
    identity = encoder.identity()
    cid = cache_id(identity, opts.resolution, opts.text_format)
    cdir = out / "cache" / cid
    info = {
        "format": CACHE_FORMAT,
        "cache_id": cid,
        "identity": identity,
        "resolution": opts.resolution,
        "text_format": opts.text_format,
        "dtype": opts.dtype,
        "masks": opts.masks,
    }
    if (cdir / "cache.json").is_file():
        have = json.loads((cdir / "cache.json").read_text())
        if canonical(have["identity"]) != canonical(identity):  # a hash collision: never mix two models
            raise VincieError(f"{cdir}: holds a cache of another model; remove it")
    elif rank == 0:
        atomic_write_json(cdir / "cache.json", info)
    for name in shards[rank::world]:
        target = cdir / f"{Path(name).stem}.safetensors"
        if target.is_file():
            continue
        t0 = time.time()
        tensors, n = cache_shard(str(out / name), encoder, opts.text_format, opts.masks)
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp), metadata={"shard": name, "sessions": str(n), "cache_id": cid})
        yield {
            "type": "cache",
            "shard": name,
            "cache_id": cid,
            "sessions": n,
            "path": str(target),
            "bytes": target.stat().st_size,
            "seconds": round(time.time() - t0, 3),
        }
