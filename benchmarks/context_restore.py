"""Does a model take back from its context what its source image lost? An erasure test on a synthetic benchmark.

    python benchmarks/context_restore.py MODEL data/bench64b -o evals/restore
    python benchmarks/context_restore.py runs/mini/step-00001200 data/bench64b -o evals/restore --limit 50 \
        --gen-set steps=1 --gen-set shift=3 --gen-set guidance=1

In a multi-turn session an editor's own outputs drift, and an object its turn k-1 spoiled is spoiled in the
source of turn k. With the session as context the earlier frames still show that object, so a model that
reads its context can put it back; one given the source alone cannot. This measures exactly that, on the
exact history (no earlier error of the model's own). For every turn k >= 2 it picks the largest object that
neither turn k-1 nor turn k touches (the same visible mask in frames k-2, k-1 and k, and the same pixels in
its box: the mask's bounding box grown by a pixel and snapped out to the 4-pixel grid the `mini` autoencoder
packs, at most a quarter of the frame), blanks that box in frame k-1 to the frame's mean colour (as
`tasks.degrade_erase` does in training), and makes turn k four ways: from the erased or the exact source,
with the exact session before it as context or from the source alone.

Per condition it prints one JSON line: `cases`, `restored` (the share whose output has the erased object
where frame k has it: its colour's largest blob within the scorer's kept-object tolerances of the expected
one) and `box_mse` (the mean squared error inside the box, pixels in [-1, 1]); then the paired counts of the
erased source with and without context (`only_context`, `only_no_context`, the sign test's `p`). The exact
source's rows are the ceiling (what the model keeps when nothing was lost); the `copy_erased_source` row,
the erased source itself scored as the output, is the floor (what an editor that restores nothing gets).
Generation resumes: finished turns under OUT are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GRID = 4  # the `mini` pixel autoencoder packs 4x4 blocks: an erased box covers whole latent positions
CONDITIONS = ("erased_context", "erased_no_context", "exact_context", "exact_no_context")
COPY = "copy_erased_source"  # the reference row: the erased source itself scored as the output


@dataclass(frozen=True)
class Case:
    """Turn `turn` (>= 2) of session `sid` with object `obj` (its colour `colour`) erased from its source."""

    sid: str
    turn: int
    obj: str
    colour: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), on the GRID


def _box(mask: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The mask's bounding box grown by one pixel and snapped outward to the GRID, inside the frame (W, H)."""
    ys, xs = np.nonzero(mask)
    w, h = size
    x0, y0 = max(0, int(xs.min()) - 1) // GRID * GRID, max(0, int(ys.min()) - 1) // GRID * GRID
    x1 = min(w, -(-(int(xs.max()) + 2) // GRID) * GRID)
    y1 = min(h, -(-(int(ys.max()) + 2) // GRID) * GRID)
    return x0, y0, x1, y1


def erase_cases(sessions: list[Any], max_share: float = 0.25) -> list[Case]:
    """One case per turn k >= 2 of the benchmark `sessions` that has an object untouched by turns k-1 and k
    whose box covers at most `max_share` of the frame: the one with the largest visible area."""
    from vincie_cli.synth.render import render_masks

    cases = []
    for s in sessions:
        states = [s.start_state] + [t.state for t in s.turns]
        frames = [s.start_image] + [t.image for t in s.turns]
        masks = [render_masks(st, s.size) for st in states]
        for k in range(2, len(s.turns) + 1):
            best: tuple[int, Case] | None = None
            colours = {o.id: o.colour for o in states[k].present_objects}
            for oid, colour in colours.items():
                three = [masks[j].get(oid) for j in (k - 2, k - 1, k)]
                if any(m is None for m in three) or not all(np.array_equal(three[0], m) for m in three[1:]):
                    continue
                x0, y0, x1, y1 = box = _box(three[0], s.size)
                if (x1 - x0) * (y1 - y0) > max_share * s.size[0] * s.size[1]:
                    continue
                crops = [frames[j][y0:y1, x0:x1] for j in (k - 2, k - 1, k)]
                if not all(np.array_equal(crops[0], c) for c in crops[1:]):
                    continue  # something else moved through the box
                area = int(three[0].sum())
                if best is None or area > best[0]:
                    best = (area, Case(s.id, k, oid, colour, box))
            if best is not None:
                cases.append(best[1])
    return cases


def erase(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 (H, W, 3): `frame` with `box` filled with the frame's mean colour."""
    x0, y0, x1, y1 = box
    out = frame.copy()
    out[y0:y1, x0:x1] = np.round(frame.reshape(-1, 3).mean(0)).astype(np.uint8)
    return out


def _png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    from vincie_cli.utils.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def write_sources(sessions: list[Any], cases: list[Case], out: Path) -> dict[tuple[str, int], Path]:
    """{(session, turn): `<out>/<session>/turn{k-1}_erased.png`}: each case's erased source frame."""
    frames = {s.id: [s.start_image] + [t.image for t in s.turns] for s in sessions}
    paths = {}
    for c in cases:
        path = out / c.sid / f"turn{c.turn - 1}_erased.png"
        if not path.is_file():
            _png(erase(frames[c.sid][c.turn - 1], c.box), path)
        paths[(c.sid, c.turn)] = path
    return paths


def edit_sessions(
    bench: str | Path, sessions: list[Any], cases: list[Case], sources: dict[tuple[str, int], Path], condition: str
) -> list[dict[str, Any]]:
    """`vincie_cli.edit.run_sessions` input for one condition: one session `<id>__turn{k}` per case (the exact
    frames are the benchmark folder `bench`'s images)."""
    root = Path(bench)
    by_id = {s.id: s for s in sessions}
    out = []
    for c in cases:
        s = by_id[c.sid]
        folder = root / "images" / c.sid
        exact = [folder / "start.png"] + [folder / f"turn{j}.png" for j in range(1, c.turn)]
        source = sources[(c.sid, c.turn)] if condition.startswith("erased") else exact[c.turn - 1]
        one: dict[str, Any] = {"id": f"{c.sid}__turn{c.turn}", "prompts": [s.turns[c.turn - 1].instruction]}
        if condition.endswith("no_context"):
            one["images"] = [str(source)]
        else:
            frames = exact[1 : c.turn - 1] + [source]  # turns 1..k-1, the last one the source
            one["images"] = [str(exact[0])]
            one["history"] = [{"prompt": s.turns[j].instruction, "image": str(f)} for j, f in enumerate(frames)]
        out.append(one)
    return out


def score(sessions: list[Any], cases: list[Case], results: Path, context: bool) -> list[dict[str, Any] | None]:
    """Per case {"restored": bool, "box_mse": float} for the output under `results` (None: no output); with
    context a case's output is its session's turn k, without it turn 1."""
    from vincie_cli.eval.common import turn_image

    paths = [turn_image(results, f"{c.sid}__turn{c.turn}", c.turn if context else 1) for c in cases]
    return judge(sessions, cases, paths)


def judge(sessions: list[Any], cases: list[Case], paths: list[Path | None]) -> list[dict[str, Any] | None]:
    """Per case {"restored": bool, "box_mse": float} for the image at its path (None: no image)."""
    from vincie_cli.eval.common import open_rgb
    from vincie_cli.synth.scorer import Tolerances, detect_objects, min_object_area

    tol = Tolerances()
    truth = {s.id: s for s in sessions}
    out: list[dict[str, Any] | None] = []
    for c, path in zip(cases, paths):
        s = truth[c.sid]
        if path is None:
            out.append(None)
            continue
        img = np.asarray(open_rgb(path).convert("RGB"))
        exp = s.turns[c.turn - 1].image
        if img.shape != exp.shape:
            raise SystemExit(f"{path}: {img.shape[1]}x{img.shape[0]}, the benchmark is {exp.shape[1]}x{exp.shape[0]}")
        x0, y0, x1, y1 = c.box
        diff = (img[y0:y1, x0:x1].astype(np.float64) - exp[y0:y1, x0:x1]) / 127.5
        min_area, side = min_object_area(s.size), float(min(s.size))
        got, want = detect_objects(img, min_area).get(c.colour), detect_objects(exp, min_area).get(c.colour)
        restored = False
        if got and want:
            (gx, gy), (wx, wy) = got[0].centroid, want[0].centroid
            ratio = got[0].area / want[0].area
            close = np.hypot(gx - wx, gy - wy) / side <= tol.pos_tol
            restored = bool(close and 1 / tol.area_tol <= ratio <= tol.area_tol)
        out.append({"restored": restored, "box_mse": float((diff**2).mean())})
    return out


def summary(condition: str, scored: list[dict[str, Any] | None]) -> dict[str, Any]:
    have = [x for x in scored if x is not None]
    n = len(have)
    return {
        "condition": condition,
        "cases": n,
        "restored": round(sum(x["restored"] for x in have) / n, 4) if n else None,
        "box_mse": round(float(np.mean([x["box_mse"] for x in have])), 5) if n else None,
    }


def paired(a: list[dict[str, Any] | None], b: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Cases restored by only one of two conditions (both scored), with the exact two-sided sign test."""
    from vincie_cli.eval.compare import sign_test

    both = [(x["restored"], y["restored"]) for x, y in zip(a, b) if x is not None and y is not None]
    only_a = sum(x and not y for x, y in both)
    only_b = sum(y and not x for x, y in both)
    p = round(sign_test(only_a, only_b), 4)
    return {"pairs": len(both), "only_context": only_a, "only_no_context": only_b, "p": p}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a model folder or checkpoint (as `vincie edit --model`), or 'mini'")
    ap.add_argument("benchmark", help="a saved synthetic benchmark folder (vincie synth --sessions)")
    ap.add_argument("-o", "--out", required=True, help="output folder (erased sources, results); reruns resume")
    ap.add_argument("--limit", type=int, default=None, help="first N sessions only")
    ap.add_argument("--gen-set", action="append", default=[], metavar="KEY=VALUE", help="an edit setting")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from vincie_cli.edit.settings import parse_setting_pairs
    from vincie_cli.utils.io import UsageError

    try:
        settings: dict[str, Any] = {"seed": args.seed, "device": args.device, **parse_setting_pairs(args.gen_set)}
    except UsageError as e:
        ap.error(str(e))

    from vincie_cli.edit import run_sessions
    from vincie_cli.synth.benchmark import load_benchmark
    from vincie_cli.utils.io import VincieError

    try:
        sessions = load_benchmark(args.benchmark)[: args.limit]
        cases = erase_cases(sessions)
        if not cases:
            raise SystemExit(f"{args.benchmark}: no turn has an object that its turn and the one before leave alone")
        out = Path(args.out)
        sources = write_sources(sessions, cases, out / "sources")
        w, h = sessions[0].size
        settings.setdefault("resolution", int(round((w * h) ** 0.5)))  # as `vincie eval synthetic`
        model = None if args.model == "mini" else args.model
        scored = {}
        for cond in CONDITIONS:
            todo = edit_sessions(args.benchmark, sessions, cases, sources, cond)
            run_sessions(model, todo, out / cond, dict(settings))
            scored[cond] = score(sessions, cases, out / cond, context=not cond.endswith("no_context"))
    except VincieError as e:
        raise SystemExit(str(e)) from None
    for cond in CONDITIONS:
        print(json.dumps(summary(cond, scored[cond])))
    # the reference: an editor that returns its erased source unchanged
    print(json.dumps(summary(COPY, judge(sessions, cases, [sources[(c.sid, c.turn)] for c in cases]))))
    for source in ("erased", "exact"):
        pair = paired(scored[f"{source}_context"], scored[f"{source}_no_context"])
        print(json.dumps({"pair": f"{source}: context vs no context", **pair}))


if __name__ == "__main__":
    main()
