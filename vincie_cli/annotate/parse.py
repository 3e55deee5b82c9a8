"""From a model's reply to a validated annotation: extraction, safe repair, validation.

Models wrap JSON in prose, code fences or <think> blocks, leave trailing commas, write Python
literals or single quotes, and sometimes get cut off. `parse_annotation` finds the JSON object in the
reply, repairs only what has a single meaning, maps common camera-motion synonyms onto the
vocabulary, and validates through `records.normalize_annotation`. Anything else raises ParseError
with a short reason, which the runner feeds back into the retry prompt.
"""

from __future__ import annotations

import json
import re
from typing import Any

from vincie_cli.records import ANNOTATION_KEYS, CAMERA_MOTIONS, normalize_annotation
from vincie_cli.utils.io import BadInputError


class ParseError(ValueError):
    """A reply that does not hold a usable annotation; str() is a one-line reason."""


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON|javascript|js)?[ \t]*\n?(.*?)```", re.DOTALL)

CAMERA_SYNONYMS = {
    "none": "static",
    "no-motion": "static",
    "no-movement": "static",
    "stationary": "static",
    "fixed": "static",
    "still": "static",
    "zoom-in": "dolly-in",
    "push-in": "dolly-in",
    "dolly-forward": "dolly-in",
    "move-in": "dolly-in",
    "zoom-out": "dolly-out",
    "pull-out": "dolly-out",
    "pull-back": "dolly-out",
    "dolly-back": "dolly-out",
    "dolly-backward": "dolly-out",
    "move-out": "dolly-out",
    "arc": "orbit",
    "rotate": "orbit",
    "rotation": "orbit",
    "orbit-left": "orbit",
    "orbit-right": "orbit",
    "pan-up": "tilt-up",
    "pan-down": "tilt-down",
    "truck-left": "pan-left",
    "truck-right": "pan-right",
}


def _spans(text: str) -> list[tuple[int, int | None]]:
    """(start, end) of each top-level {...} in `text`, end None when the object never closes.

    Braces inside double-quoted strings are ignored.
    """
    spans: list[tuple[int, int | None]] = []
    depth = 0
    start = 0
    in_str = False
    esc = False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and depth > 0:
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1))
    if depth > 0:
        spans.append((start, None))
    return spans


def _convert_single_quotes(text: str) -> str | None:
    """Single-quoted JSON-ish text -> JSON, or None when a quote's role is ambiguous.

    A single quote opens a string only right after one of `{[:,` and closes it only right before
    one of `:,}]` (ignoring spaces), so apostrophes inside words survive.
    """
    out = []
    in_str = False
    n = len(text)
    i = 0
    prev = ""  # last non-space character outside strings
    while i < n:
        ch = text[i]
        if not in_str:
            if ch == "'":
                if prev not in ("{", "[", ":", ","):
                    return None
                in_str = True
                out.append('"')
            elif ch == '"':
                return None
            else:
                out.append(ch)
                if not ch.isspace():
                    prev = ch
        else:
            if ch == "\\" and i + 1 < n:
                out.append(text[i : i + 2])
                i += 2
                continue
            if ch == "'":
                rest = text[i + 1 :].lstrip()
                if not rest or rest[0] in ":,}]":
                    in_str = False
                    out.append('"')
                    prev = "'"
                else:
                    out.append("'")
            elif ch == '"':
                out.append('\\"')
            elif ch == "\n":
                out.append("\\n")
            else:
                out.append(ch)
        i += 1
    return None if in_str else "".join(out)


def repair_json(text: str) -> str:
    """Fix what has one meaning: trailing commas, Python literals, smart quotes, single-quoted strings."""
    if "\u201c" in text and '"' not in text:
        text = text.replace("\u201c", '"').replace("\u201d", '"')
    if "'" in text and '"' not in text:
        converted = _convert_single_quotes(text)
        if converted is not None:
            text = converted
    out = []
    in_str = False
    esc = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if in_str:
            out.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            i += 1
            continue
        if ch == '"':
            in_str = True
            out.append(ch)
            i += 1
            continue
        if ch == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j < n and text[j] in "}]":
                i += 1  # trailing comma
                continue
        m = re.match(r"(True|False|None)\b", text[i:]) if ch in "TFN" else None
        if m and (not out or not (out[-1].isalnum() or out[-1] == "_")):
            out.append({"True": "true", "False": "false", "None": "null"}[m.group(1)])
            i += len(m.group(1))
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def extract_json(text: str | None) -> Any:
    """The JSON object in a reply (fenced, bare or inside prose), repaired where safe."""
    if text is None or not text.strip():
        raise ParseError("empty reply")
    body = _THINK.sub("", text)  # reasoning models' scratch work may hold draft objects
    sources = [m.group(1) for m in _FENCE.finditer(body)] + [body]
    candidates: list[str] = []
    unclosed = False
    for src in sources:
        for start, end in _spans(src):
            if end is None:
                unclosed = True
                continue
            candidates.append(src[start:end])
    if not candidates:
        if unclosed:
            raise ParseError("the JSON object is cut off (the reply ended before it closed)")
        raise ParseError("no JSON object in the reply")
    # prefer objects that look like an annotation, then the longest
    candidates.sort(key=lambda c: (sum(k in c for k in ANNOTATION_KEYS), len(c)), reverse=True)
    first_error = ""
    for cand in candidates:
        for attempt in (cand, repair_json(cand)):
            try:
                return json.loads(attempt)
            except json.JSONDecodeError as e:
                first_error = first_error or f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    raise ParseError(first_error)


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, list) and len(obj) == 1:
        obj = obj[0]
    if isinstance(obj, dict) and len(obj) == 1:
        (inner,) = obj.values()
        if isinstance(inner, dict) and "summary_change" in inner:
            return inner
    return obj


def _map_camera(value: Any) -> Any:
    def canon(m: str) -> str:
        key = m.strip().lower().replace("_", "-").replace(" ", "-")
        return CAMERA_SYNONYMS.get(key, key)

    if isinstance(value, dict) and isinstance(value.get("motion"), str):
        return {**value, "motion": canon(value["motion"])}
    if isinstance(value, str) and canon(value) in CAMERA_MOTIONS:
        return {"motion": canon(value), "detail": ""}
    return value


def parse_annotation(text: str | None, where: str = "reply") -> dict[str, Any]:
    """A validated, normalised annotation from a model reply; ParseError with a short reason otherwise."""
    obj = _unwrap(extract_json(text))
    if isinstance(obj, dict) and "camera_change" in obj:
        obj = {**obj, "camera_change": _map_camera(obj["camera_change"])}
    try:
        return normalize_annotation(obj, where)
    except BadInputError as e:
        raise ParseError(str(e)) from None
