"""Region-of-edit (RoE) rules: which entities to look for in each frame, and how per-entity masks fuse.

One transition (source frame -> target frame) gets two masks:
  - src: the region of the SOURCE frame that will change: entities that change or disappear;
  - dst: the region of the TARGET frame that changed: entities that change or appear.

Rules (records.ROE_RULES), checked in this order:
  1. "global"   a global change (style, lighting, weather, background): full-frame masks;
  2. "entities" characters / objects changed, appeared or disappeared: union of their masks;
                becomes "none" when the detector finds none of them in either frame;
  3. "camera"   only the camera moved: no masks (every pixel moves, an RoE would say nothing);
  4. "none"     nothing that can be localised changed: no masks.
A global change wins over entity changes because it touches every pixel anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vincie_cli.records import changed_entities


@dataclass
class Detection:
    """One detected instance of a query in one frame: box in pixels (x0, y0, x1, y1), score, mask (H, W) bool."""

    query: str
    box: list[float]
    score: float
    mask: np.ndarray


@dataclass
class RoEResult:
    """The fused region of edit of one transition. Masks are bool (H, W) or None (no RoE for this rule)."""

    rule: str
    src: np.ndarray | None
    dst: np.ndarray | None
    src_queries: list[str] = field(default_factory=list)
    dst_queries: list[str] = field(default_factory=list)
    src_detections: list[Detection] = field(default_factory=list)
    dst_detections: list[Detection] = field(default_factory=list)


def _entity_lookup(annotation: dict[str, Any]) -> dict[str, str]:
    """Entity id -> description from both frame captions (frame 2 wins: it is the newer description)."""
    out: dict[str, str] = {}
    for cap_key in ("frame1_caption", "frame2_caption"):
        cap = annotation.get(cap_key) or {}
        for group in ("characters", "objects"):
            for ent in cap.get(group, []) or []:
                if ent.get("id") and ent.get("description"):
                    out[str(ent["id"])] = str(ent["description"])
    return out


def entity_queries(annotation: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Detector text queries for the source and the target frame of a normalised annotation.

    Source: entities that change or disappear (appearing ones are not there yet). Target: entities
    that change or appear. Descriptions missing from a change fall back to the frame captions by id.
    Queries are de-duplicated case-insensitively, order kept.
    """
    lookup = _entity_lookup(annotation)
    src: list[str] = []
    dst: list[str] = []
    for ch in changed_entities(annotation):
        desc = (ch.get("description") or lookup.get(ch.get("id", ""), "")).strip()
        if not desc:
            continue
        if ch.get("change") != "appear":
            src.append(desc)
        if ch.get("change") != "disappear":
            dst.append(desc)
    return _dedup(src), _dedup(dst)


def _dedup(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for q in items:
        k = q.lower()
        if k not in seen:
            seen.add(k)
            out.append(q)
    return out


def planned_rule(annotation: dict[str, Any]) -> str:
    """The rule an annotation asks for before detection ("entities" may still become "none")."""
    if str(annotation.get("global_change") or "").strip():
        return "global"
    src, dst = entity_queries(annotation)
    if src or dst:
        return "entities"
    motion = (annotation.get("camera_change") or {}).get("motion", "static")
    if motion and motion != "static":
        return "camera"
    return "none"


def union(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Union of bool masks (H, W); an all-False mask when the list is empty."""
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        if m.shape != tuple(shape):
            raise ValueError(f"mask of shape {m.shape} does not match the frame {tuple(shape)}")
        out |= m.astype(bool)
    return out


def fuse(
    annotation: dict[str, Any],
    src_detections: list[Detection],
    dst_detections: list[Detection],
    src_shape: tuple[int, int],
    dst_shape: tuple[int, int],
) -> RoEResult:
    """Apply the rules to one transition's detections (src_shape, dst_shape = (H, W) of the two frames)."""
    rule = planned_rule(annotation)
    src_q, dst_q = entity_queries(annotation)
    if rule == "global":
        return RoEResult("global", np.ones(src_shape, bool), np.ones(dst_shape, bool), src_q, dst_q)
    if rule == "entities":
        src = union([d.mask for d in src_detections], src_shape)
        dst = union([d.mask for d in dst_detections], dst_shape)
        if not src.any() and not dst.any():
            return RoEResult("none", None, None, src_q, dst_q, src_detections, dst_detections)
        return RoEResult("entities", src, dst, src_q, dst_q, src_detections, dst_detections)
    return RoEResult(rule, None, None, src_q, dst_q)


def coverage(mask: np.ndarray | None) -> float | None:
    """Fraction of pixels inside the mask (None for no mask)."""
    return None if mask is None else round(float(mask.mean()), 6)


def box_of(mask: np.ndarray) -> list[float] | None:
    """Tight pixel box (x0, y0, x1, y1), exclusive right/bottom, of a bool mask; None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


# --------------------------------------------------------------------------------------------
# mask files: 1-bit PNG, white = region of edit
