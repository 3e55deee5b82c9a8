"""The paper's hybrid frame sampling: equal-interval and fixed-count sampling of a clip, then dropping
(nearly) identical neighbours.

- interval: one frame every `interval` seconds, the grid centred in the clip (at most `max_frames`;
  a longer clip gets an evenly stretched grid of `max_frames`);
- fixed: n frames (n drawn from `num_frames`, 2 <= n <= 6) at the centres of n equal parts of the clip;
- hybrid: per clip, fixed with probability `fixed_prob`, else interval (fixed as well when the clip
  holds fewer than two intervals' frames). The draw is a pure function of the clip id and the seed,
  so re-runs and shards pick the same frames.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vincie_cli.utils.io import BadInputError, UsageError, stable_hash_int

SamplingMode = Literal["hybrid", "interval", "fixed"]
SAMPLING_MODES = ("hybrid", "interval", "fixed")


@dataclass
class SamplingConfig:
    mode: SamplingMode = "hybrid"
    interval: float = 2.0  # seconds between frames (interval mode)
    num_frames: tuple[int, int] = (2, 6)  # inclusive range of n (fixed mode)
    fixed_prob: float = 0.5  # hybrid: probability of fixed-count sampling
    max_frames: int = 20  # at most this many frames per session
    margin: float = 0.1  # keep this far (seconds) from the clip's ends
    min_change: float = 0.5  # % of the picture that must change for two adjacent frames to differ
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in SAMPLING_MODES:
            raise UsageError(f"sampling: expected one of {', '.join(SAMPLING_MODES)}, got {self.mode!r}")
        lo, hi = self.num_frames
        if not 2 <= lo <= hi <= 6:
            raise UsageError(f"--num-frames {lo}-{hi}: need 2 <= n <= 6 (the paper's fixed-frame sampling)")
        if self.interval <= 0:
            raise UsageError(f"--interval {self.interval}: must be positive")
        if not 2 <= self.max_frames <= 20:
            raise UsageError(f"--max-frames {self.max_frames}: sessions hold 2 to 20 frames")
        if not 0.0 <= self.fixed_prob <= 1.0:
            raise UsageError(f"--fixed-prob {self.fixed_prob}: must be within [0, 1]")


def parse_frame_range(text: str) -> tuple[int, int]:
    """'4' -> (4, 4); '2-6' -> (2, 6)."""
    try:
        if "-" in text:
            a, b = text.split("-", 1)
            return int(a), int(b)
        return int(text), int(text)
    except ValueError:
        raise UsageError(f"--num-frames {text!r}: expected N or LO-HI, e.g. 4 or 2-6") from None


def interval_times(start: float, end: float, cfg: SamplingConfig) -> list[float]:
    """Equal-interval times in [start + margin, end - margin], centred; [] if fewer than 2 fit."""
    lo, hi = start + cfg.margin, end - cfg.margin
    span = hi - lo
    if span < cfg.interval - 1e-9:
        return []
    n = int(math.floor(span / cfg.interval + 1e-9)) + 1
    step = cfg.interval
    if n > cfg.max_frames:
        n, step = cfg.max_frames, span / (cfg.max_frames - 1)
    offset = (span - (n - 1) * step) / 2
    return [round(lo + offset + k * step, 6) for k in range(n)]


def fixed_times(start: float, end: float, n: int) -> list[float]:
    """n times at the centres of n equal parts of [start, end)."""
    length = end - start
    return [round(start + (k + 0.5) * length / n, 6) for k in range(n)]


def sample_times(start: float, end: float, cfg: SamplingConfig, key: str) -> tuple[str, list[float]]:
    """(the mode used, frame times) for the clip [start, end) whose id is `key`.

    Raises BadInputError when the clip is too short for the mode (interval mode: shorter than one
    sampling interval).
    """
    rng = random.Random(stable_hash_int(f"{key}|{cfg.seed}"))
    draw = rng.random()
    n = rng.randint(*cfg.num_frames)
    mode = cfg.mode
    if mode == "hybrid":
        mode = "fixed" if draw < cfg.fixed_prob else "interval"
    if mode == "interval":
        times = interval_times(start, end, cfg)
        if times or cfg.mode == "interval":
            if not times:
                raise BadInputError(
                    f"the clip is {end - start:.2f} s long, shorter than one sampling interval "
                    f"({cfg.interval:g} s plus {cfg.margin:g} s margins)"
                )
            return "interval", times
        mode = "fixed"
    return "fixed", fixed_times(start, end, n)


def _small_gray(img: np.ndarray, side: int = 64) -> np.ndarray:
    h, w = img.shape[:2]
    sy, sx = max(1, h // side), max(1, w // side)
    g = img[: h - h % sy, : w - w % sx].astype(np.float32).mean(axis=2)
    return g.reshape(g.shape[0] // sy, sy, g.shape[1] // sx, sx).mean(axis=(1, 3))


def frame_difference(a: np.ndarray, b: np.ndarray, level: float = 12.0) -> float:
    """Share (%) of the picture that changed between two RGB frames.

    Computed on block-averaged grey copies (about 64 px across), where a position counts as changed
    when it differs by more than `level` (0-255): codec noise and grain stay below it, while a
    small object that moves changes a few percent of the positions.
    """
    return float((np.abs(_small_gray(a) - _small_gray(b)) > level).mean() * 100.0)


def drop_static(images: list[np.ndarray], min_change: float) -> list[int]:
    """Indices of the frames to keep: each kept frame changed >= min_change % from the previously kept one."""
    if not images:
        return []
    keep = [0]
    for i in range(1, len(images)):
        if frame_difference(images[keep[-1]], images[i]) >= min_change:
            keep.append(i)
    return keep
