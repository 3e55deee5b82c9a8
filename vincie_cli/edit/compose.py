"""Input images of a session: loading, checks, the release's preprocessing, and fitting several inputs into one
frame size.

The released layout stacks every frame of a session in time, so all frames share one latent size: the first
input image fixes it (area resize to resolution², crop to multiples of 16, reference §8.1). Inputs 2.. are
brought to that frame (`fit`):
- "pad" (default): scaled to fit inside the frame with the aspect ratio kept, centred on mid-grey. Nothing is
  distorted or cut off.
- "crop": scaled to cover the frame with the aspect ratio kept, then centre-cropped. Nothing is distorted,
  the borders of the longer side are lost.
- "stretch": the release's behaviour: PIL-resized (bicubic) to the first image's original size, then the
  same chain as the first image, which distorts images of another aspect ratio.

Generated frames that come back from PNG (`roundtrip="png"`) go through the release's path: PIL-resized to
the first input's original size, then the same chain (`reload_frame`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from vincie_cli.edit.settings import EditSettings
from vincie_cli.model.images import load_image, preprocess, resize_bicubic, resize_like_first, to_tensor
from vincie_cli.utils.io import BadInputError

PAD_VALUE = 0.5  # mid-grey in [0, 1] (0 after normalisation)


@dataclass
class PreparedInputs:
    """The session's input images as model-ready tensors.

    tensors: per input (3, H, W) fp32 in ~[-1, 1], all the same size. original_size: (W, H) of the first
    input after EXIF orientation (generated PNGs are resized to it on reload, as the release does).
    """

    tensors: list[Tensor]
    original_size: tuple[int, int]
    sources: list[Path]

    @property
    def frame_size(self) -> tuple[int, int]:
        """(W, H) of every frame of the session."""
        h, w = self.tensors[0].shape[-2:]
        return int(w), int(h)


def open_input(path: str | os.PathLike, settings: EditSettings) -> Image.Image:
    """Read one input image as RGB (EXIF orientation, alpha on white, CMYK / 16-bit / palette converted) and
    enforce the size limits, naming the file in every error."""
    img = load_image(path, max_pixels=settings.max_input_pixels)
    w, h = img.size
    if min(w, h) < settings.min_image_side:
        raise BadInputError(
            f"{path}: image too small ({w}x{h} px); need at least {settings.min_image_side} px on each side"
        )
    return img


def prepare_inputs(paths: list[str | os.PathLike], settings: EditSettings) -> PreparedInputs:
    """Load and preprocess the session's input images (see the module docstring for `fit`)."""
    if not paths:
        raise BadInputError("no input image given")
    images = [open_input(p, settings) for p in paths]
    first = preprocess(images[0], settings.resolution, settings.aspect, name=str(paths[0]))
    tensors = [first]
    h, w = first.shape[-2:]
    for path, img in zip(paths[1:], images[1:]):
        tensors.append(fit_image(img, (int(h), int(w)), settings, images[0].size, name=str(path)))
    return PreparedInputs(tensors, images[0].size, [Path(p) for p in paths])


def fit_image(
    img: Image.Image,
    frame_hw: tuple[int, int],
    settings: EditSettings,
    first_size: tuple[int, int],
    name: str = "image",
) -> Tensor:
    """Bring a later input image to the frame size (H, W): (3, H, W) in ~[-1, 1]."""
    h, w = frame_hw
    if settings.fit == "stretch":
        x = preprocess(resize_like_first(img, first_size), settings.resolution, settings.aspect, name=name)
    else:
        x = to_tensor(img)
        ih, iw = x.shape[-2:]
        if settings.fit == "pad":
            s = min(h / ih, w / iw)
            size = (max(1, min(h, round(ih * s))), max(1, min(w, round(iw * s))))
            x = resize_bicubic(x, size)
            canvas = torch.full((3, h, w), PAD_VALUE, dtype=x.dtype)
            top, left = (h - size[0]) // 2, (w - size[1]) // 2
            canvas[:, top : top + size[0], left : left + size[1]] = x
            x = canvas
        else:  # crop
            s = max(h / ih, w / iw)
            size = (max(h, round(ih * s)), max(w, round(iw * s)))
            x = resize_bicubic(x, size)
            top, left = (size[0] - h) // 2, (size[1] - w) // 2
            x = x[:, top : top + h, left : left + w]
        x = x.sub(0.5).div(0.5)
    if tuple(x.shape[-2:]) != (h, w):
        raise BadInputError(
            f"{name}: becomes {x.shape[-1]}x{x.shape[-2]} px, not the session's frame size {w}x{h} "
            f"(use --fit pad or --fit crop for inputs of other aspect ratios)"
        )
    return x


def reload_frame(
    path: str | os.PathLike, original_size: tuple[int, int], frame_hw: tuple[int, int], settings
) -> Tensor:
    """A generated frame read back from its PNG, as the release feeds it to the next round: PIL bicubic resize
    to the first input's original size, then the preprocessing chain. (3, H, W) in ~[-1, 1]."""
    img = load_image(path)
    x = preprocess(resize_like_first(img, original_size), settings.resolution, settings.aspect, name=str(path))
    if tuple(x.shape[-2:]) != tuple(frame_hw):
        raise BadInputError(
            f"{path}: preprocesses to {x.shape[-1]}x{x.shape[-2]} px, not the session's frame size "
            f"{frame_hw[1]}x{frame_hw[0]}"
        )
    return x
