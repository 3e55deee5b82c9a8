"""Natural, varied phrasing of the world's changes: instructions, change details, positions, directions.

Every phrase family has several templates; which one is used is drawn from an `Rng`, so the same
seed always gives the same words. Instructions are imperative clauses ("move the red circle to the
left") that `join_clauses` turns into one sentence ("Move the red circle to the left and make it
green."). Objects are named by colour and shape ("the red circle"), which is unique in a scene.
"""

from __future__ import annotations

import math

from vincie_cli.synth.world import SIZE_ORDER, Background, ObjectState, Rng

# ---- positions and directions


def grid_cell(sx: float, sy: float) -> tuple[str, str]:
    """(row, column) of a screen position given as fractions of the frame: top/middle/bottom, left/centre/right."""
    row = "top" if sy < 1 / 3 else ("bottom" if sy > 2 / 3 else "middle")
    col = "left" if sx < 1 / 3 else ("right" if sx > 2 / 3 else "centre")
    return row, col


def where_phrase(sx: float, sy: float, rng: Rng) -> str:
    """'at the top right', 'on the left', 'in the center', ..."""
    row, col = grid_cell(sx, sy)
    if row == "middle" and col == "centre":
        return rng.choice(["in the center", "in the middle", "in the center of the image"])
    if row == "middle":
        return rng.choice([f"on the {col}", f"at the {col}", f"on the {col} side"])
    if col == "centre":
        return rng.choice([f"at the {row}", f"near the {row}", f"at the {row} center"])
    return rng.choice([f"at the {row} {col}", f"in the {row} {col} corner", f"in the {row} {col}"])


DIRECTIONS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")
_DIR_WORDS = {
    "right": "to the right",
    "left": "to the left",
    "up": "up",
    "down": "down",
    "up-right": "up and to the right",
    "up-left": "up and to the left",
    "down-right": "down and to the right",
    "down-left": "down and to the left",
}


def direction_name(dx: float, dy: float) -> str:
    """One of DIRECTIONS for a screen displacement (y down)."""
    angle = math.degrees(math.atan2(-dy, dx)) % 360.0
    return DIRECTIONS[int(((angle + 22.5) % 360.0) // 45.0)]


def direction_phrase(dx: float, dy: float, distance: float) -> str:
    """'to the left', 'slightly up', 'far down and to the right' (distance in shorter-side units)."""
    words = _DIR_WORDS[direction_name(dx, dy)]
    if distance < 0.12:
        return f"slightly {words}"
    if distance > 0.34:
        return f"far {words}"
    return words


# ---- clauses (imperative)


def clause_appear(obj: ObjectState, where: str, rng: Rng) -> str:
    desc = obj.describe()
    return rng.choice([f"add {desc} {where}", f"put {desc} {where}", f"place {desc} {where}", f"draw {desc} {where}"])


def clause_disappear(ref: str, rng: Rng) -> str:
    return rng.choice([f"remove {ref}", f"delete {ref}", f"take away {ref}", f"erase {ref}"])


def clause_move(ref: str, direction: str, rng: Rng) -> str:
    return rng.choice([f"move {ref} {direction}", f"shift {ref} {direction}", f"slide {ref} {direction}"])


def clause_swap(ref1: str, ref2: str, rng: Rng) -> str:
    return rng.choice(
        [
            f"swap {ref1} and {ref2}",
            f"swap the positions of {ref1} and {ref2}",
            f"let {ref1} and {ref2} trade places",
            f"exchange the places of {ref1} and {ref2}",
        ]
    )


def clause_recolour(ref: str, colour: str, rng: Rng) -> str:
    return rng.choice(
        [
            f"make {ref} {colour}",
            f"turn {ref} {colour}",
            f"change the color of {ref} to {colour}",
            f"paint {ref} {colour}",
        ]
    )


def clause_resize(ref: str, old: str, new: str, rng: Rng) -> str:
    if SIZE_ORDER.index(new) > SIZE_ORDER.index(old):
        return rng.choice([f"make {ref} bigger", f"enlarge {ref}", f"make {ref} larger", f"make {ref} {new}"])
    return rng.choice([f"make {ref} smaller", f"shrink {ref}", f"scale down {ref}", f"make {ref} {new}"])


def rotation_words(degrees: float) -> str:
    turn = "clockwise" if degrees > 0 else "counterclockwise"
    return f"{abs(degrees):g} degrees {turn}"


def clause_rotate(ref: str, degrees: float, rng: Rng) -> str:
    words = rotation_words(degrees)
    return rng.choice([f"rotate {ref} {words}", f"turn {ref} {words}", f"rotate {ref} by {words}"])


def clause_background(bg: Background, rng: Rng) -> str:
    desc = bg.describe()
    return rng.choice([f"change the background to {desc}", f"replace the background with {desc}", f"switch to {desc}"])


CAMERA_CLAUSES = {
    "pan-left": ["pan the camera to the left", "pan left", "move the camera to the left"],
    "pan-right": ["pan the camera to the right", "pan right", "move the camera to the right"],
    "tilt-up": ["tilt the camera up", "tilt up", "move the camera up"],
    "tilt-down": ["tilt the camera down", "tilt down", "move the camera down"],
    "dolly-in": ["zoom in", "move the camera closer", "zoom the camera in"],
    "dolly-out": ["zoom out", "pull the camera back", "zoom the camera out"],
}
CAMERA_SENTENCES = {
    "pan-left": ["The camera pans left.", "The camera pans to the left.", "Pan the camera to the left."],
    "pan-right": ["The camera pans right.", "The camera pans to the right.", "Pan the camera to the right."],
    "tilt-up": ["The camera tilts up.", "The camera tilts upward.", "Tilt the camera up."],
    "tilt-down": ["The camera tilts down.", "The camera tilts downward.", "Tilt the camera down."],
    "dolly-in": ["The camera zooms in.", "Zoom in.", "The camera moves closer."],
    "dolly-out": ["The camera zooms out.", "Zoom out.", "The camera pulls back."],
}
CAMERA_DETAILS = {
    "pan-left": "the camera pans left",
    "pan-right": "the camera pans right",
    "tilt-up": "the camera tilts up",
    "tilt-down": "the camera tilts down",
    "dolly-in": "the camera zooms in",
    "dolly-out": "the camera zooms out",
}

NOTHING_SENTENCES = [
    "Keep the image unchanged.",
    "Leave the scene as it is.",
    "Nothing changes.",
    "Keep everything as it is.",
]


def join_clauses(clauses: list[str]) -> str:
    """['move the red circle left', 'make it green'] -> 'Move the red circle left and make it green.'"""
    if not clauses:
        return ""
    text = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return text[0].upper() + text[1:] + "."


# ---- details (third person, for the per-object change records)


def detail_resize(old: str, new: str) -> str:
    verb = "grows" if SIZE_ORDER.index(new) > SIZE_ORDER.index(old) else "shrinks"
    return f"{verb} from {old} to {new}"
