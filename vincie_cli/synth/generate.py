"""Timeline sampling, frame rendering, H.264 encoding (PyAV) and the ground-truth files of a video.

`generate_video(out_dir, seed)` writes `<name>.mp4`, `<name>.masks.png` and, last, `<name>.gt.json`
(each atomically), so a finished ground-truth file marks a finished video. The same seed gives the
same ground-truth bytes and the same frames.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vincie_cli.synth.groundtruth import GT_SUFFIX, MASKS_SUFFIX, Event, GroundTruth, find_ground_truth
from vincie_cli.synth.oracle import diff_states, summarize
from vincie_cli.synth.world import Rng, SynthConfig, World
from vincie_cli.utils.io import BadInputError, UsageError, atomic_path, atomic_write_bytes, atomic_write_json

# relative weights of event kinds when sampling a timeline
EVENT_WEIGHTS = {"none": 0.5, "camera_pan": 0.7, "camera_zoom": 0.5, "swap": 0.8, "background": 0.7}


def video_name(seed: int) -> str:
    return f"synth_{seed:07d}"


def build_timeline(seed: int, config: SynthConfig | None = None) -> GroundTruth:
    """Sample a scene and a timeline of events for `seed` (in memory, no masks yet)."""
    cfg = config or SynthConfig()
    rng = Rng(f"synth-video:{seed}")
    world = World(rng, cfg)
    state = world.sample_scene()
    fps = cfg.fps
    n_frames = cfg.num_frames

    def frames(lo_hi: tuple[float, float]) -> int:
        return max(1, round(rng.uniform(*lo_hi) * fps))

    states = [state]
    events: list[Event] = []
    f = frames(cfg.hold_seconds)
    n_events = rng.randint(cfg.min_events, cfg.max_events)
    kinds = list(cfg.allowed_events)
    min_tail = max(1, round(cfg.hold_seconds[0] * fps))
    for _ in range(n_events):
        hold = frames(cfg.hold_seconds) if events else 0
        motion = max(2, frames(cfg.motion_seconds))
        if f + hold + motion + min_tail > n_frames:
            break
        result = None
        kind = ""
        tried: set[str] = set()
        while result is None and len(tried) < len(kinds):
            options = [k for k in kinds if k not in tried]
            kind = rng.weighted(options, [EVENT_WEIGHTS.get(k, 1.0) for k in options])
            tried.add(kind)
            result = world.propose(kind, state)
        if result is None:
            break
        new_state, params = result
        start = f + hold
        summary = summarize(diff_states(state, new_state, cfg.size), seed=f"{seed}:{len(events)}")
        events.append(
            Event(
                kind=kind,
                frame_start=start,
                frame_end=start + motion,
                fps=fps,
                params={k: v for k, v in params.items() if k != "objects"},
                objects=tuple(params.get("objects", ())),
                summary=summary,
            )
        )
        states.append(new_state)
        state = new_state
        f = start + motion
    all_ids: list[str] = []
    for s in states:
        for o in s.objects:
            if o.id not in all_ids:
                all_ids.append(o.id)
    labels = {oid: i + 1 for i, oid in enumerate(all_ids)}
    return GroundTruth(
        fps=fps,
        size=cfg.size,
        num_frames=n_frames,
        states=states,
        events=events,
        labels=labels,
        seed=seed,
        config=cfg.to_dict(),
    )


def render_video(gt: GroundTruth) -> Iterator[tuple[int, np.ndarray, np.ndarray, bool]]:
    """Yield (frame index, uint8 (H, W, 3) image, uint8 (H, W) label map, is a repeat of the previous frame)."""
    prev_state = None
    img = lab = None
    for i in range(gt.num_frames):
        state = gt.state_at_frame(i)
        if state == prev_state:
            yield i, img, lab, True
            continue
        img, lab = gt.renderer.render(state, gt.labels)
        prev_state = state
        yield i, img, lab, False


def encode_mp4(
    frames: Iterable[np.ndarray], path: str | os.PathLike, fps: int, crf: int = 18, preset: str = "ultrafast"
) -> None:
    """Encode uint8 (H, W, 3) RGB frames as H.264 (yuv420p) mp4 with PyAV, atomically."""
    import av

    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = None
            for i, frame in enumerate(frames):
                if stream is None:
                    stream = container.add_stream("libx264", rate=fps)
                    stream.height, stream.width = frame.shape[:2]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": preset}
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                vf.pts = i
                vf.time_base = Fraction(1, fps)
                for packet in stream.encode(vf):
                    container.mux(packet)
            if stream is not None:
                for packet in stream.encode():
                    container.mux(packet)


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def generate_video(
    out_dir: str | os.PathLike, seed: int, config: SynthConfig | None = None, name: str | None = None
) -> Path:
    """Write one synthetic video and its ground truth into `out_dir`; return the .mp4 path.

    Files: `<name>.mp4` (H.264), `<name>.masks.png` (label maps), `<name>.gt.json` (written last).
    `name` defaults to `synth_<seed>`.
    """
    cfg = config or SynthConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or video_name(seed)
    video_path = out / f"{name}.mp4"
    masks_path = out / f"{name}{MASKS_SUFFIX}"
    gt_path = out / f"{name}{GT_SUFFIX}"

    gt = build_timeline(seed, cfg)
    unique_maps: list[np.ndarray] = []
    mask_frames: list[int] = []

    def frames() -> Iterator[np.ndarray]:
        for _, img, lab, repeat in render_video(gt):
            if not repeat:
                unique_maps.append(lab)
            mask_frames.append(len(unique_maps) - 1)
            yield img

    encode_mp4(frames(), video_path, cfg.fps, cfg.crf, cfg.encoder_preset)
    atomic_write_bytes(masks_path, _png_bytes(np.concatenate(unique_maps, axis=0)))
    gt.mask_frames = mask_frames
    gt.masks_path = masks_path
    gt.video = video_path.name
    gt.path = gt_path
    atomic_write_json(gt_path, gt.to_dict(), indent=None)
    return video_path


def is_finished(out_dir: str | os.PathLike, name: str) -> bool:
    """A video counts as finished when its ground truth, masks and mp4 all exist."""
    out = Path(out_dir)
    gt = find_ground_truth(out / f"{name}.mp4")
    return gt is not None and (out / f"{name}.mp4").is_file() and (out / f"{name}{MASKS_SUFFIX}").is_file()


def _worker(args: tuple[str, int, SynthConfig, str]) -> dict[str, Any]:
    out_dir, seed, cfg, name = args
    path = generate_video(out_dir, seed, cfg, name)
    return {"seed": seed, "path": str(path)}


def generate_many(
    out_dir: str | os.PathLike, seeds: list[int], config: SynthConfig | None = None, workers: int = 1
) -> Iterator[dict[str, Any]]:
    """Generate videos for `seeds` (skipping finished ones), yielding {seed, path, skipped} in seed order."""
    cfg = config or SynthConfig()
    jobs = [(seed, video_name(seed)) for seed in seeds]
    todo = []
    for seed, name in jobs:
        if not is_finished(out_dir, name):
            todo.append((str(out_dir), seed, cfg, name))
            continue
        gt_path = Path(out_dir) / f"{name}{GT_SUFFIX}"
        try:
            made_with = json.loads(gt_path.read_text(encoding="utf-8")).get("config")
        except (OSError, json.JSONDecodeError) as e:
            raise BadInputError(f"{gt_path}: unreadable ground truth ({e}); delete it to regenerate") from None
        if made_with != cfg.to_dict():
            raise UsageError(f"{gt_path}: made with a different configuration than this run; use another output folder")
    pending = {job[1] for job in todo}
    pool = None
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
        pool = ctx.Pool(min(workers, len(todo)))
        results = pool.imap(_worker, todo)
    else:
        results = map(_worker, todo)
    try:
        for seed, name in jobs:
            if seed in pending:
                yield {**next(results), "skipped": False}
            else:
                yield {"seed": seed, "path": str(Path(out_dir) / f"{name}.mp4"), "skipped": True}
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def event_records(gt: GroundTruth) -> list[dict[str, Any]]:
    """Compact event list for JSON lines: kind, times, objects, summary."""
    return [
        {
            "kind": e.kind,
            "t_start": round(e.t_start, 4),
            "t_end": round(e.t_end, 4),
            "objects": list(e.objects),
            "summary": e.summary,
        }
        for e in gt.events
    ]
