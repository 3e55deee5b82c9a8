"""What do the rectangles of `tasks.degrade_erase` hide? For the image frames after the first of a few
training batches, blank one rectangle each the way `layouts.ContextDegrade` does, once placed anywhere and
once with `tasks.degrade_erase_at: kept`, and count the latent positions the blank changed (mean squared
change over channels above `flow.changed_threshold`) and how many of those the session's first image holds
at the same place (within the same threshold): what a model that reads its context could give back.

    python benchmarks/erase_coverage.py recipes/mini.yaml --set data.sources=[data/sessions2] --batches 6

The recipe's own `tasks.degrade_erase` sets the rectangles' size (0.5 when it is 0); fading and noise are
left out, so only the blank counts. Prints one JSON line per placement.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def coverage(recipe_path: str | Path, overrides: list[str], batches: int, seed: int = 0) -> dict[str, dict]:
    """{"anywhere" | "kept": {"frames", "changed", "recoverable", "frames_changed"}}: per image frame after the
    first, the mean number of positions the blank changed and of those the first image holds."""
    import torch

    from vincie_cli.model.layouts import ContextDegrade, image_frames, kept_content
    from vincie_cli.train import loop
    from vincie_cli.train.recipe import load_recipe

    recipe = load_recipe(Path(recipe_path), [*overrides, "train.threads=1"])
    erase = recipe.tasks.degrade_erase or 0.5
    thr = recipe.flow.changed_threshold
    counts: dict[str, list[tuple[int, int]]] = {"anywhere": [], "kept": []}
    gen = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        state = loop.setup(recipe, Path(tmp) / "run")
        try:
            n = 0
            for _ in range(batches):
                batch = state.batcher.next_batch()
                for p, lat in zip(batch, loop.encode_batch(state, batch, gen)):
                    is_image = image_frames(p.comp.tasks, len(lat))
                    for f in range(1, len(lat)):
                        if not is_image[f]:
                            continue  # a mask frame: never degraded
                        n += 1
                        held = (lat[f] - lat[0]).pow(2).mean(-1) <= thr  # what the first image holds here
                        for at in counts:
                            where = kept_content(lat[f], lat[0], thr) if at == "kept" else None
                            out = ContextDegrade(1.0, 0.0, 0.0, erase, at).apply(
                                lat[f], torch.Generator().manual_seed(seed * 100_003 + n), where
                            )
                            changed = (out - lat[f]).pow(2).mean(-1) > thr
                            counts[at].append((int(changed.sum()), int((changed & held).sum())))
        finally:
            state.lock.release()
    res = {}
    for at, rows in counts.items():
        k = max(len(rows), 1)
        res[at] = {
            "frames": len(rows),
            "changed": round(sum(c for c, _ in rows) / k, 2),
            "recoverable": round(sum(r for _, r in rows) / k, 2),
            "frames_changed": sum(c > 0 for c, _ in rows),
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipe", help="a training recipe (its data, resolution, erase size and threshold)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from vincie_cli.utils.io import VincieError

    try:
        res = coverage(args.recipe, args.overrides, args.batches, args.seed)
    except VincieError as e:
        raise SystemExit(f"error: {e}") from None
    for at, row in res.items():
        print(json.dumps({"erase_at": at, **row}))


if __name__ == "__main__":
    main()
