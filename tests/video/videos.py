"""Small test videos written with PyAV: frame indices encoded in pixels, cuts, black spans, borders, rotation, VFR."""

from __future__ import annotations

import fractions
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

BITS = 8  # frame index encoded in 8 blocks along the top row (0..255)


def index_image(i: int, w: int = 64, h: int = 48, base: int = 0) -> np.ndarray:
    """A frame whose top row of 8 blocks spells `i` in binary; a red marker at the top-left corner.

    The marker sits under the bit blocks' row (rows h/6..h/3, left quarter) so rotation is visible.
    """
    img = np.full((h, w, 3), base, np.uint8)
    bw = w // BITS
    bh = max(h // 6, 4)
    for b in range(BITS):
        if (i >> b) & 1:
            img[:bh, b * bw : (b + 1) * bw] = 255
    img[bh : 2 * bh, : w // 4] = (255, 0, 0)
    return img


def read_index(img: np.ndarray) -> int:
    """Inverse of `index_image` on a decoded (display-orientation, unrotated) frame."""
    h, w = img.shape[:2]
    bw = w // BITS
    bh = max(h // 6, 4)
    value = 0
    for b in range(BITS):
        block = img[1 : bh - 1, b * bw + 1 : (b + 1) * bw - 1].astype(np.float32).mean()
        if block > 128:
            value |= 1 << b
    return value


def write_video(
    path: str | Path,
    num_frames: int = 48,
    fps: int = 24,
    size: tuple[int, int] = (64, 48),
    frame_fn: Callable[[int], np.ndarray] | None = None,
    rotation: int | None = None,
    pts_ms: Sequence[int] | None = None,
    faststart: bool = False,
    gop: int = 12,
) -> Path:
    """Write an H.264 mp4. `frame_fn(i)` gives frame i (uint8 HxWx3), default `index_image`.

    pts_ms: explicit presentation times in milliseconds (variable frame rate).
    rotation: counter-clockwise display rotation stored in the container's display matrix.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    frame_fn = frame_fn or (lambda i: index_image(i, w, h))
    options = {"movflags": "faststart"} if faststart else {}
    container = av.open(str(path), "w", options=options)
    stream = container.add_stream("libx264", rate=fps, options={"g": str(gop), "crf": "18", "preset": "ultrafast"})
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    if rotation is not None:
        stream.set_display_rotation(rotation)
    if pts_ms is not None:
        tb = fractions.Fraction(1, 1000)
        stream.codec_context.time_base = tb
        stream.time_base = tb
    n = len(pts_ms) if pts_ms is not None else num_frames
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(frame_fn(i), format="rgb24")
        if pts_ms is not None:
            frame.pts = int(pts_ms[i])
            frame.time_base = fractions.Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path
