"""The session record: what one training sample is, and how it is stored as tar members.

A session is K+1 frames of one source and K turns (frame k -> frame k+1), each with an instruction
text, a camera motion and optional RoE masks of its source and target frame. In a shard, session
`<key>` is a group of consecutive tar members (WebDataset convention: key = name up to the first dot):

    <key>.json               metadata, see SESSION_FORMAT below
    <key>.frame000.<ext>     frames 0..K, ext = png | jpg | webp
    <key>.roe000.src.png     1-bit RoE mask of turn 0's source frame (only when the turn has one)
    <key>.roe000.dst.png     1-bit RoE mask of turn 0's target frame

    <key>.json = {
      "format": "vincie-session/1", "key": "...", "clip_id": "...", "kind": "video|pairwise|vincie10m",
      "split": "train|val", "content_hash": "<sha256 of the frame members>",
      "frames": [{"member": "frame000.png", "width": 256, "height": 256, "time": 0.5}, ...],
      "turns": [{"src": 0, "dst": 1, "text": "...", "camera": "static", "roe_rule": "entities",
                 "src_mask": "roe000.src.png" | null, "dst_mask": "roe000.dst.png" | null,
                 "src_coverage": 0.04 | null, "dst_coverage": 0.05 | null, "changes": ["move"],
                 "annotation": {...normalised annotation...} | null, "roe": {...segment's entry...} | null}],
      "meta": {"dataset": "video", "source": "videos/a.mp4", "clip_id": "...", "frame_times": [...], ...}}
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from vincie_cli.records import camera_tag
from vincie_cli.utils.io import BadInputError
from vincie_cli.utils.masks import decode_mask_png

SESSION_FORMAT = "vincie-session/1"
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
SUFFIX_RE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")


@dataclass
class Session:
    """One decoded training session (see the module docstring for the stored form)."""

    key: str
    frames: list[np.ndarray]  # uint8 (H, W, 3), K+1 frames
    texts: list[str]  # K per-turn instructions (summary_change)
    cameras: list[str]  # K camera motions (records.CAMERA_MOTIONS)
    src_masks: list[np.ndarray | None]  # K bool (H, W) RoE masks of each turn's source frame
    dst_masks: list[np.ndarray | None]  # K bool (H, W) RoE masks of each turn's target frame
    roe_rules: list[str]
    meta: dict[str, Any]
    cache: dict[str, Any] | None = None

    @property
    def num_turns(self) -> int:
        return len(self.texts)

    def tagged_texts(self) -> list[str]:
        """Turn texts with the camera tag prepended, as the released model was trained."""
        return [camera_tag(c) + t for t, c in zip(self.texts, self.cameras)]


def frame_member(i: int, ext: str) -> str:
    return f"frame{i:03d}.{ext}"


def mask_member(turn: int, side: str) -> str:
    return f"roe{turn:03d}.{side}.png"


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadInputError(f"{where}: not a readable image ({e})") from None


def resize_max(img: np.ndarray, max_side: int | None, nearest: bool = False) -> np.ndarray:
    """Shrink an (H, W[, 3]) array so its longer side is at most `max_side`, keeping the aspect ratio."""
    if max_side is None or max(img.shape[:2]) <= max_side:
        return img
    from PIL import Image

    h, w = img.shape[:2]
    size = target_size(w, h, max_side)
    if img.dtype == bool:
        return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.NEAREST), dtype=bool)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(img).resize(size, resample))


def target_size(w: int, h: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) after shrinking so that max(w, h) <= max_side (unchanged when already small enough)."""
    if max_side is None or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def decode_session(
    key: str, members: dict[str, bytes], where: str, max_resolution: int | None = None
) -> tuple[Session, dict[str, Any]]:
    """Tar members of one session -> (Session, its metadata JSON). Frames/masks are shrunk to
    `max_resolution` (longer side) when given; masks always match their frame's size."""
    if "json" not in members:
        raise BadInputError(f"{where}: session {key} has no {key}.json member")
    try:
        info = json.loads(members["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{where}: {key}.json is not valid JSON ({e})") from None
    if info.get("format") != SESSION_FORMAT:
        raise BadInputError(f"{where}: {key}.json has format {info.get('format')!r}, expected {SESSION_FORMAT}")
    frames = []
    for fr in info["frames"]:
        data = members.get(fr["member"])
        if data is None:
            raise BadInputError(f"{where}: session {key} lacks member {key}.{fr['member']}")
        img = decode_image(data, f"{where}: {key}.{fr['member']}")
        if img.shape[:2] != (fr["height"], fr["width"]):
            raise BadInputError(
                f"{where}: {key}.{fr['member']} is {img.shape[1]}x{img.shape[0]}, the index says "
                f"{fr['width']}x{fr['height']}"
            )
        frames.append(resize_max(img, max_resolution))
    src_masks: list[np.ndarray | None] = []
    dst_masks: list[np.ndarray | None] = []
    for turn in info["turns"]:
        for side, out in (("src", src_masks), ("dst", dst_masks)):
            name = turn.get(f"{side}_mask")
            if not name:
                out.append(None)
                continue
            data = members.get(name)
            if data is None:
                raise BadInputError(f"{where}: session {key} lacks member {key}.{name}")
            mask = decode_mask_png(data, f"{where}: {key}.{name}")
            frame = frames[turn[side]]
            if mask.shape != frame.shape[:2]:
                mask = resize_max(mask, max(frame.shape[:2]))
            if mask.shape != frame.shape[:2]:
                raise BadInputError(f"{where}: {key}.{name} does not match the size of frame {turn[side]}")
            out.append(mask)
    meta = dict(info.get("meta") or {})
    meta.setdefault("clip_id", info.get("clip_id"))
    meta.setdefault("dataset", info.get("kind"))
    meta["split"] = info.get("split")
    meta["annotations"] = [t.get("annotation") for t in info["turns"]]
    session = Session(
        key=key,
        frames=frames,
        texts=[t["text"] for t in info["turns"]],
        cameras=[t.get("camera", "static") for t in info["turns"]],
        src_masks=src_masks,
        dst_masks=dst_masks,
        roe_rules=[t.get("roe_rule", "none") for t in info["turns"]],
        meta=meta,
    )
    return session, info
