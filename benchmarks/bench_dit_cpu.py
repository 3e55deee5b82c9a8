"""CPU forward time and peak memory of a small VINCIE transformer at a 5-turn session shape.

The shape is turn 5 of a 256²-area session: 6 frames of a 32x32 latent (256 patched tokens each, 1536 video
tokens) plus 5 prompts of ~30 text tokens. Each attention mode runs in a fresh subprocess, so its peak
resident memory (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, Linux KiB) belongs to that measurement
alone; "forward peak" is that high-water mark minus the RSS just before the first forward (model built,
inputs allocated), i.e. what the forward pass itself adds.

    python benchmarks/bench_dit_cpu.py                      # 4 layers, width 256
    python benchmarks/bench_dit_cpu.py --layers 8 --dim 512 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def measure(args: argparse.Namespace, mode: str) -> dict:
    """Build the model, run `repeats` timed forwards after one warm-up; returns the numbers."""
    import torch

    from vincie_cli.model.dit import DiTConfig, build_dit, forward_flops

    if args.threads:
        torch.set_num_threads(args.threads)
    heads = max(1, args.dim // 64)
    cfg = DiTConfig(
        vid_dim=args.dim, heads=heads, head_dim=args.dim // heads, num_layers=args.layers,
        mm_layers=max(1, args.layers // 3), txt_in_dim=args.dim, mlp_hidden=256 * -(-int(8 * args.dim / 3) // 256),
        rope_dim=args.dim // heads,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_dit(cfg).eval()
    model.attention = mode
    t, h, w = args.frames, args.latent, args.latent
    n_txt = args.turns * args.text
    vid = torch.randn(t * h * w, cfg.vid_in_channels)
    txt = torch.randn(n_txt, cfg.txt_in_dim)
    vid_shape, txt_shape = torch.tensor([[t, h, w]]), torch.tensor([[n_txt]])
    ts = torch.tensor([500.0])
    before = _rss_kib()
    times = []
    with torch.no_grad():
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            model(vid, txt, vid_shape, txt_shape, ts)
            if i:  # the first call is a warm-up
                times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    vid_tokens = t * (h // 2) * (w // 2)
    flops = forward_flops(cfg, [vid_tokens], [n_txt])
    med = statistics.median(times)
    return {
        "mode": mode,
        "layers": cfg.num_layers,
        "dim": cfg.vid_dim,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "tokens": vid_tokens + n_txt,
        "median_ms": med * 1e3,
        "gflop": flops / 1e9,
        "gflops_per_s": flops / med / 1e9,
        "peak_rss_mib": peak / 1024,
        "forward_peak_mib": (peak - before) / 1024,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--frames", type=int, default=6, help="frames in the session (turn 5: 5 context + 1 target)")
    p.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px)")
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--text", type=int, default=30, help="text tokens per turn (turn row included)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--modes", default="fp32,bf16", help="attention numerics to measure")
    p.add_argument("--in-process", action="store_true", help="measure here (peak RSS then covers everything)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        print(json.dumps(measure(args, args.child)))
        return []
    rows = []
    for mode in args.modes.split(","):
        if args.in_process:
            rows.append(measure(args, mode))
            continue
        child = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--in-process"]
        out = subprocess.run(
            [sys.executable, __file__, *child, "--child", mode], check=True, capture_output=True, text=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    header = ["attention", "layers", "dim", "params (M)", "tokens", "forward ms", "GFLOP", "GFLOP/s", "peak RSS MiB"]
    header.append("forward peak MiB")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [r["mode"], r["layers"], r["dim"], f"{r['params_M']:.1f}", r["tokens"], f"{r['median_ms']:.1f}"]
        cells += [f"{r['gflop']:.2f}", f"{r['gflops_per_s']:.1f}", f"{r['peak_rss_mib']:.0f}"]
        cells.append(f"{r['forward_peak_mib']:.0f}")
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print(f"(torch threads: {rows[0]['threads']}; peak RSS = ru_maxrss of the measuring process)")
    return rows


if __name__ == "__main__":
    main()
