"""How far a model's results drift from the exact frames, turn after turn: the pixel residual between each
result and the benchmark's expected frame, per turn, for a synthetic benchmark and a folder of results (what
`vincie eval synthetic` made).

    python benchmarks/context_drift.py runs/eval/benchmark runs/eval/generated
    python benchmarks/context_drift.py runs/eval/benchmark runs/eval/generated --near 0.05

Pixels are in [-1, 1] (as the model sees them), r = result - expected per channel. Per turn, averaged over
the sessions that have a result for it: `median_abs` (the median |r| over a frame's pixels and channels),
`near` (the share of pixels whose every channel is within `--near`, 0.1 by default, of the expected value),
`mean_shift` (the mean of r: a global fade toward grey shows as a shift of one sign) and `sessions`. A later
turn's expected frame is the exact one of the benchmark, so errors of earlier turns count in later ones: this
measures what a model's own outputs look like as the context of its next turns (docs/mini.md, run 19). A
missing result ends its session. Prints one JSON line per turn.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def context_drift(bench: str | Path, results: str | Path, near: float = 0.1) -> list[dict[str, float]]:
    """[{"turn", "sessions", "median_abs", "near", "mean_shift"}] for turns 1, 2, ... (means over sessions)."""
    from vincie_cli.eval.common import open_rgb, turn_image
    from vincie_cli.synth.benchmark import load_benchmark

    rows: dict[int, list[tuple[float, float, float]]] = {}
    for s in load_benchmark(bench):
        for k, t in enumerate(s.turns, 1):
            path = turn_image(Path(results), s.id, k)
            if path is None:
                break
            img = np.asarray(open_rgb(path), dtype=np.float64)
            if img.shape != t.image.shape:
                raise SystemExit(
                    f"{path}: {img.shape[1]}x{img.shape[0]}, the benchmark is {t.image.shape[1]}x{t.image.shape[0]}"
                )
            r = (img - t.image.astype(np.float64)) / 127.5  # (H, W, 3) in [-1, 1] units
            close = (np.abs(r) <= near).all(-1)
            rows.setdefault(k, []).append((float(np.median(np.abs(r))), float(close.mean()), float(r.mean())))
    out = []
    for k in sorted(rows):
        a = np.array(rows[k])
        out.append(
            {
                "turn": k,
                "sessions": len(a),
                "median_abs": round(float(a[:, 0].mean()), 4),
                "near": round(float(a[:, 1].mean()), 4),
                "mean_shift": round(float(a[:, 2].mean()), 4),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("benchmark", help="a saved synthetic benchmark folder")
    ap.add_argument("results", help="results folder: <session id>/turn<k>.png")
    ap.add_argument("--near", type=float, default=0.1, help="a pixel is near when every channel is within this")
    args = ap.parse_args()
    if not 0 < args.near <= 2:
        ap.error(f"--near {args.near}: must be in (0, 2]")
    for row in context_drift(args.benchmark, args.results, args.near):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
