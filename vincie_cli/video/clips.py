"""Split a video into clips: shot cuts (PySceneDetect), black and frozen spans skipped, black borders cropped.

One streaming pass over small copies of the frames (`scan_size` px, thinned to `scan_fps`) gathers
everything: per-frame darkness, the difference to the previous scanned frame, row/column brightness
profiles for border detection, and PySceneDetect's content detector for hard cuts. Scanned frame i
stands for the span [t_i, t_i + one source frame); the time between two scanned frames on either
side of a boundary is given to neither side, so a clip never straddles a cut.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from vincie_cli.utils.io import UsageError
from vincie_cli.utils.log import get_logger
from vincie_cli.video.decode import VideoInfo, VideoReader

log = get_logger(__name__)

CutMode = Literal["auto", "scenedetect", "none"]
CUT_MODES = ("auto", "scenedetect", "none")


@dataclass
class ClipConfig:
    """How a video becomes clips. Luma levels are on the 0-255 scale."""

    cuts: CutMode = "auto"  # auto: PySceneDetect when installed; scenedetect: required; none: no cut detection
    cut_threshold: float = 27.0  # ContentDetector threshold (its default)
    min_duration: float = 1.0  # shorter clips are dropped (seconds)
    max_duration: float = 30.0  # longer spans are split into equal clips no longer than this
    scan_fps: float = 10.0  # analysis rate; 0 = every frame
    scan_size: int = 160  # analysis frames are downscaled to this longest side
    skip_black: bool = True
    black_level: float = 24.0  # a pixel darker than this is black
    black_fraction: float = 0.98  # a frame with at least this share of black pixels is black
    skip_frozen: bool = True
    frozen_diff: float = 0.25  # mean |luma difference| under which two scanned frames are the same picture
    frozen_min: float = 2.0  # a still picture must last this long (seconds) to be skipped
    crop_borders: bool = True
    border_level: float = 24.0  # a border row/column is darker than this in every frame of the clip

    def __post_init__(self) -> None:
        if self.cuts not in CUT_MODES:
            raise UsageError(f"cuts: expected one of {', '.join(CUT_MODES)}, got {self.cuts!r}")
        if not 0 < self.min_duration <= self.max_duration:
            raise UsageError(f"clip durations: need 0 < min ({self.min_duration}) <= max ({self.max_duration}) seconds")

    @property
    def needs_scan(self) -> bool:
        return self.cuts != "none" or self.skip_black or self.skip_frozen or self.crop_borders


@dataclass
class Clip:
    """A span of one shot. crop: (x0, y0, x1, y1) in display pixels of the full frame, or None."""

    start: float
    end: float
    crop: tuple[int, int, int, int] | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Segmentation:
    """What `find_clips` found. `duration`: the decodable length (may be shorter than the header's)."""

    clips: list[Clip]
    duration: float
    cuts: list[float] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {"start", "end", "reason"}

    def explain_empty(self, cfg: ClipConfig) -> str:
        """Why no clip survived, in one phrase."""
        if self.duration < cfg.min_duration:
            return (
                f"the video is {self.duration:.2f} s long, shorter than the minimum clip length {cfg.min_duration:g} s"
            )
        reasons: dict[str, float] = {}
        for d in self.dropped:
            reasons[d["reason"]] = reasons.get(d["reason"], 0.0) + d["end"] - d["start"]
        parts = ", ".join(f"{r} {s:.1f} s" for r, s in sorted(reasons.items(), key=lambda kv: -kv[1]))
        return f"no clip of at least {cfg.min_duration:g} s in {self.duration:.1f} s of video ({parts})"


_warned_no_scenedetect = False


def scenedetect_available() -> bool:
    try:
        import scenedetect  # noqa: F401
    except Exception:
        return False
    return True


def _make_detector(cfg: ClipConfig, rate: float) -> Any:
    """A ContentDetector, or None when cut detection is off (or unavailable under 'auto')."""
    global _warned_no_scenedetect
    if cfg.cuts == "none":
        return None
    if not scenedetect_available():
        if cfg.cuts == "scenedetect":
            raise UsageError("shot-cut detection needs PySceneDetect: pip install scenedetect (or pass --cuts none)")
        if not _warned_no_scenedetect:
            log.warning("PySceneDetect is not installed: clips are not split at shot cuts (pip install scenedetect)")
            _warned_no_scenedetect = True
        return None
    from scenedetect import ContentDetector

    return ContentDetector(threshold=cfg.cut_threshold, min_scene_len=max(1, int(round(0.25 * rate))))


class _CutFeeder:
    """Feeds frames to a PySceneDetect detector across its 0.6 (frame numbers) and 0.7 (timecodes) APIs."""

    def __init__(self, detector: Any, rate: float) -> None:
        self.detector = detector
        self.rate = rate
        params = list(inspect.signature(detector.process_frame).parameters)
        self.use_timecode = bool(params) and params[0] == "timecode"
        self.cuts: list[int] = []

    def _tc(self, i: int) -> Any:
        if not self.use_timecode:
            return i
        from scenedetect import FrameTimecode

        return FrameTimecode(i, fps=float(self.rate))

    def _add(self, found: list[Any]) -> None:
        for c in found or []:
            self.cuts.append(int(c) if isinstance(c, int | np.integer) else int(c.frame_num))

    def feed(self, i: int, rgb: np.ndarray) -> None:
        self._add(self.detector.process_frame(self._tc(i), np.ascontiguousarray(rgb[..., ::-1])))

    def finish(self, last: int) -> list[int]:
        self._add(self.detector.post_process(self._tc(last)))
        return sorted(set(c for c in self.cuts if c > 0))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + rgb[..., 2] * np.float32(0.114)


def _border(profile: np.ndarray, level: float) -> tuple[int, int]:
    """Leading and trailing counts of entries <= level."""
    dark = profile <= level
    n = len(dark)
    lead = int(np.argmin(dark)) if not dark.all() else n
    trail = int(np.argmin(dark[::-1])) if not dark.all() else n
    return lead, trail


def _crop_box(
    rows: np.ndarray, cols: np.ndarray, level: float, full: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Crop box in full-resolution pixels from the max-over-frames row/column profiles of the scan frames."""
    top, bottom = _border(rows, level)
    left, right = _border(cols, level)
    hs, ws = len(rows), len(cols)
    if top + bottom == 0 and left + right == 0:
        return None
    if top + bottom > hs // 2 or left + right > ws // 2:
        return None  # mostly dark picture, not borders
    w, h = full
    sy, sx = h / hs, w / ws
    # round inward so no border pixel survives
    y0, y1 = int(math.ceil(top * sy)), int(math.floor((hs - bottom) * sy))
    x0, x1 = int(math.ceil(left * sx)), int(math.floor((ws - right) * sx))
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return None
    return x0, y0, x1, y1


def split_span(start: float, end: float, cfg: ClipConfig) -> list[tuple[float, float]]:
    """[start, end) as equal pieces no longer than max_duration; nothing when shorter than min_duration."""
    length = end - start
    if length + 1e-9 < cfg.min_duration:
        return []
    k = max(1, math.ceil(length / cfg.max_duration - 1e-9))
    step = length / k
    return [(round(start + i * step, 6), round(start + (i + 1) * step, 6)) for i in range(k)]


def find_clips(reader: VideoReader, cfg: ClipConfig) -> Segmentation:
    """Clips of one video. Without any analysis enabled, the whole video split by duration (no decoding,
    unless the container does not tell the duration)."""
    info: VideoInfo = reader.info
    if not cfg.needs_scan and info.duration > 0:
        return Segmentation([Clip(s, e) for s, e in split_span(0.0, info.duration, cfg)], info.duration)

    src_fps = info.fps or 25.0
    rate = float(min(cfg.scan_fps, src_fps) if cfg.scan_fps and cfg.scan_fps > 0 else src_fps)
    feeder = None
    detector = _make_detector(cfg, rate)
    if detector is not None:
        feeder = _CutFeeder(detector, rate)

    times: list[float] = []
    black: list[bool] = []
    diffs: list[float] = []
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    prev: np.ndarray | None = None
    for i, frame in enumerate(reader.iter_frames(fps=rate, max_side=cfg.scan_size)):
        img = frame.image
        luma = _luma(img.astype(np.float32))
        times.append(frame.time)
        black.append(float((luma < cfg.black_level).mean()) >= cfg.black_fraction)
        diffs.append(float(np.abs(luma - prev).mean()) if prev is not None else math.inf)
        prev = luma
        if cfg.crop_borders:
            rows.append(luma.mean(axis=1).astype(np.uint8))
            cols.append(luma.mean(axis=0).astype(np.uint8))
        if feeder is not None:
            feeder.feed(i, img)
    n = len(times)
    if n == 0:
        return Segmentation([], 0.0)
    frame_dur = 1.0 / src_fps
    duration = times[-1] + frame_dur
    cut_idx = feeder.finish(n - 1) if feeder is not None else []
    cut_set = set(cut_idx)

    frozen = [False] * n
    if cfg.skip_frozen:
        i = 1
        while i < n:
            if diffs[i] < cfg.frozen_diff:
                j = i
                while j + 1 < n and diffs[j + 1] < cfg.frozen_diff and (j + 1) not in cut_set:
                    j += 1
                # frames i-1..j show one picture; keep its first appearance, drop the rest
                if times[j] + frame_dur - times[i - 1] >= cfg.frozen_min:
                    for k in range(i, j + 1):
                        frozen[k] = True
                i = j + 1
            else:
                i += 1
    bad = [(cfg.skip_black and black[i]) or frozen[i] for i in range(n)]

    dropped: list[dict[str, Any]] = []
    for i in range(n):
        if bad[i]:
            reason = "black" if cfg.skip_black and black[i] else "frozen"
            end = times[i] + frame_dur
            if dropped and dropped[-1]["reason"] == reason and dropped[-1]["last"] == i - 1:
                dropped[-1].update(end=end, last=i)
            else:
                dropped.append({"start": times[i], "end": end, "reason": reason, "last": i})
    for d in dropped:
        d.pop("last")

    clips: list[Clip] = []
    full = (info.width, info.height)

    def close_segment(a: int, b: int) -> None:
        start, end = times[a], times[b] + frame_dur
        pieces = split_span(start, end, cfg)
        if not pieces:
            dropped.append({"start": start, "end": end, "reason": "too short"})
        for s, e in pieces:
            crop = None
            if cfg.crop_borders:
                sel = [k for k in range(a, b + 1) if s - 1e-9 <= times[k] < e]
                if sel:
                    crop = _crop_box(
                        np.max(np.stack([rows[k] for k in sel]), axis=0),
                        np.max(np.stack([cols[k] for k in sel]), axis=0),
                        cfg.border_level,
                        full,
                    )
            clips.append(Clip(s, e, crop))

    seg_start: int | None = None
    for i in range(n):
        if seg_start is not None and (bad[i] or i in cut_set):
            close_segment(seg_start, i - 1)
            seg_start = None
        if not bad[i] and seg_start is None:
            seg_start = i
    if seg_start is not None:
        close_segment(seg_start, n - 1)
    dropped.sort(key=lambda d: d["start"])
    return Segmentation(clips, duration, [times[c] for c in cut_idx], dropped)
