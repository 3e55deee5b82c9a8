"""Frame-accurate video decoding: decord where it is reliable, PyAV everywhere else.

Time convention: every time is in seconds from the start of the first frame (its pts is 0), and
"the frame at t" is the frame *displayed* at t, i.e. the last frame whose pts <= t. This holds for
constant and variable frame rate alike, because frames are located by their pts, never by
`t * fps`. Frames come back as uint8 RGB arrays (H, W, 3) in display orientation: the container's
rotation (display matrix) is applied here, since neither library does it correctly on its own
(decord returns garbage for 90-degree rotations, PyAV ignores them).

Nothing loads a whole video: `frames_at` seeks to the keyframe before each requested time and
decodes forward (continuing without a seek when the next request is close ahead), and `iter_frames`
streams.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vincie_cli.utils.io import BadInputError
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)

Decoder = Literal["auto", "decord", "pyav"]
DECODERS = ("auto", "decord", "pyav")

# Half a microsecond of slack when comparing a requested time with a pts, so that t = i / fps
# computed in floating point still selects frame i.
_EPS = 5e-7


@dataclass(frozen=True)
class VideoInfo:
    """What a video is, as far as its container tells (`probe`)."""

    path: str
    width: int  # display width (after rotation)
    height: int  # display height
    rotation: int  # counter-clockwise degrees applied for display: 0, 90, 180 or 270
    fps: float  # average frame rate
    duration: float  # seconds from the first frame's start to the end of the stream (container's word)
    num_frames: int | None  # frame count from the container, when it has one
    start_pts: float  # pts (seconds) of the first frame; subtracted from every time
    codec: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Frame:
    """One decoded frame. `image`: uint8 (H, W, 3) RGB, display orientation."""

    time: float  # seconds from the first frame's pts
    image: np.ndarray
    index: int | None = None  # frame number in decode order, when the decoder knows it


def _av():
    # PyAV's FFmpeg log forwarding stays off (its default): with threaded decoding it can deadlock.
    import av

    return av


def _ffmpeg_reason(err: BaseException) -> str:
    reason = str(getattr(err, "strerror", None) or str(err)).strip().rstrip(".")
    if reason.startswith("Invalid data found"):
        reason += "; the file is corrupt, truncated or not a video"
    return reason


def _rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate (H, W, C) counter-clockwise by `rotation` degrees (a multiple of 90)."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


def _check_file(path: Path) -> None:
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    if path.is_dir():
        raise BadInputError(f"{path}: is a directory, expected a video file")
    if not os.access(path, os.R_OK):
        raise BadInputError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: empty file (0 bytes), not a video")


def _open_container(path: Path):
    av = _av()
    try:
        return av.open(str(path), mode="r")
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except PermissionError:
        raise BadInputError(f"{path}: permission denied") from None
    except (av.FFmpegError, OSError, ValueError) as e:
        raise BadInputError(f"{path}: not a readable video ({_ffmpeg_reason(e)})") from None


def probe(path: str | os.PathLike) -> VideoInfo:
    """Open `path`, check that it holds a decodable video stream, and describe it.

    Decodes only the first frame (for the rotation and the start time). Raises BadInputError naming
    the file for a missing, empty, unreadable, truncated or non-video file.
    """
    path = Path(path)
    _check_file(path)
    av = _av()
    container = _open_container(path)
    try:
        if not container.streams.video:
            if not len(container.streams):
                raise BadInputError(f"{path}: zero-length video (the container holds no frames at all)")
            raise BadInputError(f"{path}: contains no video stream (only {container.streams[0].type})")
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream), None)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise BadInputError(f"{path}: cannot decode the first frame ({_ffmpeg_reason(e)})") from None
        if first is None:
            raise BadInputError(f"{path}: no decodable video frame (zero-length or truncated video)")
        rotation = int(round(getattr(first, "rotation", 0) or 0)) % 360
        if rotation % 90:
            log.warning("%s: rotation of %d degrees is not a multiple of 90; ignoring it", path, rotation)
            rotation = 0
        start = float(first.time) if first.time is not None else 0.0
        tb = stream.time_base
        duration = None
        if stream.duration is not None and tb is not None:
            stream_start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
            duration = float(stream.duration * tb) + stream_start - start
        elif container.duration is not None:
            duration = container.duration / 1_000_000 - start
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        num_frames = int(stream.frames) if stream.frames else None
        if (duration is None or duration <= 0) and num_frames and fps:
            duration = num_frames / fps
        if not fps and duration and num_frames:
            fps = num_frames / duration
        w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        return VideoInfo(
            path=str(path),
            width=int(w),
            height=int(h),
            rotation=rotation,
            fps=fps,
            duration=max(float(duration or 0.0), 0.0),
            num_frames=num_frames,
            start_pts=start,
            codec=stream.codec_context.name,
        )
    finally:
        container.close()


class VideoReader:
    """Random access to the frames of one video by time. Use `open_video` to get one."""

    name = "base"

    def __init__(self, info: VideoInfo) -> None:
        self.info = info

    def frames_at(self, times: Sequence[float]) -> list[Frame]:
        """The frames displayed at `times` (seconds), in the order asked. Times past the end give the last frame."""
        raise NotImplementedError

    def iter_frames(self, fps: float | None = None, max_side: int | None = None) -> Iterator[Frame]:
        """Stream the video from the start, optionally thinned to `fps` and downscaled to `max_side`.

        Always PyAV (sequential decoding is what it does best). A decode error part-way ends the
        stream with a warning (a truncated file keeps its readable part); before any frame it raises.
        """
        av = _av()
        info = self.info
        container = _open_container(Path(info.path))
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            step = 1.0 / fps if fps and fps > 0 else 0.0
            next_t = 0.0
            index = -1
            count = 0
            size = None
            try:
                for frame in container.decode(stream):
                    index += 1
                    t = _frame_time(frame, index, info)
                    if step and t + _EPS < next_t:
                        continue
                    if step:
                        next_t = (math.floor(t / step + _EPS) + 1) * step
                    if size is None:
                        size = _scaled_size(frame.width, frame.height, max_side)
                    if size != (frame.width, frame.height):
                        img = frame.reformat(
                            width=size[0], height=size[1], format="rgb24", interpolation="FAST_BILINEAR"
                        ).to_ndarray()  # ~2x faster than swscale's default; fine for analysis
                    else:
                        img = frame.to_ndarray(format="rgb24")
                    count += 1
                    yield Frame(time=t, image=_rotate(img, info.rotation), index=index)
            except (av.FFmpegError, OSError) as e:
                if count == 0:
                    raise BadInputError(f"{info.path}: cannot decode ({_ffmpeg_reason(e)})") from None
                log.warning("%s: decoding stopped at frame %d (%s); using the part before it", info.path, index, e)
        finally:
            container.close()

    def close(self) -> None:
        pass

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _scaled_size(w: int, h: int, max_side: int | None) -> tuple[int, int]:
    if not max_side or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    # even sizes keep swscale's chroma handling exact
    return max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2)


def _frame_time(frame: Any, index: int, info: VideoInfo) -> float:
    if frame.time is not None:
        return float(frame.time) - info.start_pts
    return index / info.fps if info.fps else float(index)


class PyAVReader(VideoReader):
    """Seek-and-decode with PyAV. Requests close ahead of the current position decode forward instead of seeking."""

    name = "pyav"

    def __init__(self, info: VideoInfo, seek_ahead: float = 2.0) -> None:
        super().__init__(info)
        self.seek_ahead = seek_ahead
        self._container = _open_container(Path(info.path))
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._it: Iterator[Any] | None = None
        self._cur: Any = None  # last decoded frame with time <= the last request
        self._next: Any = None  # one frame of look-ahead
        self._eof = False

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _time(self, frame: Any) -> float:
        return float(frame.time) - self.info.start_pts if frame.time is not None else math.inf

    def _pull(self) -> Any:
        """The next decoded frame, or None at the end (or at an undecodable tail)."""
        av = _av()
        if self._eof or self._it is None:
            return None
        try:
            frame = next(self._it, None)
        except (av.FFmpegError, OSError) as e:
            log.warning("%s: decoding stopped (%s)", self.info.path, _ffmpeg_reason(e))
            frame = None
        if frame is None:
            self._eof = True
        return frame

    def _seek(self, t: float) -> None:
        tb = self._stream.time_base
        target = int(math.floor((t + self.info.start_pts) / tb)) if tb else 0
        self._container.seek(max(target, 0), stream=self._stream, backward=True, any_frame=False)
        self._it = self._container.decode(self._stream)
        self._eof = False
        self._cur = self._pull()
        if self._cur is not None and self._time(self._cur) > t + _EPS and target > 0:
            # landed after the target (a container with a sparse index): restart from the beginning
            self._container.seek(0, stream=self._stream, backward=True, any_frame=False)
            self._it = self._container.decode(self._stream)
            self._eof = False
            self._cur = self._pull()
        self._next = self._pull() if self._cur is not None else None

    def _frame_at(self, t: float) -> Any:
        cur = self._cur
        if cur is None or t + _EPS < self._time(cur) or t - self._time(cur) > self.seek_ahead:
            self._seek(t)
        if self._cur is None:
            raise BadInputError(f"{self.info.path}: no frame could be decoded near {t:.3f} s (truncated file?)")
        while self._next is not None and self._time(self._next) <= t + _EPS:
            self._cur = self._next
            self._next = self._pull()
        tol = max(2.0 / self.info.fps, 0.05) if self.info.fps else 0.1
        last = self._time(self._cur)
        if self._next is None and last + tol < t < self.info.duration - tol:
            raise BadInputError(
                f"{self.info.path}: no frame at {t:.3f} s: the stream ends at {last:.3f} s although the header "
                f"says {self.info.duration:.3f} s (truncated file?)"
            )
        return self._cur

    def frames_at(self, times: Sequence[float]) -> list[Frame]:
        out: list[Frame | None] = [None] * len(times)
        for i in sorted(range(len(times)), key=lambda k: times[k]):
            frame = self._frame_at(max(float(times[i]), 0.0))
            img = _rotate(frame.to_ndarray(format="rgb24"), self.info.rotation)
            out[i] = Frame(time=self._time(frame), image=img)
        return out  # type: ignore[return-value]


class DecordReader(VideoReader):
    """decord's indexed random access; frames are located by their pts from decord's frame index."""

    name = "decord"

    def __init__(self, info: VideoInfo) -> None:
        super().__init__(info)
        import decord

        try:
            self._vr = decord.VideoReader(info.path, ctx=decord.cpu(0), num_threads=1)
        except Exception as e:  # decord raises a bare RuntimeError/DECORDError
            raise BadInputError(f"{info.path}: decord cannot open it ({_decord_reason(e)})") from None
        n = len(self._vr)
        if n == 0:
            raise BadInputError(f"{info.path}: decord found no frames")
        starts = np.asarray(self._vr.get_frame_timestamp(np.arange(n)), dtype=np.float64)[:, 0]
        self._starts = starts - starts[0]

    def index_at(self, t: float) -> int:
        """The index of the frame displayed at t."""
        eps = max(_EPS, abs(t) * 2.5e-7)  # decord's timestamps are float32 (~1e-7 relative error)
        i = int(np.searchsorted(self._starts, t + eps, side="right")) - 1
        return min(max(i, 0), len(self._starts) - 1)

    def frames_at(self, times: Sequence[float]) -> list[Frame]:
        idx = [self.index_at(float(t)) for t in times]
        uniq = sorted(set(idx))
        try:
            batch = self._vr.get_batch(uniq).asnumpy()
        except Exception as e:
            raise BadInputError(f"{self.info.path}: decord failed to decode ({_decord_reason(e)})") from None
        by_index = {i: batch[k] for k, i in enumerate(uniq)}
        return [
            Frame(time=float(self._starts[i]), image=np.ascontiguousarray(by_index[i][..., :3]), index=i) for i in idx
        ]

    def close(self) -> None:
        self._vr = None


def _decord_reason(err: BaseException) -> str:
    """decord's messages start with '[time] /path/to/file.cc:line: '; keep the part after it."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", text)[:200]


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except Exception:
        return False
    return True


def open_video(path: str | os.PathLike, decoder: Decoder = "auto", info: VideoInfo | None = None) -> VideoReader:
    """A `VideoReader` for `path`.

    decoder: "pyav"; "decord" (an error if decord is missing or cannot open the file); "auto":
    decord for unrotated videos it can open, PyAV otherwise (rotated videos always use PyAV,
    because decord mangles 90-degree rotations).
    """
    if decoder not in DECODERS:
        raise BadInputError(f"unknown decoder {decoder!r}; expected one of {', '.join(DECODERS)}")
    info = info or probe(path)
    if decoder == "pyav":
        return PyAVReader(info)
    if decoder == "decord":
        if not decord_available():
            raise BadInputError("decord is not installed (pip install decord), or use --decoder pyav")
        if info.rotation:
            log.warning("%s: rotated video (%d degrees), which decord mishandles; using PyAV", path, info.rotation)
            return PyAVReader(info)
        return DecordReader(info)
    if info.rotation == 0 and decord_available():
        try:
            return DecordReader(info)
        except BadInputError as e:
            log.info("%s; falling back to PyAV", e)
    return PyAVReader(info)
