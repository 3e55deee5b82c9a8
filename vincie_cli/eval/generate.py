"""Generation for the benchmarks: the one place where `eval` drives `vincie edit`.

Everything else in `eval` works on a results folder of already generated images, so a benchmark
can also be scored for outputs of any other tool laid out as `<dir>/<session id>/turn{k}.png`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from vincie_cli.eval.common import turn_image
from vincie_cli.utils.io import VincieError, atomic_path
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)


def _run_sessions() -> Any:
    try:
        from vincie_cli.edit import run_sessions
    except ImportError as e:
        raise VincieError(
            f"generating with --model needs `vincie edit` (vincie_cli.edit.run_sessions), which is not "
            f"available here ({e}); generate the images elsewhere and pass --results DIR"
        ) from None
    return run_sessions


def generate(
    model: Any,
    sessions: list[dict[str, Any]],
    out_dir: str | Path,
    settings: dict[str, Any],
    no_context: bool = False,
    true_frames: dict[str, list[str]] | None = None,
) -> Path:
    """Run editing sessions through `vincie_cli.edit.run_sessions`; return the results folder.

    sessions: [{"id": str, "images": [paths], "prompts": [str, ...]}, ...]; outputs land in
    `<out_dir>/<id>/turn{k}.png` (k = 1..K) with `<out_dir>/<id>/session.json`; `run_sessions`
    skips sessions it already finished.

    no_context: each turn edits only the previous turn's output, without the session history
    (paper §4.4's chained baseline): turn k runs as one-turn sessions `<id>__turn{k}` under
    `<out_dir>/_turns/`, whose outputs (and chain-of-editing masks) are copied to `<out_dir>/<id>/turn{k}...`.

    true_frames: {id: [the exact image after turn 1, 2, ...]}: the exact-history control. Every turn is made
    from the exact frames before it instead of the model's own earlier outputs (with context: the start image
    and turns 1..k-1 given, `EditSession.give`; with no_context: the exact frame k-1 alone), so turn k scores
    the model's turn-k edit without the errors of the turns before it. Runs as sessions `<id>__turn{k}`.
    """
    run_sessions = _run_sessions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if true_frames is not None:
        _generate_true_history(run_sessions, model, sessions, out, settings, no_context, true_frames)
        return out
    if not no_context:
        log.info("generating %d sessions with %s into %s", len(sessions), model, out)
        run_sessions(model, sessions, out, settings)
        return out
    n_turns = max(len(s["prompts"]) for s in sessions)
    for k in range(1, n_turns + 1):
        batch = []
        for s in sessions:
            if k > len(s["prompts"]) or turn_image(out, s["id"], k) is not None:
                continue
            prev = s["images"][-1] if k == 1 else turn_image(out, s["id"], k - 1)
            if prev is None:
                continue  # the previous turn failed to produce an image
            one = {"id": f"{s['id']}__turn{k}", "images": [str(prev)], "prompts": [s["prompts"][k - 1]]}
            if s.get("masks"):
                one["masks"] = [s["masks"][k - 1]]
            batch.append(one)
        if not batch:
            continue
        log.info("generating turn %d of %d without context (%d sessions)", k, n_turns, len(batch))
        run_sessions(model, batch, out / "_turns", settings)
        for b in batch:
            _collect(out, b["id"], 1, k)
    return out


def _generate_true_history(
    run_sessions: Any,
    model: Any,
    sessions: list[dict[str, Any]],
    out: Path,
    settings: dict[str, Any],
    no_context: bool,
    true_frames: dict[str, list[str]],
) -> None:
    """`generate`'s exact-history control: every turn of every session at once, as its own session."""
    batch = []
    for s in sessions:
        frames = true_frames[s["id"]]
        for k in range(1, len(s["prompts"]) + 1):
            if turn_image(out, s["id"], k) is not None:
                continue
            if k > 1 and len(frames) < k - 1:
                raise VincieError(f"session {s['id']}: no exact frame for turn {k - 1} (the exact-history control)")
            one: dict[str, Any] = {"id": f"{s['id']}__turn{k}", "prompts": [s["prompts"][k - 1]]}
            if no_context:
                one["images"] = [s["images"][-1] if k == 1 else str(frames[k - 2])]
            else:
                one["images"] = list(s["images"])
                if k > 1:
                    one["history"] = [{"prompt": s["prompts"][j], "image": str(frames[j])} for j in range(k - 1)]
            if s.get("masks"):
                one["masks"] = [s["masks"][k - 1]]
            batch.append(one)
    if not batch:
        return
    how = "from the exact frame before it" if no_context else "after the exact history"
    log.info("generating %d turns, each %s", len(batch), how)
    run_sessions(model, batch, out / "_turns", settings)
    for b in batch:
        k = int(b["id"].rsplit("__turn", 1)[1])
        _collect(out, b["id"], 1 if no_context else k, k)  # with context the session made it as its turn k


def _collect(out: Path, run_id: str, made_turn: int, turn: int) -> None:
    """Copy turn `made_turn` of `<out>/_turns/<id>__turn{k}` (image and predicted masks) to `<out>/<id>/turn{turn}`."""
    made = turn_image(out / "_turns", run_id, made_turn)
    if made is None:
        log.warning("%s: no image for turn %d", run_id, turn)
        return
    sid = run_id.rsplit("__turn", 1)[0]
    # chain-of-editing's predicted masks come along, so the scorer's mask IoU covers these runs too
    for mask in sorted(made.parent.glob(f"turn{made_turn}_mask_*")):
        with atomic_path(out / sid / mask.name.replace(f"turn{made_turn}_", f"turn{turn}_", 1)) as tmp:
            shutil.copyfile(mask, tmp)
    with atomic_path(out / sid / f"turn{turn}{made.suffix}") as tmp:
        shutil.copyfile(made, tmp)
