"""Image loading, the release's preprocessing chain, and the output conversion.

Preprocessing (per image, after `load_image`): to float [0, 1] CHW -> optional aspect-ratio centre crop ->
area resize to `resolution`² pixels (bicubic, antialiased, `F.interpolate`, no clamping, sizes rounded
with Python `round`) -> centre crop to multiples of 16 (offsets rounded half-to-even) -> 2x − 1.
Later images of a session are first PIL-resized (bicubic) to the first image's size (`resize_like_first`).
Output: clip to [−1, 1], ·0.5 + 0.5, ·255 in bf16, then truncation to uint8 (`postprocess`).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from vincie_cli.utils.io import BadInputError, UsageError

ASPECT_RATIOS = ("16:9", "4:3", "1:1", "3:4", "9:16")
ADAPTIVE_CANDIDATES = ("9:16", "1:1", "16:9")
CROP_MULTIPLE = 16  # VAE factor 8 x patch 2
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Read an image file as 8-bit RGB.

    EXIF orientation is applied. Transparent images (RGBA, LA, palette with transparency) are composited
    on white; CMYK and other colour spaces are converted; 16-bit greyscale is scaled to 8 bits (/257).
    max_pixels: refuse images with more pixels (checked from the header, before decoding).
    Raises BadInputError naming the file for missing, unreadable, truncated or non-image files.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if max_pixels is not None and w * h > max_pixels:
                    raise BadInputError(f"{path}: image is {w}x{h} = {w * h} pixels, more than the limit {max_pixels}")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except BadInputError:
        raise
    except UnidentifiedImageError:
        raise BadInputError(f"{path}: not an image file (or an unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadInputError(f"{path}: image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInputError(f"{path}: truncated or corrupt image ({e})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if mode != "F" or a.max(initial=0) > 255:
            a = a / 257.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode in ("RGBa", "La", "PA", "LA"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")


def to_tensor(img: Image.Image) -> Tensor:
    """PIL RGB -> (3, H, W) float32 in [0, 1] (uint8 / 255, as torchvision's ToTensor)."""
    a = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous().float().div(255)


def aspect_crop_box(height: int, width: int, ratio: str) -> tuple[int, int, int, int]:
    """Centre box (top, bottom, left, right) of the largest "w:h" crop, with the release's rounding."""
    try:
        rw, rh = (float(r) for r in ratio.split(":"))
    except ValueError:
        raise UsageError(f"aspect ratio must look like 'W:H', got {ratio!r}") from None
    if height / width >= rh / rw:
        delta = (height - width * rh / rw) / 2
        return int(delta), int(height - delta), 0, width
    delta = (width - height / rh * rw) / 2
    return 0, height, int(delta), int(width - delta)


def aspect_crop(x: Tensor, aspect: str = "keep_ratio", candidates: tuple[str, ...] = ADAPTIVE_CANDIDATES) -> Tensor:
    """Aspect-ratio crop of (C, H, W): "keep_ratio" (identity), a fixed "w:h", or "adaptive" (largest area wins)."""
    h, w = x.shape[-2:]
    if aspect == "keep_ratio":
        return x
    if aspect == "adaptive":
        best, best_area = None, -1
        for r in candidates:
            t, b, le, ri = aspect_crop_box(h, w, r)
            if (b - t) * (ri - le) > best_area:
                best, best_area = (t, b, le, ri), (b - t) * (ri - le)
        t, b, le, ri = best
    elif aspect in ASPECT_RATIOS:
        t, b, le, ri = aspect_crop_box(h, w, aspect)
    else:
        choices = ", ".join(ASPECT_RATIOS)
        raise UsageError(f"aspect must be 'keep_ratio', 'adaptive' or one of {choices}; got {aspect!r}")
    return x[:, t:b, le:ri]


def area_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(H, W) scaled to about resolution² pixels, aspect kept, each side rounded half-to-even."""
    s = math.sqrt(resolution * resolution / (height * width))
    return round(height * s), round(width * s)


def resize_bicubic(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bicubic resize of float (C, H, W) with no clamping (torchvision's tensor path)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0]


def center_crop(x: Tensor, height: int, width: int) -> Tensor:
    h, w = x.shape[-2:]
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return x[..., top : top + height, left : left + width]


def preprocess(
    img: Image.Image | Tensor,
    resolution: int = 256,
    aspect: str = "keep_ratio",
    *,
    candidates: tuple[str, ...] = ADAPTIVE_CANDIDATES,
    max_pixels: int | None = None,
    name: str = "image",
) -> Tensor:
    """The release's image transform: PIL RGB (or float (3, H, W) in [0, 1]) -> (3, H', W') fp32 in ~[−1, 1].

    H', W' are multiples of 16 and H'·W' ≈ resolution². max_pixels: refuse larger sources. `name` is used
    in error messages (e.g. the file path).
    """
    x = to_tensor(img) if isinstance(img, Image.Image) else img.float()
    h0, w0 = x.shape[-2:]
    if max_pixels is not None and h0 * w0 > max_pixels:
        raise BadInputError(f"{name}: image is {w0}x{h0} = {h0 * w0} pixels, more than the limit {max_pixels}")
    if h0 < 1 or w0 < 1:
        raise BadInputError(f"{name}: empty image ({w0}x{h0})")
    x = aspect_crop(x, aspect, candidates)
    h, w = area_size(x.shape[-2], x.shape[-1], resolution)
    ch, cw = h - h % CROP_MULTIPLE, w - w % CROP_MULTIPLE
    if ch < CROP_MULTIPLE or cw < CROP_MULTIPLE:
        raise BadInputError(
            f"image too small: {name} is {w0}x{h0} px; after resizing to area {resolution}² it is {w}x{h} px; "
            f"need at least {CROP_MULTIPLE}x{CROP_MULTIPLE}"
        )
    x = resize_bicubic(x, (h, w))
    x = center_crop(x, ch, cw)
    return x.sub(0.5).div(0.5)


def resize_like_first(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize a later session image to the first image's (W, H) with PIL bicubic, as the release does."""
    if img.size == tuple(size):
        return img.copy()
    return img.resize(tuple(size), Image.Resampling.BICUBIC)


def postprocess(x: Tensor, dtype: torch.dtype = torch.bfloat16) -> np.ndarray:
    """Decoded (3, H, W) in ~[−1, 1] -> uint8 (H, W, 3).

    dtype=bfloat16 (default) reproduces the release bit for bit: clip, ·0.5, +0.5, ·255 in bf16, then
    truncation. dtype=float32 gives the more accurate fp32 chain (still truncating).
    """
    if x.ndim != 3 or x.shape[0] != 3:
        raise BadInputError(f"expected a (3, H, W) image tensor, got shape {tuple(x.shape)}")
    y = x.detach().to(dtype).clip(-1, 1).mul(0.5).add(0.5).mul(255)
    return y.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
