"""Batch mode: many editing sessions (a manifest, a benchmark), resumable, data-parallel over the processes of
an `accelerate launch` (or torchrun): process r of n runs sessions r, r + n, r + 2n, ... on its own GPU.

    run_sessions(model, sessions, out_dir, settings) -> list[result]

Each session is {"id": str, "images": [paths], "prompts": [str, ...], optional "seed": int, optional
"settings": {...}, optional "masks": one per prompt, null or {"current": path, "next": path} (either key;
the change masks of that turn, given instead of predicted), optional "history": [{"prompt": str, "image":
path}, ...] (turns given, not generated, before the prompts: `EditSession.give`)}; its outputs go to
`<out_dir>/<id>/turn{k}.png` (k = 1..K, the history's turns first) and `<out_dir>/<id>/session.json`.
A finished session is skipped, a partly finished one continues from its last finished turn, so a re-run
after a crash redoes only unfinished turns.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vincie_cli.edit.models import distributed_rank, load_model, with_model_defaults
from vincie_cli.edit.session import SESSION_FILE, EditSession, read_session
from vincie_cli.edit.settings import EditSettings, TurnControl
from vincie_cli.utils.io import BadInputError, VincieError, append_jsonl, read_jsonl
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)

_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*$")
SESSION_KEYS = {"id", "images", "prompts", "seed", "settings", "masks", "history"}


def check_session(s: Any, where: str = "session") -> dict[str, Any]:
    """Validate one session dict; BadInputError naming `where` and the problem."""
    if not isinstance(s, dict):
        raise BadInputError(f"{where}: expected an object with id, images and prompts")
    unknown = sorted(set(s) - SESSION_KEYS)
    if unknown:
        raise BadInputError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(SESSION_KEYS))})")
    sid = s.get("id")
    if not isinstance(sid, str) or not _ID.match(sid) or sid in (".", ".."):
        raise BadInputError(f"{where}: id {sid!r} must be a plain name (letters, digits, '.', '_', '-')")
    images, prompts = s.get("images"), s.get("prompts")
    if not isinstance(images, list) or not images or not all(isinstance(p, (str, os.PathLike)) for p in images):
        raise BadInputError(f"{where} {sid}: 'images' must be a non-empty list of paths")
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadInputError(f"{where} {sid}: 'prompts' must be a non-empty list of strings")
    if "seed" in s and (not isinstance(s["seed"], int) or isinstance(s["seed"], bool)):
        raise BadInputError(f"{where} {sid}: 'seed' must be an integer")
    if "settings" in s and not isinstance(s["settings"], dict):
        raise BadInputError(f"{where} {sid}: 'settings' must be an object")
    if "masks" in s:
        masks = s["masks"]
        if not (isinstance(masks, list) and len(masks) == len(prompts) and all(map(_mask_entry, masks))):
            raise BadInputError(
                f"{where} {sid}: 'masks' must hold one entry per prompt, each null or "
                '{"current": path, "next": path} (either key)'
            )
    if "history" in s:
        hist = s["history"]
        if not (isinstance(hist, list) and all(map(_history_entry, hist))):
            raise BadInputError(
                f'{where} {sid}: \'history\' must be a list of {{"prompt": str, "image": path}} (the given turns)'
            )
    return s


def _history_entry(h: Any) -> bool:
    return (
        isinstance(h, dict)
        and set(h) == {"prompt", "image"}
        and isinstance(h["prompt"], str)
        and isinstance(h["image"], (str, os.PathLike))
    )


def _mask_entry(m: Any) -> bool:
    """null, or {"current": path, "next": path} with at least one of the keys."""
    if m is None:
        return True
    if not isinstance(m, dict) or not m or not set(m) <= {"current", "next"}:
        return False
    return all(isinstance(p, (str, os.PathLike)) for p in m.values())


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Sessions from a JSON-lines manifest; relative image paths are taken relative to the manifest's folder."""
    path = Path(path)
    base = path.parent if str(path) != "-" else Path.cwd()
    sessions, seen = [], set()
    for i, rec in enumerate(read_jsonl(path, strict=True), 1):
        s = check_session(rec, f"{path}:{i}")
        if s["id"] in seen:
            raise BadInputError(f"{path}:{i}: duplicate session id {s['id']!r}")
        seen.add(s["id"])
        s = dict(s)
        s["images"] = [_relative_to(base, p) for p in s["images"]]
        if "masks" in s:
            s["masks"] = [None if m is None else {k: _relative_to(base, p) for k, p in m.items()} for m in s["masks"]]
        if "history" in s:
            s["history"] = [{"prompt": h["prompt"], "image": _relative_to(base, h["image"])} for h in s["history"]]
        sessions.append(s)
    if not sessions:
        raise BadInputError(f"{path}: the manifest holds no sessions")
    return sessions


def _relative_to(base: Path, path: str | os.PathLike) -> str:
    """A manifest path: absolute as given, else relative to the manifest's folder."""
    return str(path) if Path(path).is_absolute() else str(base / path)


def _done_turns(out: Path, session: dict[str, Any]) -> int:
    """How many of the session's turns (history, then prompts) are already in `out` (raises if the folder holds
    another session)."""
    if not (out / SESSION_FILE).is_file():
        return 0
    record = read_session(out / SESSION_FILE)
    done = [t["prompt"] for t in record["turns"]]
    if done != _all_prompts(session)[: len(done)]:
        raise VincieError(
            f"{out}: holds a session with other prompts than session {session['id']!r} of this run; "
            "remove it or use another output folder"
        )
    return len(done)


def _all_prompts(session: dict[str, Any]) -> list[str]:
    return [h["prompt"] for h in session.get("history", [])] + list(session["prompts"])


