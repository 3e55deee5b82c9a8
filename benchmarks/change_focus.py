"""Does a model change the image where the edit is? The share of its change that falls inside the true region
of edit, per edit kind, for a synthetic benchmark and a folder of results (what `vincie eval synthetic` made).

    python benchmarks/change_focus.py runs/eval/benchmark runs/eval/generated            # a model's results
    python benchmarks/change_focus.py runs/eval/benchmark runs/eval/benchmark/images     # the exact frames

Per turn: d = |result - input| summed over RGB (input: the start frame for turn 1, else the result of the
previous turn, i.e. what the model was given), and the RoE = the union of the turn's true src / dst masks.
`inside` is the share of sum(d) that falls in the RoE, `area` the RoE's share of the image, and `focus` =
inside / area: how many times more change per pixel the RoE gets than the image on average (1: the change is
spread evenly, the exact frames score about 1 / area). Turns whose RoE covers 90 % of the image or more
(background changes, most camera moves) or whose result equals its input are skipped; a missing result ends
its session (the next turn's input is unknown). Success rates are near zero for a model that
is learning to find the object an instruction names; this moves before they do. Prints one JSON line per kind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def change_focus(bench: str | Path, results: str | Path, turns: int | None = None) -> dict[str, dict[str, float]]:
    """{kind: {"turns", "area", "inside", "focus"}} averaged over the scored turns (the first `turns` of each)."""
    from vincie_cli.eval.common import open_rgb, turn_image
    from vincie_cli.synth.benchmark import load_benchmark

    def pixels(p) -> np.ndarray:
        return np.asarray(open_rgb(p), dtype=np.float64)

    rows: dict[str, list[tuple[float, float]]] = {}
    for s in load_benchmark(bench):
        prev = np.asarray(s.start_image, dtype=np.float64)
        for k, t in enumerate(s.turns[:turns], 1):
            path = turn_image(Path(results), s.id, k)
            if path is None:
                break
            img = pixels(path)
            if img.shape != prev.shape:
                raise SystemExit(
                    f"{path}: {img.shape[1]}x{img.shape[0]}, the benchmark is {prev.shape[1]}x{prev.shape[0]}"
                )
            d = np.abs(img - prev).sum(-1)
            prev = img
            roe = np.zeros(d.shape, bool)
            for m in (t.roe.src, t.roe.dst):
                if m is not None:
                    roe |= np.asarray(m, bool)
            area = float(roe.mean())
            if not 0 < area < 0.9 or d.sum() == 0:
                continue
            rows.setdefault(t.kind, []).append((float(d[roe].sum() / d.sum()), area))
    out = {}
    for kind in sorted(rows):
        inside = np.array([a for a, _ in rows[kind]])
        area = np.array([b for _, b in rows[kind]])
        out[kind] = {
            "turns": len(inside),
            "area": round(float(area.mean()), 4),
            "inside": round(float(inside.mean()), 4),
            "focus": round(float(np.mean(inside / area)), 2),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("benchmark", help="a saved synthetic benchmark folder")
    ap.add_argument("results", help="results folder: <session id>/turn<k>.png")
    ap.add_argument("--turns", type=int, default=None, help="only the first N turns of each session")
    args = ap.parse_args()
    for kind, row in change_focus(args.benchmark, args.results, args.turns).items():
        print(json.dumps({"kind": kind, **row}))


if __name__ == "__main__":
    main()
