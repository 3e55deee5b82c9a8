"""Region-of-edit masks on disk: bool (H, W) arrays as 1-bit PNGs (white = the region), part of the record contract."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from vincie_cli.utils.io import BadInputError, atomic_write_bytes


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A bool (H, W) mask as 1-bit PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).convert("1").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def decode_mask_png(data: bytes, where: str = "mask") -> np.ndarray:
    """PNG bytes (1-bit, grey or RGB; anything > 127 counts as inside) as a bool (H, W) mask."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadInputError(f"{where}: not a readable image ({e})") from None
    if img.mode == "1":
        return np.asarray(img, dtype=bool)
    return np.asarray(img.convert("L")) > 127


def save_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a bool (H, W) mask as a 1-bit PNG atomically."""
    atomic_write_bytes(path, encode_mask_png(mask))


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask PNG; with `shape` = (H, W), a mask of another size is a BadInputError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: mask file not found")
    mask = decode_mask_png(p.read_bytes(), str(p))
    if shape is not None and mask.shape != tuple(shape):
        raise BadInputError(f"{p}: mask is {mask.shape[1]}x{mask.shape[0]}, the frame is {shape[1]}x{shape[0]}")
    return mask
