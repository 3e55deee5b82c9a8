"""The synthetic benchmark: held-out sessions of the synthetic world, scored by its objective scorer per turn.

Per turn: success rate (cumulative, like MSE-Bench: a session stops counting at its first failed
turn), the per-turn success rate (each turn judged on its own input), PSNR and SSIM against the
exact expected frame, and mask IoU against the expected change regions when the results carry
chain-of-editing masks.

Results folder: `<dir>/<session id>/turn{k}.png`, plus optional masks `turn{k}_src.png` /
`turn{k}_dst.png` (the benchmark's own names; `turn{k}_{current,next}_mask.png`,
`turn{k}_mask_{src,dst}.png` and mask paths listed in `<dir>/<id>/session.json` are accepted too).
The benchmark's `images/` folder is itself a valid results folder (the exact frames: 100%).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vincie_cli.eval.common import IMAGE_EXTS, describe_missing, open_rgb, turn_image
from vincie_cli.utils.io import BadInputError, UsageError, atomic_write_json, write_jsonl
from vincie_cli.utils.log import get_logger, progress

log = get_logger(__name__)

MASK_ALIASES = {"src": ("src", "current", "cur", "mask_src"), "dst": ("dst", "next", "mask_dst")}


def load_or_make(
    benchmark: str | None,
    out_dir: Path,
    sessions: int,
    size: int,
    turns: int,
    seed_offset: int,
    limit: int | None = None,
) -> tuple[list[Any], Path]:
    """A saved benchmark folder, or `sessions` fresh held-out sessions saved under `<out_dir>/benchmark`
    (reused when a previous run made the same ones)."""
    from vincie_cli.synth.benchmark import load_benchmark, make_benchmark, save_benchmark

    if benchmark is not None:
        folder = Path(benchmark)
        items = load_benchmark(folder)
    else:
        folder = out_dir / "benchmark"
        meta = folder / "benchmark.json"
        want = {"sessions": sessions, "size": [size, size], "turns": turns, "seed_offset": seed_offset}
        items = None
        if meta.is_file() and (folder / "made_with.json").is_file():
            if json.loads((folder / "made_with.json").read_text()) == want:
                items = load_benchmark(folder)
        if items is None:
            if sessions < 1 or turns < 1 or size < 16:
                raise UsageError("--sessions and --turns must be at least 1 and --size at least 16")
            log.info("making %d held-out synthetic sessions (%dx%d, %d turns)", sessions, size, size, turns)
            items = make_benchmark(sessions, size, seed_offset=seed_offset, turns=turns)
            save_benchmark(items, folder)
            atomic_write_json(folder / "made_with.json", want)
    if not items:
        raise BadInputError(f"{folder}: the benchmark has no sessions")
    return (items[:limit] if limit else items), folder


def generation_sessions(
    items: list[Any], folder: Path, swap_instructions: bool = False, true_masks: bool = False
) -> list[dict[str, Any]]:
    """What `vincie edit` runs: each session's start frame and its instructions.

    true_masks: every turn gets the benchmark's true change masks as its current and next masks (mask
    control: where the edit goes is given, the model only has to make it; a background change's cover the
    frame); a turn saved without masks would be generated as usual.

    swap_instructions: the instruction control. Session i gets the instructions of session i + n // 2 (turn k
    takes that session's instruction k, cycling when it has fewer turns) while it is still scored against its
    own expected frames, so a model that reads its instructions scores lower than with its own.
    """
    n = len(items)
    if swap_instructions and n < 2:
        raise UsageError("--swap-instructions needs at least 2 sessions")
    out = []
    for i, s in enumerate(items):
        prompts = list(s.instructions)
        if swap_instructions:
            other = items[(i + max(1, n // 2)) % n].instructions
            prompts = [other[k % len(other)] for k in range(len(prompts))]
        session = {"id": s.id, "images": [str(folder / "images" / s.id / "start.png")], "prompts": prompts}
        if true_masks:
            session["masks"] = [
                {"current": str(folder / "masks" / s.id / f"turn{k}_src.png"),
                 "next": str(folder / "masks" / s.id / f"turn{k}_dst.png")}
                if t.roe.src is not None else None
                for k, t in enumerate(s.turns, 1)
            ]  # fmt: skip
        out.append(session)
    return out


def true_frames(items: list[Any], folder: Path) -> dict[str, list[str]]:
    """{session id: the benchmark's exact image after turns 1..K-1} (the exact-history control's context)."""
    return {s.id: [str(folder / "images" / s.id / f"turn{k}.png") for k in range(1, len(s.turns))] for s in items}


def _session_json_masks(results: Path, sid: str) -> dict[tuple[int, str], Path]:
    """Mask paths listed per turn in `<results>/<id>/session.json` (keys holding 'mask'), if any."""
    p = results / sid / "session.json"
    found: dict[tuple[int, str], Path] = {}
    if not p.is_file():
        return found
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return found
    turns = obj.get("turns") if isinstance(obj, dict) else None
    for k, t in enumerate(turns if isinstance(turns, list) else [], 1):
        if not isinstance(t, dict):
            continue
        for key, value in t.items():
            if "mask" not in key or not isinstance(value, str):
                continue
            role = (
                "src"
                if any(a in key for a in ("src", "current", "cur"))
                else "dst"
                if any(a in key for a in ("dst", "next"))
                else None
            )
            path = (p.parent / value) if not Path(value).is_absolute() else Path(value)
            if role and path.is_file():
                found[(int(t.get("turn", k)), role)] = path
    return found


def find_mask(results: Path, sid: str, turn: int, role: str, listed: dict[tuple[int, str], Path]) -> Path | None:
    if (turn, role) in listed:
        return listed[(turn, role)]
    folder = results / sid
    for alias in MASK_ALIASES[role]:
        for stem in (f"turn{turn}_{alias}", f"turn{turn}_{alias}_mask", f"turn{turn}_mask_{alias}"):
            for ext in IMAGE_EXTS:
                if (folder / f"{stem}{ext}").is_file():
                    return folder / f"{stem}{ext}"
    return None


def run_synthetic(
    items: list[Any], results: Path, out_dir: Path, allow_missing: bool = False, exact_inputs: bool = False
) -> dict[str, Any]:
    """Score a results folder with the synthetic world's scorer; per-session details go to `<out_dir>/scores.jsonl`.

    exact_inputs: the images were made from the exact earlier frames (`--true-history`), so turn k is judged
    against the exact frame k-1 rather than the results' turn k-1 image (`score_session`)."""
    from vincie_cli.synth.scorer import aggregate, by_kind, object_share, score_session

    if not results.is_dir():
        raise BadInputError(f"{results}: results folder not found")
    images: dict[str, list[Path | None]] = {}
    incomplete: dict[str, list[int]] = {}
    for s in items:
        images[s.id] = [turn_image(results, s.id, k) for k in range(1, len(s.turns) + 1)]
        gaps = [k for k, p in enumerate(images[s.id], 1) if p is None]
        if gaps:
            incomplete[s.id] = gaps
    if sum(len(v) for v in incomplete.values()) == sum(len(s.turns) for s in items):
        raise BadInputError(
            f"{results}: no result images for any session "
            f"(expected <id>/turn1.png .., e.g. {results / items[0].id / 'turn1.png'})"
        )
    if incomplete and not allow_missing:
        raise BadInputError(
            f"{results}: {describe_missing(incomplete, len(items))}; generate them, or pass --allow-missing "
            f"to count missing turns as failed"
        )
    warnings: list[str] = []
    scores = []
    with_masks = 0
    for s in progress(items, desc="scoring"):
        listed = _session_json_masks(results, s.id)
        imgs: list[Any] = []
        masks: list[Any] = []
        for k, p in enumerate(images[s.id], 1):
            if p is None:
                imgs.append(None)
                masks.append(None)
                continue
            img = open_rgb(p)
            if img.size != tuple(s.size):
                warnings.append(
                    f"{p}: {img.size[0]}x{img.size[1]}, the benchmark frame is {s.size[0]}x{s.size[1]}; resized"
                )
            imgs.append(img)
            src, dst = (find_mask(results, s.id, k, r, listed) for r in ("src", "dst"))
            if src is None and dst is None:
                masks.append(None)
            else:
                with_masks += 1
                masks.append((_mask(src), _mask(dst)))
        scores.append(score_session(s, imgs, masks=masks, exact_inputs=exact_inputs))
    for w in warnings[:5]:
        log.warning("%s", w)
    write_jsonl(out_dir / "scores.jsonl", [sc.to_dict() for sc in scores])
    rows = aggregate(scores)
    every_turn = [t for sc in scores for t in sc.turns]
    n_turns = len(rows)
    names = ["success_rate", "turn_success_rate", "psnr", "ssim", "iou_src", "iou_dst", "edited_right", "kept_intact"]
    metrics = {m: [r[m] for r in rows] for m in names}
    if not with_masks:
        metrics.pop("iou_src")
        metrics.pop("iou_dst")
    # made from the exact history, turns are independent: each turn's own success leads, not the cumulative one
    lead = [] if exact_inputs else ["success_rate"]
    lead += ["turn_success_rate", "kept_intact", "psnr", "ssim"] + [m for m in ("iou_dst", "iou_src") if m in metrics]
    failures = [{"session": sid, "turns": turns, "status": "missing"} for sid, turns in incomplete.items()]
    return {
        "benchmark": "synthetic",
        "n_sessions": len(items),
        "turns": list(range(1, n_turns + 1)),
        "metrics": metrics,
        "plot_metrics": lead,
        "higher_is_better": {m: True for m in metrics},
        "summary": {
            f"success_rate_turn{n_turns}": metrics["success_rate"][-1],
            **({f"turn_success_rate_turn{n_turns}": metrics["turn_success_rate"][-1]} if exact_inputs else {}),
            "mean_successful_turns": round(sum(sc.successful_turns for sc in scores) / len(scores), 4),
            "edited_objects_right": object_share(every_turn, changed=True),
            "kept_objects_intact": object_share(every_turn, changed=False),
            "turns_with_masks": with_masks,
        },
        "by_kind": by_kind(scores),
        "config": {"results": str(results)},
        "failures": failures,
        "warnings": warnings,
    }


def _mask(path: Path | None) -> Any:
    if path is None:
        return None
    import numpy as np

    img = open_rgb(path)
    return np.asarray(img.convert("L")) > 127
