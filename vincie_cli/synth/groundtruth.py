"""Ground truth of a synthetic video: key states, timed events, instance masks; load and query.

Files beside `<name>.mp4`:

- `<name>.gt.json`: the key states (`states[k]` before event k, `states[k+1]` after it), the events
  with their frame spans, the object label table and, per frame, which stored label map it uses;
- `<name>.masks.png`: the distinct per-frame label maps stacked vertically (uint8 grey PNG of size
  W x (U*H); value v is the object whose `label` is v, 0 is background).

Frame i is shown from time i/fps to (i+1)/fps; `state_at(t)` is the state of frame floor(t*fps),
the frame a decoder shows at t. During event k (frames frame_start..frame_end) the state is
`interpolate(states[k], states[k+1], smoothstep((i - frame_start) / (frame_end - frame_start)))`;
elsewhere it is the settled key state, so frames between events are exact, static holds.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vincie_cli.synth.render import Renderer
from vincie_cli.synth.world import SceneState, interpolate, smoothstep
from vincie_cli.utils.io import BadInputError

GT_SUFFIX = ".gt.json"
MASKS_SUFFIX = ".masks.png"
GT_TYPE = "synth_ground_truth"
GT_VERSION = 1


@dataclass(frozen=True)
class Event:
    """One change in a video. The state is settled up to `frame_start` and again from `frame_end`."""

    kind: str
    frame_start: int
    frame_end: int
    fps: float
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    objects: tuple[str, ...] = ()
    summary: str = ""

    @property
    def t_start(self) -> float:
        return self.frame_start / self.fps

    @property
    def t_end(self) -> float:
        return self.frame_end / self.fps

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "frame_start": self.frame_start,
            "frame_end": self.frame_end,
            "t_start": round(self.t_start, 6),
            "t_end": round(self.t_end, 6),
            "objects": list(self.objects),
            "params": self.params,
            "summary": self.summary,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], fps: float) -> Event:
        return cls(
            kind=str(d["kind"]),
            frame_start=int(d["frame_start"]),
            frame_end=int(d["frame_end"]),
            fps=fps,
            params=dict(d.get("params", {})),
            objects=tuple(d.get("objects", ())),
            summary=str(d.get("summary", "")),
        )


class GroundTruth:
    """Everything known about a synthetic video. `size` is (W, H)."""

    def __init__(
        self,
        fps: float,
        size: tuple[int, int],
        num_frames: int,
        states: list[SceneState],
        events: list[Event],
        labels: dict[str, int],
        seed: int | None = None,
        config: dict[str, Any] | None = None,
        mask_frames: list[int] | None = None,
        masks_path: Path | None = None,
        path: Path | None = None,
        video: str | None = None,
    ) -> None:
        if len(states) != len(events) + 1:
            raise ValueError("need one more key state than events")
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))
        self.num_frames = int(num_frames)
        self.states = states
        self.events = events
        self.labels = labels
        self.seed = seed
        self.config = config or {}
        self.mask_frames = mask_frames
        self.masks_path = masks_path
        self.path = path
        self.video = video
        self._renderer: Renderer | None = None
        self._masks: np.ndarray | None = None

    # ---- time

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    def frame_index(self, t: float) -> int:
        """The frame shown at time t (seconds), clamped to the video."""
        return min(max(int(math.floor(t * self.fps + 1e-6)), 0), self.num_frames - 1)

    def frame_time(self, i: int) -> float:
        return i / self.fps

    # ---- state

    def state_at_frame(self, i: int) -> SceneState:
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} outside 0..{self.num_frames - 1}")
        k = 0
        for k, ev in enumerate(self.events):
            if i < ev.frame_start:
                return self.states[k]
            if i < ev.frame_end:
                u = (i - ev.frame_start) / (ev.frame_end - ev.frame_start)
                return interpolate(self.states[k], self.states[k + 1], smoothstep(u))
        return self.states[-1]

    def state_at(self, t: float) -> SceneState:
        """The state shown by the frame displayed at time t (frame floor(t * fps))."""
        return self.state_at_frame(self.frame_index(t))

    def events_between(self, t0: float, t1: float) -> list[Event]:
        """Events whose motion overlaps the frames shown at t0..t1."""
        i0, i1 = sorted((self.frame_index(t0), self.frame_index(t1)))
        return [e for e in self.events if e.frame_start < i1 and e.frame_end > i0]

    def settled_frames(self) -> list[int]:
        """Frames that show a key state (no motion in progress)."""
        moving = set()
        for e in self.events:
            moving.update(range(e.frame_start + 1, e.frame_end))
        return [i for i in range(self.num_frames) if i not in moving]

    # ---- pixels

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            self._renderer = Renderer(self.size)
        return self._renderer

    def render_state(self, state: SceneState) -> np.ndarray:
        """uint8 (H, W, 3): the exact frame for `state` at this video's size."""
        return self.renderer.render(state)[0]

    def render_frame(self, i: int) -> np.ndarray:
        """uint8 (H, W, 3): the exact (pre-codec) pixels of frame i."""
        return self.render_state(self.state_at_frame(i))

    def label_map(self, i: int) -> np.ndarray:
        """uint8 (H, W) labels of frame i (see `labels`); from the stored PNG, else re-rendered."""
        if self.mask_frames is not None and self.masks_path is not None:
            if self._masks is None:
                self._masks = _read_label_png(self.masks_path, self.size)
            return self._masks[self.mask_frames[i]]
        return self.renderer.render(self.state_at_frame(i), self.labels)[1]

    def instance_masks(self, frame_index: int) -> dict[str, np.ndarray]:
        """{object id: bool (H, W)} visible (occlusion-resolved) masks of the objects in frame i."""
        if not 0 <= frame_index < self.num_frames:
            raise IndexError(f"frame {frame_index} outside 0..{self.num_frames - 1}")
        lab = self.label_map(frame_index)
        out = {}
        for oid, v in self.labels.items():
            m = lab == v
            if m.any():
                out[oid] = m
        return out

    # ---- files

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": GT_TYPE,
            "version": GT_VERSION,
            "seed": self.seed,
            "video": self.video,
            "masks": self.masks_path.name if self.masks_path else None,
            "fps": self.fps,
            "width": self.size[0],
            "height": self.size[1],
            "num_frames": self.num_frames,
            "duration": self.duration,
            "config": self.config,
            "labels": self.labels,
            "states": [s.to_dict() for s in self.states],
            "events": [e.to_dict() for e in self.events],
            "mask_frames": self.mask_frames,
        }