def run_sessions(
    model: Any,
    sessions: list[dict[str, Any]],
    out_dir: str | os.PathLike,
    settings: EditSettings | dict[str, Any] | None = None,
    *,
    keep_going: bool = True,
    on_turn: Callable[[dict[str, Any]], None] | None = None,
    on_session: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run editing sessions; returns one result per session this process handled, in input order.

    model: a model folder or hub id, a loaded `VincieModel`, or None (the packaged default); loaded once.
    settings: an `EditSettings`, or a dict of its fields (e.g. {"seed": 0, "steps": 20, "chain": "next"}).
    A session's "seed" overrides settings.seed; its "settings" dict overrides any other field.
    Result: {"id", "status": "done" | "skipped" (already finished) | "failed", "dir", "images": [turn PNGs],
    "error" (failed only)}. keep_going: record a failing session (in `<out_dir>/failures.jsonl`) and continue;
    otherwise raise. Under a multi-process launch the call returns after every process has finished.
    """
    base = settings if isinstance(settings, EditSettings) else EditSettings.from_dict(settings or {})
    given = None if isinstance(settings, EditSettings) else set(settings or {})
    sessions = [check_session(s, f"session {i}") for i, s in enumerate(sessions)]
    ids = [s["id"] for s in sessions]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise BadInputError(f"duplicate session id(s): {', '.join(dup)}")
    out_root = Path(out_dir)
    if out_root.exists() and not out_root.is_dir():
        raise BadInputError(f"{out_root}: exists and is not a folder")
    out_root.mkdir(parents=True, exist_ok=True)
    rank, world, _ = distributed_rank()
    mine = [s for i, s in enumerate(sessions) if i % world == rank]
    todo = []
    results: dict[str, dict[str, Any]] = {}
    for s in mine:
        out = out_root / s["id"]
        try:
            done = _done_turns(out, s)
        except VincieError as e:
            results[s["id"]] = _failed(out_root, s, e, keep_going)
            continue
        if done == len(_all_prompts(s)):
            results[s["id"]] = {"id": s["id"], "status": "skipped", "dir": str(out), "images": _images(out)}
        else:
            todo.append((s, done))
    if todo:
        loaded = load_model(model, base)
        if given is not None:
            base = with_model_defaults(base, given, loaded)
        for s, done in todo:
            out = out_root / s["id"]
            try:
                results[s["id"]] = _run_one(loaded, s, done, out, base, on_turn)
            except (VincieError, OSError) as e:
                results[s["id"]] = _failed(out_root, s, e, keep_going)
    log.info(
        "sessions: %d run, %d already finished, %d failed (process %d of %d)",
        sum(r["status"] == "done" for r in results.values()),
        sum(r["status"] == "skipped" for r in results.values()),
        sum(r["status"] == "failed" for r in results.values()),
        rank,
        world,
    )
    ordered = [results[s["id"]] for s in mine if s["id"] in results]
    if on_session is not None:
        for r in ordered:
            on_session(r)
    if world > 1:
        _barrier()
    return ordered


def _run_one(model, s: dict[str, Any], done: int, out: Path, base: EditSettings, on_turn) -> dict[str, Any]:
    overrides = dict(s.get("settings") or {})
    if "seed" in s:
        overrides["seed"] = s["seed"]
    settings = EditSettings.from_dict(overrides, base=base)

    def tag(rec: dict[str, Any]) -> None:
        if on_turn is not None:
            on_turn({**rec, "session": s["id"], "dir": str(out)})

    if (out / SESSION_FILE).is_file():
        log.info("%s: continuing after turn %d of %d", s["id"], done, len(_all_prompts(s)))
        sess = EditSession.open(model, out / SESSION_FILE, _changed(settings, out))
    else:
        sess = EditSession.create(model, s["images"], out, settings)
    history = s.get("history", [])
    for h in history[done:]:
        sess.give(h["prompt"], h["image"])
    done = max(0, done - len(history))
    masks = s.get("masks") or [None] * len(s["prompts"])
    controls = [
        TurnControl(mask=_str(m.get("next")), current_mask=_str(m.get("current"))) if m else None for m in masks
    ]
    sess.run(s["prompts"][done:], controls[done:], on_turn=tag)
    return {"id": s["id"], "status": "done", "dir": str(out), "images": _images(out)}


def _str(path: Any) -> str | None:
    return None if path is None else str(path)


def _changed(settings: EditSettings, out: Path) -> dict[str, Any]:
    """The fields of `settings` that differ from the session's recorded ones (the resume overrides)."""
    recorded = EditSettings.from_dict(read_session(out / SESSION_FILE)["settings"]).to_dict()
    return {k: v for k, v in settings.to_dict().items() if recorded.get(k) != v}


def _images(out: Path) -> list[str]:
    if not (out / SESSION_FILE).is_file():
        return []
    return [str(out / t["image"]) for t in read_session(out / SESSION_FILE)["turns"]]


def _failed(out_root: Path, s: dict[str, Any], e: BaseException, keep_going: bool) -> dict[str, Any]:
    if not keep_going:
        raise e
    log.error("session %s failed: %s", s["id"], e)
    rec = {"id": s["id"], "status": "failed", "dir": str(out_root / s["id"]), "images": [], "error": str(e)}
    append_jsonl(out_root / "failures.jsonl", {"type": "failure", **rec})
    return rec


def _barrier() -> None:
    """Wait for the other processes of the launch (so callers can read every session's outputs)."""
    try:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
    except Exception as e:  # a launch without a process group: nothing to wait for
        log.warning("could not synchronise with the other processes (%s); their sessions may still be running", e)
