"""Session shards: sessions/s written and read, bytes per session, and the margin over a 3B training step.

Builds synthetic-world sessions (K+1 frames of 256x256 with exact RoE masks, written as annotate /
segment would), packs them with `build-sessions` in each image format, then reads them back with
`SessionDataset` in-process and through DataLoader workers. Prints one JSON line per measurement and
a summary on stderr.

    .venv/bin/python benchmarks/bench_sessions.py --sessions 200 --frames 5 --workers 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The 3B recipe (VINCIE paper / release notes): 256 H100, 15k steps in about 30 h -> 7.2 s per step.
# Sessions per GPU per step: 10.4M sessions seen once in 15k steps over 256 GPUs is 2.7; we take 16
# as a generous upper bound for a packed batch of short sessions.
STEP_SECONDS_3B = 30 * 3600 / 15_000
SESSIONS_PER_GPU_STEP = (10_362_291 / (15_000 * 256), 16.0)
GPUS_PER_NODE = 8


def make_inputs(root: Path, n_sessions: int, n_frames: int, size: int) -> None:
    """Clip records + frame PNGs + mask PNGs of synthetic scenes (states sampled across each video)."""
    from PIL import Image

    from vincie_cli.segment.roe import save_mask
    from vincie_cli.synth import SynthConfig, build_timeline
    from vincie_cli.synth.oracle import annotate_pair, roe_masks
    from vincie_cli.utils.io import write_jsonl

    cfg = SynthConfig(width=size, height=size, duration=4.0)
    records = []
    for seed in range(n_sessions):
        gt = build_timeline(seed, cfg)
        times = [float(t) for t in np.linspace(0.05, gt.duration - 0.05, n_frames)]
        frames = []
        for i, t in enumerate(times):
            rel = f"clips/{seed}/{i:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(gt.render_frame(gt.frame_index(t))).save(root / rel, compress_level=1)
            frames.append({"index": i, "time": t, "path": rel})
        transitions = []
        for i in range(n_frames - 1):
            roe = roe_masks(gt, times[i], times[i + 1])
            entry = {"rule": roe.rule, "src_mask": None, "dst_mask": None}
            for side, m in (("src", roe.src), ("dst", roe.dst)):
                if m is not None:
                    rel = f"masks/{seed}/{i:03d}_{side}.png"
                    save_mask(root / rel, m)
                    entry[f"{side}_mask"] = rel
            transitions.append(
                {
                    "index": i,
                    "src": i,
                    "dst": i + 1,
                    "annotation": annotate_pair(gt, times[i], times[i + 1]),
                    "roe": entry,
                }
            )
        records.append(
            {
                "type": "clip",
                "clip_id": f"bench{seed}",
                "source": f"synth_{seed}.mp4",
                "frames": frames,
                "transitions": transitions,
            }
        )
    write_jsonl(root / "segments.jsonl", records)


def bench_write(inputs: Path, out: Path, fmt: str) -> dict:
    from vincie_cli.sessions.build import BuildOptions, SessionBuilder

    t0 = time.perf_counter()
    summary = SessionBuilder(out, BuildOptions(image_format=fmt, val_fraction=0.0, shard_size_mb=64)).run([str(inputs)])
    dt = time.perf_counter() - t0
    stats = json.loads((out / "stats.json").read_text())
    return {
        "type": "write",
        "format": fmt,
        "sessions": summary.built,
        "seconds": round(dt, 3),
        "sessions_per_s": round(summary.built / dt, 1),
        "bytes_per_session": stats["bytes_per_session"],
    }


def bench_read(out: Path, fmt: str, workers: int, repeats: int) -> list[dict]:
    from vincie_cli.sessions import SessionDataset
    from vincie_cli.sessions.shards import read_shard

    rows = []
    shards = sorted(str(p) for p in out.glob("*.tar"))
    t0 = time.perf_counter()
    n = sum(1 for _ in range(repeats) for s in shards for _ in read_shard(s))
    dt = time.perf_counter() - t0
    rows.append({"type": "read", "format": fmt, "mode": "tar only (no decode)", "sessions_per_s": round(n / dt, 1)})
    for w in sorted({0, workers}):
        ds = SessionDataset([str(out)], shuffle_buffer=0)
        t0 = time.perf_counter()
        n = 0
        for _ in range(repeats):
            for batch in ds.loader(batch_size=8, num_workers=w):
                n += len(batch)
        dt = time.perf_counter() - t0
        mode = "decoded, in-process" if w == 0 else f"decoded, DataLoader {w} workers"
        rows.append({"type": "read", "format": fmt, "mode": mode, "workers": w, "sessions_per_s": round(n / dt, 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--frames", type=int, default=5, help="frames per session (turns + 1)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="read passes over the shards")
    ap.add_argument("--formats", default="jpg,png,webp")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_inputs(root / "in", args.sessions, args.frames, args.size)
        print(f"inputs: {args.sessions} sessions in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        results = []
        for fmt in args.formats.split(","):
            results.append(bench_write(root / "in", root / fmt, fmt))
            results.extend(bench_read(root / fmt, fmt, args.workers, args.repeats))
        for r in results:
            print(json.dumps(r))
    lo, hi = SESSIONS_PER_GPU_STEP
    need_gpu = (lo / STEP_SECONDS_3B, hi / STEP_SECONDS_3B)
    print(
        json.dumps(
            {
                "type": "need_3b",
                "step_seconds": STEP_SECONDS_3B,
                "sessions_per_gpu_step": [round(lo, 2), hi],
                "sessions_per_s_per_gpu": [round(x, 2) for x in need_gpu],
                "sessions_per_s_per_node": [round(x * GPUS_PER_NODE, 1) for x in need_gpu],
            }
        )
    )
    print(f"3B needs {need_gpu[0]:.2f}-{need_gpu[1]:.2f} sessions/s per GPU", file=sys.stderr)
    for r in results:
        if r["type"] == "read" and r.get("workers") == 0:
            print(
                f"{r['format']}: one reader process decodes {r['sessions_per_s']} sessions/s = "
                f"{r['sessions_per_s'] / need_gpu[1]:.0f}x the upper-bound need of one GPU",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
