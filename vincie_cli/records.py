"""The contract between stages: the JSON records that `annotate`, `segment` and `build-sessions` exchange.

Stages talk only through these records (and the files they point to), never through each other's
internals. All records are plain JSON objects; the helpers here validate and normalise them.
Paths inside a record are relative to the directory of the JSON-lines file that holds it (see
`resolve_path`), so an output folder can be moved or copied as a whole.

A clip record (one line of `annotations.jsonl`, extended in place by `segment`):

    {"type": "clip", "clip_id": "9f2c...", "source": "videos/a.mp4", "source_caption": null,
     "clip_start": 0.0, "clip_end": 4.96, "width": 256, "height": 256, "crop": null,
     "frames": [{"index": 0, "time": 0.5, "path": "clips/9f2c.../000.png"}, ...],
     "transitions": [{"index": 0, "src": 0, "dst": 1, "annotation": {...ANNOTATION...},
                      "raw": "<the model's reply>", "attempts": 1, "roe": null}, ...],
     "backend": "openai", "model": "qwen2.5-vl-72b", "prompt_version": "v1", "provenance": {...}}

An annotation (the JSON object a VLM returns for one adjacent frame pair; see ANNOTATION_KEYS):

    {"frame1_caption": {"caption": "...", "characters": [{"id": "char1", "description": "..."}],
                        "objects": [{"id": "obj1", "description": "a small red circle"}]},
     "frame2_caption": {...same shape...},
     "character_change": [ENTITY_CHANGE, ...], "object_change": [ENTITY_CHANGE, ...],
     "global_change": "", "camera_change": {"motion": "pan-left", "detail": "..."},
     "other_change": "", "summary_change": "Move the red circle to the left."}

    ENTITY_CHANGE = {"id": "obj1", "description": "a small red circle", "change": "move",
                     "detail": "moves to the left"}   # change in CHANGE_KINDS

An RoE entry (added by `segment` as transition["roe"]):

    {"rule": "entities", "queries": ["a small red circle"], "src_mask": "masks/.../000_src.png",
     "dst_mask": "masks/.../000_dst.png", "src_coverage": 0.04, "dst_coverage": 0.05,
     "boxes": {"src": [[x0, y0, x1, y1], ...], "dst": [...]}, "scores": {"src": [...], "dst": [...]},
     "labels": {"src": [...], "dst": [...]}, "src_queries": [...], "dst_queries": [...],
     "backend": "grounded-sam2", "model": "..."}
    rule in ROE_RULES; masks are 1-bit PNGs of the frame size, white = region of edit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vincie_cli.utils.io import BadInputError

ANNOTATION_KEYS = (
    "frame1_caption",
    "frame2_caption",
    "character_change",
    "object_change",
    "global_change",
    "camera_change",
    "other_change",
    "summary_change",
)

# What happened to one character or object between the two frames.
CHANGE_KINDS = ("appear", "disappear", "move", "attribute", "interaction", "pose", "other")

# Camera motion vocabulary (paper appendix C); "static" when the camera does not move.
CAMERA_MOTIONS = ("static", "orbit", "dolly-in", "dolly-out", "pan-left", "pan-right", "tilt-up", "tilt-down")

# How segment built a transition's region-of-edit masks.
ROE_RULES = (
    "entities",  # union of the masks of the changed / appearing / disappearing entities
    "global",  # a global change (style, lighting, background): full-frame masks
    "camera",  # camera motion only: no masks (every pixel moves; an RoE would say nothing)
    "none",  # nothing changed that could be localised, or nothing was detected: no masks
)

PROMPT_VERSION = "v1"


def camera_tag(motion: str | None) -> str:
    """The camera tag prepended to a turn's text, in the released model's format."""
    return f"[###CAMERA: {motion or 'None'}###] "


def _err(where: str, msg: str) -> BadInputError:
    return BadInputError(f"{where}: {msg}")


def _entities(value: Any, where: str) -> list[dict[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _err(where, "expected a list of {id, description}")
    out = []
    for i, ent in enumerate(value):
        if isinstance(ent, str):
            ent = {"id": f"e{i + 1}", "description": ent}
        if not isinstance(ent, dict) or not isinstance(ent.get("description", ""), str):
            raise _err(where, f"entry {i} is not an object with a description")
        out.append({"id": str(ent.get("id", f"e{i + 1}")), "description": str(ent.get("description", ""))})
    return out


def _caption(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"caption": value, "characters": [], "objects": []}
    if not isinstance(value, dict):
        raise _err(where, "expected a caption object or string")
    return {
        "caption": str(value.get("caption", "")),
        "characters": _entities(value.get("characters"), f"{where}.characters"),
        "objects": _entities(value.get("objects"), f"{where}.objects"),
    }


def _changes(value: Any, where: str) -> list[dict[str, str]]:
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        return [{"id": "", "description": "", "change": "other", "detail": value}]
    if not isinstance(value, list):
        raise _err(where, "expected a list of changes")
    out = []
    for i, ch in enumerate(value):
        if isinstance(ch, str):
            ch = {"change": "other", "detail": ch}
        if not isinstance(ch, dict):
            raise _err(where, f"entry {i} is not an object")
        kind = str(ch.get("change", "other")).lower().strip()
        if kind not in CHANGE_KINDS:
            kind = "other"
        out.append(
            {
                "id": str(ch.get("id", "")),
                "description": str(ch.get("description", "")),
                "change": kind,
                "detail": str(ch.get("detail", "")),
            }
        )
    return out


def _camera(value: Any, where: str) -> dict[str, str]:
    if value is None or value == "":
        return {"motion": "static", "detail": ""}
    if isinstance(value, str):
        motion = value.strip().lower()
        return {"motion": motion if motion in CAMERA_MOTIONS else "static", "detail": value}
    if not isinstance(value, dict):
        raise _err(where, "expected {motion, detail}")
    motion = str(value.get("motion", "static")).strip().lower().replace("_", "-").replace(" ", "-")
    if motion in ("none", "", "no", "fixed", "still"):
        motion = "static"
    if motion not in CAMERA_MOTIONS:
        raise _err(where, f"unknown camera motion {motion!r}; expected one of {', '.join(CAMERA_MOTIONS)}")
    return {"motion": motion, "detail": str(value.get("detail", ""))}


def normalize_annotation(obj: Any, where: str = "annotation") -> dict[str, Any]:
    """Validate an annotation object and return it in canonical form.

    Raises BadInputError naming `where` and the offending key. Lenient where it is safe (a caption
    given as a plain string, a change list given as a string), strict where meaning would be lost
    (missing keys, an empty summary, an unknown camera motion).
    """
    if not isinstance(obj, dict):
        raise _err(where, "expected a JSON object")
    missing = [k for k in ANNOTATION_KEYS if k not in obj]
    if missing:
        raise _err(where, f"missing keys: {', '.join(missing)}")
    summary = obj["summary_change"]
    if not isinstance(summary, str) or not summary.strip():
        raise _err(where, "summary_change must be a non-empty string")
    return {
        "frame1_caption": _caption(obj["frame1_caption"], f"{where}.frame1_caption"),
        "frame2_caption": _caption(obj["frame2_caption"], f"{where}.frame2_caption"),
        "character_change": _changes(obj["character_change"], f"{where}.character_change"),
        "object_change": _changes(obj["object_change"], f"{where}.object_change"),
        "global_change": str(obj["global_change"] or ""),
        "camera_change": _camera(obj["camera_change"], f"{where}.camera_change"),
        "other_change": str(obj["other_change"] or ""),
        "summary_change": summary.strip(),
    }


def changed_entities(annotation: dict[str, Any]) -> list[dict[str, str]]:
    """All entity changes (characters first, then objects) of a normalised annotation."""
    return list(annotation.get("character_change", [])) + list(annotation.get("object_change", []))


def validate_clip(rec: Any, where: str = "record") -> dict[str, Any]:
    """Check the fields every stage relies on in a clip record; return it unchanged."""
    if not isinstance(rec, dict):
        raise _err(where, "expected a JSON object")
    for key in ("clip_id", "frames", "transitions"):
        if key not in rec:
            raise _err(where, f"missing key {key!r}")
    frames = rec["frames"]
    if not isinstance(frames, list) or len(frames) < 2:
        raise _err(where, "a clip needs at least 2 frames")
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "path" not in fr:
            raise _err(where, f"frames[{i}] has no path")
    for i, tr in enumerate(rec["transitions"]):
        if not isinstance(tr, dict) or not {"src", "dst", "annotation"} <= set(tr):
            raise _err(where, f"transitions[{i}] needs src, dst and annotation")
        if not (0 <= tr["src"] < len(frames) and 0 <= tr["dst"] < len(frames)):
            raise _err(where, f"transitions[{i}] points at a frame that does not exist")
    return rec


def resolve_path(path: str, base_dir: str | os.PathLike) -> Path:
    """A record path (relative to the JSON-lines file's directory, or absolute) as a usable Path."""
    p = Path(path)
    return p if p.is_absolute() else Path(base_dir) / p


def rebase_path(path: str, from_dir: str | os.PathLike, to_dir: str | os.PathLike) -> str:
    """Re-express a record path stored relative to `from_dir` as relative to `to_dir`."""
    absolute = resolve_path(path, from_dir).resolve()
    return Path(os.path.relpath(absolute, Path(to_dir).resolve())).as_posix()


def rebase_clip(rec: dict[str, Any], from_dir: str | os.PathLike, to_dir: str | os.PathLike) -> dict[str, Any]:
    """A copy of a clip record whose frame and mask paths are relative to `to_dir`."""
    import copy

    out = copy.deepcopy(rec)
    source = out.get("source")
    if isinstance(source, str) and source and not Path(source).is_absolute() and "://" not in source:
        out["source"] = rebase_path(source, from_dir, to_dir)
    for fr in out["frames"]:
        fr["path"] = rebase_path(fr["path"], from_dir, to_dir)
    for tr in out["transitions"]:
        roe = tr.get("roe")
        if roe:
            for key in ("src_mask", "dst_mask"):
                if roe.get(key):
                    roe[key] = rebase_path(roe[key], from_dir, to_dir)
    return out
