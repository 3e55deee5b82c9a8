"""Chain-of-editing control frames (paper §3.3, E.4, E.5): change masks as images.

A change mask is an RGB frame, white where the edit changes the image and black elsewhere, encoded by the
VAE like any image. `--chain` makes the model paint the current mask (what will change) and/or the next mask
(where the changed content will be) before the edited image; `--mask FILE` supplies the next mask;
`--drag DX,DY[,SCALE[,ANGLE]]` moves the predicted current mask to make the next mask.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vincie_cli.edit.settings import Drag
from vincie_cli.model.images import load_image, preprocess
from vincie_cli.utils.io import BadInputError


def binarize(x: Tensor) -> Tensor:
    """(3, H, W) image in ~[-1, 1] (or (H, W)) -> (H, W) bool: white where the mean over colours is above mid-grey."""
    if x.ndim == 3:
        x = x.float().mean(0)
    return x > 0


def mask_image(mask: Tensor) -> Tensor:
    """(H, W) bool -> (3, H, W) fp32 in {-1, 1}: the RGB frame the model reads."""
    return mask.float().mul(2).sub(1)[None].expand(3, -1, -1).contiguous()


def mask_png(mask: Tensor) -> np.ndarray:
    """(H, W) bool -> (H, W, 3) uint8, white on black."""
    a = mask.cpu().numpy().astype(np.uint8) * 255
    return np.repeat(a[..., None], 3, axis=-1)


def load_mask(
    path: str | os.PathLike,
    frame_size: tuple[int, int],
    original_size: tuple[int, int],
    resolution: int,
    aspect: str = "keep_ratio",
) -> Tensor:
    """Read a user-supplied next-frame mask as (H, W) bool at the session's frame size.

    The file must have the session's frame size (W, H) (the size of the turn images) or the first input's
    original size (then it goes through the same resize and crop as that image). White (or any bright value)
    marks the region; transparency counts as black.
    """
    img = _load_mask_image(path)
    if img.size == tuple(frame_size):
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
        return binarize(x)
    if img.size == tuple(original_size):
        x = preprocess(img.convert("RGB"), resolution, aspect, name=str(path))
        if tuple(x.shape[-2:]) != (frame_size[1], frame_size[0]):
            raise BadInputError(f"{path}: mask does not map onto the {frame_size[0]}x{frame_size[1]} frame")
        return binarize(x)
    raise BadInputError(
        f"{path}: mask is {img.size[0]}x{img.size[1]} px; expected {frame_size[0]}x{frame_size[1]} (the size of "
        f"the edited images) or {original_size[0]}x{original_size[1]} (the first input image)"
    )


def _load_mask_image(path: str | os.PathLike) -> Image.Image:
    """Greyscale 'L' image of a mask file; alpha (if any) multiplies the grey so transparent areas are black."""
    rgb = load_image(path)  # validates the file; composites alpha on white
    with Image.open(path) as raw:
        if raw.mode in ("RGBA", "LA", "PA") or (raw.mode == "P" and "transparency" in raw.info):
            from PIL import ImageOps

            alpha = ImageOps.exif_transpose(raw.convert("RGBA")).getchannel("A")
            grey = np.asarray(rgb.convert("L"), dtype=np.float32) * (np.asarray(alpha, dtype=np.float32) / 255)
            return Image.fromarray(grey.round().astype(np.uint8), mode="L")
    return rgb.convert("L")


def drag_mask(mask: Tensor, drag: Drag) -> Tensor:
    """Move a (H, W) bool mask: scale and rotate about its centroid, then translate; nearest-pixel sampling.

    A pixel p of the result is set when the source pixel c + R(-angle)·(p − c − t)/scale is set, with c the
    centroid, t = (dx, dy) and `angle` counter-clockwise as seen on screen (y points down).
    """
    if mask.ndim != 2:
        raise BadInputError(f"a mask must be (H, W), got shape {tuple(mask.shape)}")
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        raise BadInputError(
            "--drag: the predicted current mask is empty (the model marked no region to change), so there is "
            "nothing to move; rephrase the instruction or pass the next mask with --mask FILE"
        )
    h, w = mask.shape
    cy, cx = ys.double().mean(), xs.double().mean()
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    px, py = gx - cx - drag.dx, gy - cy - drag.dy
    a = math.radians(drag.angle)
    # inverse of the on-screen counter-clockwise rotation x' = cos·x + sin·y, y' = −sin·x + cos·y
    sx = (math.cos(a) * px - math.sin(a) * py) / drag.scale + cx
    sy = (math.sin(a) * px + math.cos(a) * py) / drag.scale + cy
    ix, iy = torch.round(sx).long(), torch.round(sy).long()
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    out = torch.zeros_like(mask)
    out[inside] = mask[iy[inside], ix[inside]]
    return out
