"""`vincie synth`: procedural videos with exact ground truth, or the held-out benchmark sessions."""

from __future__ import annotations

import click

from vincie_cli.cli._common import emit, handle_errors

EPILOG = """
\b
Examples:
  vincie synth data/synth --videos 1000 --seed 0
  vincie synth data/synth64 --videos 5000 --size 64x64 --duration 4 --workers 2
  vincie synth bench/synth --sessions 100 --size 64x64     # held-out benchmark for `vincie eval synthetic`
"""


def _parse_size(value: str) -> tuple[int, int]:
    from vincie_cli.utils.io import UsageError

    w, sep, h = value.lower().partition("x")
    try:
        return int(w), int(h if sep else w)
    except ValueError:
        raise UsageError(f"--size {value!r}: expected WxH, e.g. 256x256") from None


def _parse_range(name: str, value: str | None) -> tuple[int, int] | None:
    from vincie_cli.utils.io import UsageError

    if value is None:
        return None
    lo, sep, hi = value.partition("-")
    try:
        return int(lo), int(hi if sep else lo)
    except ValueError:
        raise UsageError(f"--{name} {value!r}: expected N or MIN-MAX, e.g. 1-5") from None


@click.command("synth", epilog=EPILOG)
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--videos", type=int, default=10, show_default=True, help="Number of videos to write.")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed, counted from the start of --split.")
@click.option(
    "--split",
    type=click.Choice(["train", "heldout"]),
    default="train",
    show_default=True,
    help="Seed range: train = 0..999,999; heldout = 1,000,000.. (evaluation only).",
)
@click.option("--size", default="256x256", show_default=True, help="Frame size WxH (even numbers).")
@click.option("--fps", type=int, default=24, show_default=True, help="Frames per second.")
@click.option("--duration", type=float, default=5.0, show_default=True, help="Video length in seconds.")
@click.option(
    "--difficulty",
    type=click.Choice(["easy", "medium", "hard"]),
    default="medium",
    show_default=True,
    help="Preset for objects, events, camera and textures.",
)
@click.option("--objects", default=None, metavar="MIN-MAX", help="Objects in the first frame (overrides the preset).")
@click.option("--events", default=None, metavar="MIN-MAX", help="Events per video (overrides the preset).")
@click.option("--kinds", default=None, help="Comma-separated event kinds allowed (add,remove,move,recolour,...).")
@click.option("--camera/--no-camera", default=None, help="Allow camera pan and zoom (default: per preset).")
@click.option("--workers", type=int, default=1, show_default=True, help="Parallel processes.")
@click.option(
    "--sessions",
    type=int,
    default=None,
    help="Write this many held-out benchmark sessions to OUT instead of videos.",
)
@click.option("--turns", type=int, default=5, show_default=True, help="Turns per benchmark session (with --sessions).")
@handle_errors
def synth(
    out: str,
    videos: int,
    seed: int,
    split: str,
    size: str,
    fps: int,
    duration: float,
    difficulty: str,
    objects: str | None,
    events: str | None,
    kinds: str | None,
    camera: bool | None,
    workers: int,
    sessions: int | None,
    turns: int,
) -> None:
    """Write synthetic videos with exact ground truth (or the held-out benchmark).

    Each video OUT/synth_<seed>.mp4 (H.264) comes with <name>.gt.json (key states, timed events,
    object labels) and <name>.masks.png (per-frame instance masks). Finished videos are skipped, so
    an interrupted run resumes. One JSON line per video on stdout (type "synth_video").
    """
    import time

    from vincie_cli.synth.benchmark import check_train_seeds, split_seed
    from vincie_cli.utils.io import DirLock, UsageError
    from vincie_cli.utils.log import get_logger

    log = get_logger(__name__)
    width, height = _parse_size(size)
    if sessions is not None:
        _write_benchmark(out, sessions, (width, height), seed, turns)
        return
    if videos < 0 or workers < 1:
        raise UsageError("--videos must be >= 0 and --workers >= 1")
    from vincie_cli.synth.generate import generate_many
    from vincie_cli.synth.groundtruth import load_ground_truth
    from vincie_cli.synth.world import SynthConfig

    overrides: dict = {"width": width, "height": height, "fps": fps, "duration": duration}
    if (r := _parse_range("objects", objects)) is not None:
        overrides["min_objects"], overrides["max_objects"] = r
    if (r := _parse_range("events", events)) is not None:
        overrides["min_events"], overrides["max_events"] = r
    if kinds:
        overrides["event_kinds"] = tuple(k.strip() for k in kinds.split(",") if k.strip())
    if camera is not None:
        overrides["camera"] = camera
    cfg = SynthConfig.for_difficulty(difficulty, **overrides)
    seeds = [split_seed(split, seed + i) for i in range(videos)]
    if split == "train":
        check_train_seeds(seeds)
    t0 = time.time()
    with DirLock(out, "synth"):
        for n, rec in enumerate(generate_many(out, seeds, cfg, workers=workers), 1):
            gt = load_ground_truth(rec["path"])
            emit(
                {
                    "type": "synth_video",
                    "path": rec["path"],
                    "ground_truth": str(gt.path),
                    "seed": rec["seed"],
                    "split": split,
                    "skipped": rec["skipped"],
                    "width": gt.width,
                    "height": gt.height,
                    "fps": gt.fps,
                    "num_frames": gt.num_frames,
                    "events": [
                        {
                            "kind": e.kind,
                            "t_start": round(e.t_start, 4),
                            "t_end": round(e.t_end, 4),
                            "summary": e.summary,
                        }
                        for e in gt.events
                    ],
                }
            )
            log.info("%d/%d %s%s", n, videos, rec["path"], " (already there)" if rec["skipped"] else "")
    log.info("%d videos in %.1f s", videos, time.time() - t0)


def _write_benchmark(out: str, n: int, size: tuple[int, int], offset: int, turns: int) -> None:
    from pathlib import Path

    from vincie_cli.synth.benchmark import load_benchmark, make_session, save_benchmark, split_seed
    from vincie_cli.utils.io import DirLock, UsageError
    from vincie_cli.utils.log import get_logger

    if n < 1 or turns < 1:
        raise UsageError("--sessions and --turns must be at least 1")
    log = get_logger(__name__)
    seeds = [split_seed("heldout", offset + i) for i in range(n)]
    with DirLock(out, "synth"):
        root = Path(out)
        existing = load_benchmark(root) if (root / "benchmark.json").is_file() else []
        if (
            existing
            and [s.seed for s in existing] == seeds
            and existing[0].size == size
            and len(existing[0].turns) == turns
        ):
            sessions = existing
            log.info("%s already holds these %d sessions", root, n)
        else:
            sessions = []
            for i, seed in enumerate(seeds, 1):
                sessions.append(make_session(seed, size, turns))
                log.info("session %d/%d (seed %d)", i, n, seed)
            save_benchmark(sessions, root)
    for s in sessions:
        emit(
            {
                "type": "synth_session",
                "id": s.id,
                "seed": s.seed,
                "path": str(Path(out)),
                "instructions": s.instructions,
            }
        )
