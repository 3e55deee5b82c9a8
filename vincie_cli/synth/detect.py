"""Is an image a synthetic-world scene? Used to decide whether the packaged `mini` model may edit it.

A scene is a low-chroma background (solid, a gradient between two background colours, or a low-contrast
texture) with objects in the saturated palette colours and white/black outlines. Nearly every pixel of such
a frame lies close to one of those colours or to the line between two background colours; photographs,
drawings and renders of other worlds do not.
"""

from __future__ import annotations

import itertools

import numpy as np

from vincie_cli.synth.render import TEXTURE_CONTRAST
from vincie_cli.synth.world import BACKGROUND_COLOURS, OUTLINE_COLOURS, PALETTE

# Distance (RGB levels) within which a pixel counts as one of the world's colours; generous enough for
# H.264, JPEG and anti-aliased edges, far below the distance of typical photo colours.
TOLERANCE = 30.0 + TEXTURE_CONTRAST
MIN_EXPLAINED = 0.85  # share of pixels that must be explained


def _segment_distance(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each pixel (N, 3) to the RGB segment a-b."""
    ab = b - a
    t = np.clip(((px - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return np.linalg.norm(px - (a + t[:, None] * ab), axis=1)


def explained_fraction(image) -> float:
    """Share of pixels (on a 64x64 thumbnail) near a world colour or a background gradient."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.open(image)
    thumb = img.convert("RGB").resize((64, 64), Image.Resampling.BOX)
    px = np.asarray(thumb, dtype=np.float64).reshape(-1, 3)
    points = np.array([*PALETTE.values(), *BACKGROUND_COLOURS.values(), *OUTLINE_COLOURS.values()], float)
    dist = np.linalg.norm(px[:, None, :] - points[None], axis=2).min(axis=1)
    bgs = [np.array(c, float) for c in BACKGROUND_COLOURS.values()]
    for a, b in itertools.combinations(bgs, 2):
        dist = np.minimum(dist, _segment_distance(px, a, b))
    return float((dist <= TOLERANCE).mean())


def looks_synthetic(image) -> bool:
    """True when `image` (a path or a PIL image) looks like a frame of the synthetic world."""
    return explained_fraction(image) >= MIN_EXPLAINED
