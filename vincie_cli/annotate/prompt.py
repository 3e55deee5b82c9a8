"""The chain-of-thought instruction that asks a VLM to describe the change between two frames.

The model works in three steps (describe each frame, list the differences by category, summarise
them as one editing instruction) and writes each step into the fields of one JSON object whose keys
are `records.ANNOTATION_KEYS`. The JSON fields are ordered like the steps, so a model that writes
them in order reasons before it summarises. The vocabularies come from `records`, so the prompt and
the validator cannot drift apart; any change to the wording must bump PROMPT_VERSION.

Messages are backend-neutral: images appear as {"type": "image", "index": k} parts, which each
backend turns into what its model expects (data URLs, vision tokens).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from vincie_cli.records import ANNOTATION_KEYS, CAMERA_MOTIONS, CHANGE_KINDS, PROMPT_VERSION

__all__ = ["PROMPT_VERSION", "SYSTEM_PROMPT", "build_messages", "instruction_text", "prompt_sha"]

SYSTEM_PROMPT = (
    "You are a careful visual analyst who writes image-editing instructions. You compare two frames "
    "taken from the same continuous video shot and explain, precisely and without guessing, what would "
    "have to be edited in the first frame to obtain the second."
)

_SKELETON = {
    "frame1_caption": {
        "caption": "<one or two sentences about frame 1>",
        "characters": [{"id": "char1", "description": "<appearance: clothing, colours, age, pose>"}],
        "objects": [{"id": "obj1", "description": "<appearance: colour, material, size, position>"}],
    },
    "frame2_caption": {"caption": "<...>", "characters": ["<same shape as above>"], "objects": ["<...>"]},
    "character_change": [
        {"id": "char1", "description": "<who>", "change": "<kind>", "detail": "<what happened, with direction>"}
    ],
    "object_change": [{"id": "obj1", "description": "<what>", "change": "<kind>", "detail": "<...>"}],
    "global_change": "<lighting, weather, time of day, colour grading or style change; empty string if none>",
    "camera_change": {"motion": "<motion>", "detail": "<how the view changed; empty if static>"},
    "other_change": "<anything else, e.g. on-screen text; empty string if none>",
    "summary_change": "<one imperative editing instruction>",
}


def instruction_text(caption: str | None = None, retry_reason: str | None = None) -> str:
    """The user instruction that follows the two images."""
    kinds = " | ".join(CHANGE_KINDS)
    motions = " | ".join(CAMERA_MOTIONS)
    parts = []
    if caption:
        parts.append(f'The whole video clip is described as: "{caption.strip()}". Use it only as context.')
    parts.append(
        "The first image is FRAME 1 (earlier), the second is FRAME 2 (later). Think in three steps and "
        "record each step in the JSON fields below."
    )
    parts.append(
        "Step 1, describe each frame on its own. Write a short caption of the scene. List the people and "
        "animals as characters with ids char1, char2, ... and the notable objects with ids obj1, obj2, ..., "
        "each with a short description of its appearance. Give an entity the same id in both frames."
    )
    parts.append(
        "Step 2, compare the frames and list every visible difference by category. character_change and "
        f"object_change hold one entry per changed entity; its change kind is one of: {kinds} (attribute = "
        "colour, shape, size, clothing or state changed; interaction = it acts on or touches something). "
        "global_change covers changes of the whole picture (lighting, weather, time of day, style). "
        f"camera_change.motion is one of: {motions}; judge it from how the background shifts, and use "
        "static when the view does not move. other_change holds anything else. Leave a list empty and a "
        "text empty when nothing of that kind changed; never invent changes."
    )
    parts.append(
        "Step 3, write summary_change: one concise instruction in the imperative (at most 30 words) that "
        "turns FRAME 1 into FRAME 2, naming the most important changes, for example "
        '"Move the red ball to the left edge and dim the lights." Do not mention frames or videos.'
    )
    parts.append(
        "Reply with exactly one JSON object with these keys in this order: "
        + ", ".join(ANNOTATION_KEYS)
        + ". No text before or after it. Shape:\n"
        + json.dumps(_SKELETON, indent=1)
    )
    if retry_reason:
        parts.append(f"Your previous reply could not be used ({retry_reason}). Reply with the JSON object only.")
    return "\n\n".join(parts)


def build_messages(caption: str | None = None, retry_reason: str | None = None) -> list[dict[str, Any]]:
    """Chat messages for one frame pair; images are {"type": "image", "index": 0 | 1} placeholders."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "FRAME 1:"},
                {"type": "image", "index": 0},
                {"type": "text", "text": "FRAME 2:"},
                {"type": "image", "index": 1},
                {"type": "text", "text": instruction_text(caption, retry_reason)},
            ],
        },
    ]


def prompt_sha() -> str:
    """A short digest of the prompt text (without caption or retry note), recorded in provenance."""
    text = SYSTEM_PROMPT + "\n" + instruction_text()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
