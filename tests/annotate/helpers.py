"""Shared test material for annotate: a valid annotation and replies in the shapes models produce."""

from __future__ import annotations

import json
from typing import Any


def valid_annotation(summary: str = "Move the red circle to the left.", motion: str = "static") -> dict[str, Any]:
    return {
        "frame1_caption": {
            "caption": "A red circle on a grey floor.",
            "characters": [],
            "objects": [{"id": "obj1", "description": "a small red circle"}],
        },
        "frame2_caption": {
            "caption": "The red circle is further left.",
            "characters": [],
            "objects": [{"id": "obj1", "description": "a small red circle"}],
        },
        "character_change": [],
        "object_change": [
            {"id": "obj1", "description": "a small red circle", "change": "move", "detail": "moves to the left"}
        ],
        "global_change": "",
        "camera_change": {"motion": motion, "detail": ""},
        "other_change": "",
        "summary_change": summary,
    }


def as_json(summary: str = "Move the red circle to the left.", **kw: Any) -> str:
    return json.dumps(valid_annotation(summary, **kw))


def in_prose(summary: str = "Move the red circle to the left.") -> str:
    return f"Sure! Here is my analysis of the two frames.\n\n```json\n{as_json(summary)}\n```\nHope this helps."


BROKEN = '{"frame1_caption": "a circle", "summary_change": "Move it" "oops"'
