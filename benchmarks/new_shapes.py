"""What limits a synthetic run's cumulative score: the edits that draw a new shape.

    python benchmarks/new_shapes.py evals/e29-800-thctx

Reads a `vincie eval synthetic` folder's `scores.jsonl` (best one made with `--true-history`, so every turn is
scored on its own) and prints one JSON line with:
- `chained`: per turn k, the share of sessions whose turns 1..k all passed (the scorer's `counted`; with
  `--true-history`, the drift-free ceiling, docs/eval.md) and `product`, the product of the per-turn
  success rates up to k;
- `kinds`: per edit kind, turns and success rate; `shape_share`: the share of turns whose kind draws a shape
  where none was (`SHAPE_KINDS`: added, moved, swapped, turned), and `sessions_without` per turn k, the
  sessions with none of those kinds in turns 1..k;
- for the added and moved shapes: how many the scorer did not find at all, found wrong and found right, and
  the quartiles of the area ratio of those found wrong; for the turned shapes, the quartiles of the outline
  IoU at the expected angle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

SHAPE_KINDS = ("add", "move", "swap", "rotate")


def quartiles(values: list[float]) -> list[float] | None:
    """[q1, median, q3] (rounded), or None for fewer than two values."""
    if len(values) < 2:
        return None
    return [round(q, 2) for q in statistics.quantiles(values, n=4, method="inclusive")]


def analyse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """rows: `scores.jsonl` records (one per session, each with its scored `turns`)."""
    n = len(rows)
    n_turns = max(len(r["turns"]) for r in rows)
    chained, product, without = [], [], []
    p = 1.0
    for k in range(n_turns):
        have = [r for r in rows if len(r["turns"]) > k]
        p *= sum(r["turns"][k]["success"] for r in have) / len(have)
        product.append(round(p, 4))
        chained.append(round(sum(r["turns"][k]["counted"] for r in have) / len(have), 4))  # the scorer's cumulative
        without.append(sum(all(t["kind"] not in SHAPE_KINDS for t in r["turns"][: k + 1]) for r in have))
    kinds: dict[str, dict[str, float]] = {}
    placed = {"not_found": 0, "found_wrong": 0, "right": 0}
    ratios, ious = [], []
    for r in rows:
        for t in r["turns"]:
            kind = kinds.setdefault(t["kind"], {"turns": 0, "success": 0})
            kind["turns"] += 1
            kind["success"] += t["success"]
            for o in t["objects"]:
                if o["role"] not in ("edited", "added"):
                    continue
                if t["kind"] in ("add", "move"):
                    state = "right" if o["ok"] else "found_wrong" if o["found"] else "not_found"
                    placed[state] += 1
                    if state == "found_wrong" and o.get("size_ratio") is not None:
                        ratios.append(o["size_ratio"])
                if t["kind"] == "rotate" and o.get("shape_iou") is not None:
                    ious.append(o["shape_iou"])
    total = sum(k["turns"] for k in kinds.values())
    rates = {k: {"turns": v["turns"], "success": round(v["success"] / v["turns"], 4)} for k, v in sorted(kinds.items())}
    return {
        "sessions": n,
        "chained": chained,
        "product": product,
        "kinds": rates,
        "shape_share": round(sum(kinds[k]["turns"] for k in SHAPE_KINDS if k in kinds) / total, 4),
        "sessions_without": without,
        "added_or_moved": placed,
        "area_ratio_found_wrong": quartiles(ratios),
        "turned_outline_iou": quartiles(ious),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("eval_dir", help="a `vincie eval synthetic` output folder (with scores.jsonl)")
    args = ap.parse_args()
    path = Path(args.eval_dir) / "scores.jsonl"
    if not path.is_file():
        sys.exit(f"{path}: not found (run `vincie eval synthetic -o {args.eval_dir} ...` first)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        sys.exit(f"{path}: no sessions")
    print(json.dumps(analyse(rows)))


if __name__ == "__main__":
    main()
