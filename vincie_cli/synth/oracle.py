"""Oracle annotation and segmentation of synthetic videos, computed from the exact ground truth.

`annotate_pair(gt, t0, t1)` returns what a perfect VLM would write for the frames shown at t0 and
t1, in the canonical annotation schema of `vincie_cli.records`; `roe_masks(gt, t0, t1)` returns
the change-region (RoE) masks a perfect segmenter would produce. Both compare the two frames'
states (`diff_states`), so they describe exactly what changed between the frames, whatever events
happened in between (a move there and back is no change).

RoE rules (segment's real backends follow the same ones), in priority order:

1. the background changed                  -> "global":   full-frame src and dst masks;
2. an object appeared / disappeared / moved / changed colour, size or rotation
                                            -> "entities": src = union of those objects' instance
                                               masks at t0, dst = the union at t1;
3. only the camera moved                    -> "camera":   no masks (src = dst = None);
4. nothing changed                          -> "none":     no masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vincie_cli.synth import language as L
from vincie_cli.synth.world import ObjectState, Rng, SceneState

MOVE_EPS = 0.02  # shorter-side units: smaller displacements are not a move
ROTATE_EPS = 5.0  # degrees
PAN_EPS = 0.02  # world units
ZOOM_EPS = 1.05

# order of clauses for one object
_KIND_ORDER = {"disappear": 0, "appear": 1, "swap": 2, "move": 3, "recolour": 4, "resize": 5, "rotate": 6}


@dataclass
class Change:
    """One difference between two states. kind: appear, disappear, move, swap, recolour, resize,
    rotate, background or camera. `before`/`after` hold the involved objects in each state."""

    kind: str
    ids: tuple[str, ...] = ()
    before: tuple[ObjectState | None, ...] = ()
    after: tuple[ObjectState | None, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def is_entity(self) -> bool:
        return self.kind not in ("background", "camera")


def _aspect(size: tuple[int, int]) -> tuple[float, float]:
    s = min(size)
    return size[0] / s, size[1] / s


def camera_motion(a: SceneState, b: SceneState) -> tuple[str, list[str]]:
    """(dominant motion in records.CAMERA_MOTIONS, all motions) between two states."""
    ca, cb = a.camera, b.camera
    dx, dy = cb.x - ca.x, cb.y - ca.y
    ratio = cb.zoom / ca.zoom
    motions: list[tuple[float, str]] = []
    if abs(dx) > PAN_EPS:
        motions.append((abs(dx), "pan-right" if dx > 0 else "pan-left"))
    if abs(dy) > PAN_EPS:
        motions.append((abs(dy), "tilt-down" if dy > 0 else "tilt-up"))
    if ratio > ZOOM_EPS or ratio < 1 / ZOOM_EPS:
        motions.append((abs(math.log(ratio)) * 0.5, "dolly-in" if ratio > 1 else "dolly-out"))
    if not motions:
        return "static", []
    motions.sort(key=lambda m: -m[0])
    return motions[0][1], [m[1] for m in motions]


def diff_states(a: SceneState, b: SceneState, size: tuple[int, int] = (256, 256)) -> list[Change]:
    """Every change from `a` to `b`, entity changes in object order, then background, then camera."""
    ax, ay = _aspect(size)
    pa = {o.id: o for o in a.objects if o.present}
    pb = {o.id: o for o in b.objects if o.present}
    order = list(pa) + [i for i in pb if i not in pa]
    changes: list[Change] = []
    moved: dict[str, tuple[float, float]] = {}
    for oid in order:
        oa, ob = pa.get(oid), pb.get(oid)
        if ob is None:
            changes.append(Change("disappear", (oid,), (oa,), (None,)))
            continue
        if oa is None:
            changes.append(Change("appear", (oid,), (None,), (ob,), {"screen": b.screen_position(ob)}))
            continue
        dx = (ob.position[0] - oa.position[0]) * ax
        dy = (ob.position[1] - oa.position[1]) * ay
        if math.hypot(dx, dy) > MOVE_EPS:
            moved[oid] = (dx, dy)
        if oa.colour != ob.colour:
            changes.append(Change("recolour", (oid,), (oa,), (ob,), {"from": oa.colour, "to": ob.colour}))
        if oa.size != ob.size:
            changes.append(Change("resize", (oid,), (oa,), (ob,), {"from": oa.size, "to": ob.size}))
        if abs(ob.rotation - oa.rotation) > ROTATE_EPS:
            changes.append(Change("rotate", (oid,), (oa,), (ob,), {"degrees": round(ob.rotation - oa.rotation, 2)}))
    # swaps: two moved objects that exchanged places
    ids = list(moved)
    swapped: set[str] = set()
    for i, p in enumerate(ids):
        for q in ids[i + 1 :]:
            if p in swapped or q in swapped:
                continue
            close = (
                math.hypot((pb[p].position[0] - pa[q].position[0]) * ax, (pb[p].position[1] - pa[q].position[1]) * ay)
                < MOVE_EPS
                and math.hypot(
                    (pb[q].position[0] - pa[p].position[0]) * ax, (pb[q].position[1] - pa[p].position[1]) * ay
                )
                < MOVE_EPS
            )
            if close:
                swapped.update((p, q))
                changes.append(Change("swap", (p, q), (pa[p], pa[q]), (pb[p], pb[q])))
    for oid, (dx, dy) in moved.items():
        if oid not in swapped:
            dist = math.hypot(dx, dy)
            changes.append(Change("move", (oid,), (pa[oid],), (pb[oid],), {"dx": dx, "dy": dy, "distance": dist}))
    rank = {oid: i for i, oid in enumerate(order)}
    changes.sort(key=lambda c: (min(rank[i] for i in c.ids), _KIND_ORDER[c.kind]))
    if a.background != b.background:
        changes.append(Change("background", data={"from": a.background, "to": b.background}))
    motion, motions = camera_motion(a, b)
    if motion != "static":
        changes.append(Change("camera", data={"motion": motion, "motions": motions}))
    return changes


# --------------------------------------------------------------------------------------------
# annotation


def _detail(c: Change) -> str:
    if c.kind == "appear":
        sx, sy = c.data["screen"]
        return "appears " + L.where_phrase(sx, sy, Rng("detail"))
    if c.kind == "disappear":
        return "disappears"
    if c.kind == "move":
        return "moves " + L.direction_phrase(c.data["dx"], c.data["dy"], c.data["distance"])
    if c.kind == "recolour":
        return f"changes color from {c.data['from']} to {c.data['to']}"
    if c.kind == "resize":
        return L.detail_resize(c.data["from"], c.data["to"])
    if c.kind == "rotate":
        return "rotates " + L.rotation_words(c.data["degrees"])
    raise ValueError(c.kind)


def summarize(changes: list[Change], seed: int | str = 0) -> str:
    """One instruction for a list of changes (the annotation's summary_change)."""
    rng = Rng(f"phrase:{seed}")
    entity = [c for c in changes if c.is_entity]
    background = [c for c in changes if c.kind == "background"]
    camera = [c for c in changes if c.kind == "camera"]
    if not changes:
        return rng.choice(L.NOTHING_SENTENCES)
    if camera and not entity and not background:
        return rng.choice(L.CAMERA_SENTENCES[camera[0].data["motion"]])
    clauses: list[str] = []
    last_id: str | None = None
    for c in entity:
        obj = c.before[0] if c.before and c.before[0] is not None else None
        ref = "it" if last_id == c.ids[0] and c.kind != "swap" else (obj.short() if obj else "")
        if c.kind == "appear":
            sx, sy = c.data["screen"]
            clauses.append(L.clause_appear(c.after[0], L.where_phrase(sx, sy, rng), rng))
        elif c.kind == "disappear":
            clauses.append(L.clause_disappear(ref, rng))
        elif c.kind == "move":
            clauses.append(L.clause_move(ref, L.direction_phrase(c.data["dx"], c.data["dy"], c.data["distance"]), rng))
        elif c.kind == "swap":
            clauses.append(L.clause_swap(c.before[0].short(), c.before[1].short(), rng))
        elif c.kind == "recolour":
            clauses.append(L.clause_recolour(ref, c.data["to"], rng))
        elif c.kind == "resize":
            clauses.append(L.clause_resize(ref, c.data["from"], c.data["to"], rng))
        elif c.kind == "rotate":
            clauses.append(L.clause_rotate(ref, c.data["degrees"], rng))
        last_id = c.ids[0] if len(c.ids) == 1 else None
    for c in background:
        clauses.append(L.clause_background(c.data["to"], rng))
    for c in camera:
        clauses.append(rng.choice(L.CAMERA_CLAUSES[c.data["motion"]]))
    return L.join_clauses(clauses)


def _caption(state: SceneState) -> dict[str, Any]:
    return {
        "caption": state.describe(),
        "characters": [],
        "objects": [{"id": o.id, "description": o.describe()} for o in state.visible_objects],
    }


def annotate_states(a: SceneState, b: SceneState, size: tuple[int, int] = (256, 256), seed: int | str = 0) -> dict:
    """The annotation object (records schema) for a frame showing `a` followed by one showing `b`."""
    changes = diff_states(a, b, size)
    object_change: list[dict[str, str]] = []
    for c in changes:
        if not c.is_entity:
            continue
        if c.kind == "swap":
            for k in range(2):
                other = c.before[1 - k]
                object_change.append(
                    {
                        "id": c.ids[k],
                        "description": c.before[k].describe(),
                        "change": "move",
                        "detail": f"swaps places with {other.short()}",
                    }
                )
            continue
        obj = c.before[0] if c.before[0] is not None else c.after[0]
        kind = {"appear": "appear", "disappear": "disappear", "move": "move"}.get(c.kind, "attribute")
        object_change.append({"id": c.ids[0], "description": obj.describe(), "change": kind, "detail": _detail(c)})
    bg = [c for c in changes if c.kind == "background"]
    global_change = ""
    if bg:
        global_change = f"the background changes from {bg[0].data['from'].describe()} to {bg[0].data['to'].describe()}"
    cam = [c for c in changes if c.kind == "camera"]
    camera_change = {"motion": "static", "detail": ""}
    if cam:
        camera_change = {
            "motion": cam[0].data["motion"],
            "detail": " and ".join(L.CAMERA_DETAILS[m] for m in cam[0].data["motions"]),
        }
    return {
        "frame1_caption": _caption(a),
        "frame2_caption": _caption(b),
        "character_change": [],
        "object_change": object_change,
        "global_change": global_change,
        "camera_change": camera_change,
        "other_change": "",
        "summary_change": summarize(changes, seed),
    }


def annotate_pair(gt, t0: float, t1: float, seed: int | str = 0) -> dict:
    """The annotation for the frames of `gt` (a GroundTruth) shown at times t0 and t1 (seconds)."""
    return annotate_states(gt.state_at(t0), gt.state_at(t1), gt.size, seed)


# --------------------------------------------------------------------------------------------
# region of edit


@dataclass
class RoE:
    """Change-region masks: `src` (bool H x W, at t0) and `dst` (at t1), None under the camera and
    none rules; `rule` in records.ROE_RULES; `entities`: ids of the changed objects."""

    rule: str
    src: np.ndarray | None
    dst: np.ndarray | None
    entities: tuple[str, ...] = ()

    @property
    def src_coverage(self) -> float:
        return float(self.src.mean()) if self.src is not None else 0.0

    @property
    def dst_coverage(self) -> float:
        return float(self.dst.mean()) if self.dst is not None else 0.0


def roe_from_changes(
    changes: list[Change],
    masks_a: dict[str, np.ndarray],
    masks_b: dict[str, np.ndarray],
    size: tuple[int, int],
) -> RoE:
    """Apply the RoE rules (module docstring) given the instance masks of the two frames."""
    W, H = size
    entities = tuple(dict.fromkeys(i for c in changes if c.is_entity for i in c.ids))
    if any(c.kind == "background" for c in changes):
        full = np.ones((H, W), dtype=bool)
        return RoE("global", full, full.copy(), entities)
    if entities:
        src = np.zeros((H, W), dtype=bool)
        dst = np.zeros((H, W), dtype=bool)
        for oid in entities:
            if oid in masks_a:
                src |= masks_a[oid]
            if oid in masks_b:
                dst |= masks_b[oid]
        return RoE("entities", src, dst, entities)
    if any(c.kind == "camera" for c in changes):
        return RoE("camera", None, None, ())
    return RoE("none", None, None, ())


def roe_masks(gt, t0: float, t1: float) -> RoE:
    """RoE masks between the frames of `gt` shown at t0 and t1 (instance masks from the ground truth)."""
    i0, i1 = gt.frame_index(t0), gt.frame_index(t1)
    changes = diff_states(gt.state_at_frame(i0), gt.state_at_frame(i1), gt.size)
    return roe_from_changes(changes, gt.instance_masks(i0), gt.instance_masks(i1), gt.size)
