"""The backend interface: turn frame-pair requests into raw model replies.

A backend only produces text; extraction, validation and retries live in the runner, so every
backend (a server, a local model, the synthetic oracle) gets the same treatment of its replies.
The runner calls `generate` from `concurrency` threads at once, with up to `batch_size` requests
per call.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vincie_cli.utils.io import VincieError


class FatalBackendError(VincieError):
    """A failure no retry or other input can fix (bad API key, unknown model, unreachable server): stop the run."""


@dataclass
class PairRequest:
    """One adjacent frame pair to annotate (one attempt)."""

    key: str  # "<clip_id>/<transition index>"
    images: tuple[Path, Path]  # frame files
    times: tuple[float, float]  # frame times in the source video (seconds)
    source: str  # absolute path of the source video
    caption: str | None = None  # the clip's caption from the manifest
    temperature: float = 0.2
    attempt: int = 0  # 0-based
    retry_reason: str | None = None  # why the previous attempt's reply was rejected


@dataclass
class Reply:
    """A model's raw reply, or the transport error that prevented one."""

    text: str | None = None
    error: str | None = None  # set when no reply could be obtained (after transport retries)
    requests: int = 1  # HTTP requests (or forward passes) spent
    usage: dict[str, int] = field(default_factory=dict)  # token counts, when the backend reports them


class Backend:
    name = "base"
    model = ""
    concurrency = 1  # generate() calls that may run at once
    batch_size = 1  # requests per generate() call

    def check_source(self, path: str) -> None:
        """Raise BadInputError if this backend cannot annotate videos from `path` (checked before decoding)."""

    def preload(self, path: Path, image: Any) -> None:
        """A frame just written to `path`, still in memory as a PIL image: encode it now if that saves
        reading it back (called from the decoding threads)."""

    def generate(self, requests: list[PairRequest]) -> list[Reply]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Settings recorded in each record's provenance (never secrets)."""
        return {}

    def close(self) -> None:
        pass


def _target(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    s = max_side / max(size)
    return max(1, round(size[0] * s)), max(1, round(size[1] * s))


def load_image(path: Path, max_side: int):
    """An RGB PIL image whose longer side is at most `max_side` (0: unchanged)."""
    from PIL import Image

    with Image.open(path) as im:
        if max_side and im.format == "JPEG" and max(im.size) > max_side:
            im.draft("RGB", _target(im.size, max_side))  # JPEG decodes at 1/2, 1/4 or 1/8 scale directly
        im = im.convert("RGB")
    return fit_image(im, max_side)


def fit_image(im: Any, max_side: int):
    """`im` (RGB PIL) downscaled so that its longer side is at most `max_side` (0: unchanged)."""
    from PIL import Image

    if max_side and max(im.size) > max_side:
        size = _target(im.size, max_side)
        # reducing_gap: a fast box reduction first, then bicubic over the last factor of 2 (same look, ~3x faster)
        im = im.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    return im


def encode_image(im: Any, fmt: str = "jpeg", quality: int = 90) -> tuple[bytes, str]:
    """(bytes, mime type) of a PIL image."""
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), "image/png"
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), "image/jpeg"