def _read_label_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L") if im.mode != "L" else im)
    except (OSError, ValueError) as e:
        raise BadInputError(f"{path}: cannot read the mask image ({e})") from None
    W, H = size
    if arr.shape[1] != W or arr.shape[0] % H:
        raise BadInputError(f"{path}: mask image is {arr.shape[1]}x{arr.shape[0]}, expected a stack of {W}x{H} maps")
    return arr.reshape(-1, H, W)


def find_ground_truth(video_path: str | os.PathLike) -> Path | None:
    """The ground-truth file of a synthetic video (`<name>.gt.json` beside it), or None."""
    p = Path(video_path)
    if p.name.endswith(GT_SUFFIX):
        return p if p.is_file() else None
    cand = p.with_name(p.stem + GT_SUFFIX) if p.suffix else p.with_name(p.name + GT_SUFFIX)
    return cand if cand.is_file() else None


def load_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """Load a ground-truth file (or the video it belongs to). Raises BadInputError naming the file."""
    p = Path(path)
    if not p.name.endswith(GT_SUFFIX):
        found = find_ground_truth(p)
        if found is None:
            raise BadInputError(f"{p}: no synthetic ground truth ({p.stem}{GT_SUFFIX}) next to it")
        p = found
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"{p}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(d, dict) or d.get("type") != GT_TYPE:
        raise BadInputError(f"{p}: not a synthetic ground-truth file (type must be {GT_TYPE!r})")
    if d.get("version") != GT_VERSION:
        raise BadInputError(f"{p}: ground-truth version {d.get('version')!r}, this vincie reads {GT_VERSION}")
    try:
        fps = float(d["fps"])
        states = [SceneState.from_dict(s) for s in d["states"]]
        events = [Event.from_dict(e, fps) for e in d["events"]]
        masks = p.parent / d["masks"] if d.get("masks") else None
        return GroundTruth(
            fps=fps,
            size=(int(d["width"]), int(d["height"])),
            num_frames=int(d["num_frames"]),
            states=states,
            events=events,
            labels={str(k): int(v) for k, v in d["labels"].items()},
            seed=d.get("seed"),
            config=d.get("config"),
            mask_frames=d.get("mask_frames"),
            masks_path=masks,
            path=p,
            video=d.get("video"),
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise BadInputError(f"{p}: malformed ground truth ({type(e).__name__}: {e})") from None
