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
) -> Path:
    """Run editing sessions through `vincie_cli.edit.run_sessions`; return the results folder.

    sessions: [{"id": str, "images": [paths], "prompts": [str, ...]}, ...]; outputs land in
    `<out_dir>/<id>/turn{k}.png` (k = 1..K) with `<out_dir>/<id>/session.json`; `run_sessions`
    skips sessions it already finished.

    no_context: each turn edits only the previous turn's output, without the session history
    (paper §4.4's chained baseline): turn k runs as one-turn sessions `<id>__turn{k}` under
    `<out_dir>/_turns/`, whose outputs (and chain-of-editing masks) are copied to `<out_dir>/<id>/turn{k}...`.
    """
    run_sessions = _run_sessions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
            made = turn_image(out / "_turns", b["id"], 1)
            if made is None:
                log.warning("%s: no image for turn %d", b["id"], k)
                continue
            sid = b["id"].rsplit("__turn", 1)[0]
            # chain-of-editing's predicted masks come along, so the scorer's mask IoU covers this baseline too
            for mask in sorted(made.parent.glob("turn1_mask_*")):
                with atomic_path(out / sid / mask.name.replace("turn1_", f"turn{k}_", 1)) as tmp:
                    shutil.copyfile(mask, tmp)
            with atomic_path(out / sid / f"turn{k}{made.suffix}") as tmp:
                shutil.copyfile(made, tmp)
    return out
