"""Synthetic-world speed: videos per second (render + H.264 encode + ground truth), benchmark sessions and scoring.

    .venv/bin/python benchmarks/bench_synth.py                    # 100 videos, 5 s, 256x256, 1 and 2 workers
    .venv/bin/python benchmarks/bench_synth.py --videos 20 --size 64x64

Goal: 100 videos of 5 s at 256x256 in under a minute on the 2-core dev box.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import time
from pathlib import Path

from vincie_cli.synth import SynthConfig, generate_many
from vincie_cli.synth.benchmark import make_benchmark
from vincie_cli.synth.scorer import aggregate, score_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=100)
    ap.add_argument("--size", default="256x256")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sessions", type=int, default=20, help="benchmark sessions to build and score")
    ap.add_argument("--profile", action="store_true", help="print the top functions of a 10-video run")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    cfg = SynthConfig(width=w, height=h, duration=args.duration)

    for workers in args.workers:
        out = Path(tempfile.mkdtemp(prefix="bench_synth_"))
        try:
            t0 = time.perf_counter()
            recs = list(generate_many(out, list(range(args.videos)), cfg, workers=workers))
            dt = time.perf_counter() - t0
            mb = sum(f.stat().st_size for f in out.iterdir()) / 1e6
        finally:
            shutil.rmtree(out, ignore_errors=True)
        frames = len(recs) * cfg.num_frames
        print(
            f"generate: {len(recs)} videos x {args.duration:g} s at {w}x{h}, workers={workers}: {dt:.1f} s "
            f"({dt / len(recs) * 1000:.0f} ms/video, {frames / dt:.0f} frames/s, {mb:.1f} MB on disk)"
        )

    if args.profile:
        out = Path(tempfile.mkdtemp(prefix="bench_synth_"))
        prof = cProfile.Profile()
        prof.enable()
        list(generate_many(out, list(range(10)), cfg))
        prof.disable()
        shutil.rmtree(out, ignore_errors=True)
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)

    for size in (64, 256):
        t0 = time.perf_counter()
        sessions = make_benchmark(args.sessions, size)
        t_make = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = [score_session(s, [t.image for t in s.turns]) for s in sessions]
        t_score = time.perf_counter() - t0
        turns = sum(len(s.turns) for s in sessions)
        ok = aggregate(scores)[-1]["success_rate"]
        print(
            f"benchmark {size}x{size}: {args.sessions} sessions built in {t_make:.1f} s "
            f"({t_make / args.sessions * 1000:.0f} ms/session); scored {turns} turns in {t_score:.1f} s "
            f"({t_score / turns * 1000:.0f} ms/turn); exact frames succeed: {ok:.0%}"
        )


if __name__ == "__main__":
    main()
