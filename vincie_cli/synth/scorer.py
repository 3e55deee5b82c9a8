"""Objective per-turn scoring of multi-turn edits on the synthetic benchmark.

For each turn the scorer finds the objects in the produced image by colour (every object has a
unique palette colour), measures each one (centroid, area, best-fitting shape and rotation), and
decides whether the instructed change happened and nothing else changed. Decisions are made
relative to the image the model edited (the previous turn's output, or the start image), so a move
"to the left" that lands a few pixels from the generator's choice still counts, and an earlier
small offset does not fail every later turn:

- kept objects: same place (within `pos_tol`), same area (within `area_tol`), same shape/rotation;
- moved object: displacement within `angle_tol` degrees of the instructed direction and between
  `dist_range` times the expected distance; swapped objects: each lands where the other was;
- added object: right colour, shape and size, centroid within `add_tol` of the expected position;
- removed object: its colour is gone; recoloured: the new colour where the old one was, old gone;
- resized: area changed the right way by at least `resize_min`; rotated: the expected rotation
  fits best (within `shape_margin` IoU of the best hypothesis);
- no extra objects (colour blobs that should not be there), background within `bg_tol` mean
  absolute error of the expected frame.

A session counts turns cumulatively, like MSE-Bench: it stops counting at its first failure. PSNR
and SSIM against the exact expected frame, and IoU of predicted masks against the expected RoE,
are reported alongside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from vincie_cli.synth.render import render_masks, render_state, shape_area_factor, shape_distance
from vincie_cli.synth.world import COLOURS, PALETTE, SHAPE_PERIOD, SHAPES, SIZES, SceneState

# --------------------------------------------------------------------------------------------
# colour classification and blobs

MIN_CHROMA = 50.0  # max - min over RGB; backgrounds and outlines stay at or below 35
CHROMA_FRACTION = 0.4  # a pixel needs this fraction of its palette colour's chroma (about half covered)
MAX_HUE_DIST = 22.0  # degrees from the nearest palette hue


def _hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees and chroma of float RGB (..., 3)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    c = mx - mn
    safe = np.where(c == 0, 1.0, c)
    h = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return (h * 60.0) % 360.0, c


@lru_cache(maxsize=1)
def palette_hues() -> tuple[np.ndarray, np.ndarray]:
    """(hues in degrees, chromas) of COLOURS."""
    rgb = np.asarray([PALETTE[c] for c in COLOURS], dtype=np.float64)
    return _hue(rgb)


@lru_cache(maxsize=1)
def _hue_table() -> tuple[np.ndarray, np.ndarray]:
    """Per tenth of a degree of hue: nearest palette index (-1 if farther than MAX_HUE_DIST) and its chroma need."""
    hues, chromas = palette_hues()
    grid = (np.arange(3600) + 0.5) / 10.0
    d = np.abs(grid[:, None] - hues[None, :])
    d = np.minimum(d, 360.0 - d)
    idx = d.argmin(-1)
    idx = np.where(d.min(-1) <= MAX_HUE_DIST, idx, -1).astype(np.int8)
    need = np.maximum(MIN_CHROMA, CHROMA_FRACTION * chromas[np.maximum(idx, 0)]).astype(np.float32)
    return idx, need


def classify_colours(img: np.ndarray) -> np.ndarray:
    """int8 (H, W): index into COLOURS of each pixel's palette colour, -1 for none (background, outline).

    A pixel takes the palette colour of the nearest hue if it is saturated enough: at least
    CHROMA_FRACTION of that colour's chroma, i.e. roughly at least half covered by the object, so
    detected areas match instance masks whatever the background (blends with a low-chroma
    background keep the hue and scale the chroma by the coverage).
    """
    h, c = _hue(img.astype(np.float32))
    idx_table, need_table = _hue_table()
    b = np.clip((h * 10.0).astype(np.int32), 0, 3599)
    idx = idx_table[b]
    return np.where(c >= need_table[b], idx, -1).astype(np.int8)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a bool (H, W) mask: (int32 labels, 0 = background, 1..n), n."""
    H, W = mask.shape
    if not mask.any():
        return np.zeros((H, W), dtype=np.int32), 0
    big = H * W
    lab = np.where(mask, np.arange(big).reshape(H, W), big)
    while True:
        new = lab.copy()
        both = mask[1:, :] & mask[:-1, :]
        new[1:, :] = np.where(both, np.minimum(new[1:, :], lab[:-1, :]), new[1:, :])
        new[:-1, :] = np.where(both, np.minimum(new[:-1, :], lab[1:, :]), new[:-1, :])
        both = mask[:, 1:] & mask[:, :-1]
        new[:, 1:] = np.where(both, np.minimum(new[:, 1:], lab[:, :-1]), new[:, 1:])
        new[:, :-1] = np.where(both, np.minimum(new[:, :-1], lab[:, 1:]), new[:, :-1])
        flat = new.ravel()
        inside = flat < big
        flat[inside] = flat[flat[inside]]  # pointer jumping: a label is a pixel index of the same component
        if np.array_equal(new, lab):
            break
        lab = new
    roots, inverse = np.unique(lab.ravel(), return_inverse=True)
    out = inverse.reshape(H, W).astype(np.int32) + 1
    n = len(roots)
    if roots[-1] == big:  # background
        out[lab == big] = 0
        n -= 1
    return out, n


@dataclass
class Blob:
    """One connected region of one palette colour. Centroid in pixels (x, y); bbox (y0, y1, x0, x1)."""

    colour: str
    area: int
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    mask: np.ndarray = field(repr=False)  # bool (H, W)


def detect_objects(img: np.ndarray, min_area: float) -> dict[str, list[Blob]]:
    """{colour: blobs of at least `min_area` pixels, largest first} in a uint8 (H, W, 3) image."""
    cls = classify_colours(img)
    H, W = cls.shape
    out: dict[str, list[Blob]] = {}
    for k, colour in enumerate(COLOURS):
        m = cls == k
        if m.sum() < min_area:
            continue
        ys, xs = np.nonzero(m)
        y0, x0 = int(ys.min()), int(xs.min())
        crop = m[y0 : int(ys.max()) + 1, x0 : int(xs.max()) + 1]
        labels, n = connected_components(crop)
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        blobs = []
        for lbl in np.argsort(-areas[1:], kind="stable") + 1:
            if areas[lbl] < min_area:
                break
            bm = labels == lbl
            by, bx = np.nonzero(bm)
            full = np.zeros((H, W), dtype=bool)
            full[y0 : y0 + bm.shape[0], x0 : x0 + bm.shape[1]] = bm
            bbox = (y0 + int(by.min()), y0 + int(by.max()) + 1, x0 + int(bx.min()), x0 + int(bx.max()) + 1)
            centroid = (float(bx.mean() + x0 + 0.5), float(by.mean() + y0 + 0.5))
            blobs.append(Blob(colour, int(areas[lbl]), centroid, bbox, full))
        if blobs:
            out[colour] = blobs
    return out


def min_object_area(size: tuple[int, int]) -> float:
    """Smallest blob that counts as an object: 30% of a small circle's area at this frame size."""
    s = min(size)
    return max(4.0, 0.3 * math.pi * (SIZES["small"] * s) ** 2 * 0.8)


# --------------------------------------------------------------------------------------------
# shape fitting


FIT_SAMPLES = 400.0  # large blobs are compared on a sparser pixel grid with about this many samples inside


def shape_iou(blob: Blob, shape: str, rotation: float) -> float:
    """IoU of the blob with `shape` at `rotation`, centred on the blob's centroid with the blob's area.

    Blobs larger than FIT_SAMPLES pixels are sampled on a regular sub-grid (same estimate, less work).
    """
    r = math.sqrt(blob.area / shape_area_factor(shape))
    cx, cy = blob.centroid
    H, W = blob.mask.shape
    reach = 1.4 * r + 2
    x0, x1 = max(0, int(cx - reach)), min(W, int(cx + reach) + 1)
    y0, y1 = max(0, int(cy - reach)), min(H, int(cy + reach) + 1)
    by0, by1, bx0, bx1 = blob.bbox
    x0, x1 = min(x0, bx0), max(x1, bx1)
    y0, y1 = min(y0, by0), max(y1, by1)
    stride = max(1, int(math.sqrt(blob.area / FIT_SAMPLES)))
    xi = np.arange(x0, x1, stride)
    yi = np.arange(y0, y1, stride)
    d = shape_distance(shape, cx, cy, r, rotation, xi + 0.5, yi + 0.5)
    t = d <= 0
    m = blob.mask[np.ix_(yi, xi)]
    union = (t | m).sum()
    return float((t & m).sum() / union) if union else 0.0


def _hypotheses(step: float = 7.5) -> list[tuple[str, float]]:
    hyps = []
    for shape in SHAPES:
        period = SHAPE_PERIOD[shape]
        if period == 0:
            hyps.append((shape, 0.0))
        else:
            hyps.extend((shape, a) for a in np.arange(0.0, period, step).tolist())
    return hyps


def rotation_error(shape: str, a: float, b: float) -> float:
    """Smallest angle between two rotations of a shape, modulo its symmetry."""
    period = SHAPE_PERIOD[shape]
    if period == 0:
        return 0.0
    d = (a - b) % period
    return min(d, period - d)


def fit_shape(blob: Blob, shape: str, rotation: float) -> tuple[float, str, float, float]:
    """(IoU of the expected shape/rotation, best shape, its rotation, best IoU) over all hypotheses."""
    expected = shape_iou(blob, shape, rotation)
    best_shape, best_rot, best = shape, rotation, expected
    for s, a in _hypotheses():
        v = shape_iou(blob, s, a)
        if v > best:
            best_shape, best_rot, best = s, a, v
    return expected, best_shape, best_rot, best


# --------------------------------------------------------------------------------------------
# image metrics


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (100 for identical images)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else min(100.0, 10.0 * math.log10(255.0**2 / mse))


def _gauss_blur(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    H, W = x.shape
    rows = sum(k[i] * x[:, i : W - 2 * radius + i] for i in range(2 * radius + 1))
    return sum(k[i] * rows[i : H - 2 * radius + i, :] for i in range(2 * radius + 1))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5, valid region) on the luma of two uint8 images."""
    w = np.array([0.299, 0.587, 0.114])
    x = a.astype(np.float64) @ w if a.ndim == 3 else a.astype(np.float64)
    y = b.astype(np.float64) @ w if b.ndim == 3 else b.astype(np.float64)
    if min(x.shape) < 11:
        raise ValueError("SSIM needs images of at least 11x11")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _gauss_blur(x), _gauss_blur(y)
    sxx = _gauss_blur(x * x) - mx * mx
    syy = _gauss_blur(y * y) - my * my
    sxy = _gauss_blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def mask_iou(pred: np.ndarray | None, target: np.ndarray | None) -> float:
    """IoU of two bool masks; None is an empty mask; two empty masks give 1."""
    p = np.zeros((1,), bool) if pred is None else np.asarray(pred).astype(bool)
    t = np.zeros((1,), bool) if target is None else np.asarray(target).astype(bool)
    if pred is None and target is not None:
        p = np.zeros_like(t)
    if target is None and pred is not None:
        t = np.zeros_like(p)
    union = (p | t).sum()
    return 1.0 if union == 0 else float((p & t).sum() / union)


# --------------------------------------------------------------------------------------------
# decisions


@dataclass
class Tolerances:
    pos_tol: float = 0.06  # kept objects: centroid shift, fraction of the shorter side
    area_tol: float = 1.35  # kept objects: max area ratio either way
    add_tol: float = 0.17  # added objects: distance from the expected position
    add_area_tol: float = 1.6  # added / resized objects: area ratio to the expected area
    angle_tol: float = 35.0  # moves: degrees off the expected direction
    dist_range: tuple[float, float] = (0.5, 1.8)  # moves: distance ratio to the expected one
    resize_min: float = 1.3  # resizes: area must change by at least this factor
    shape_margin: float = 0.04  # shape/rotation: expected hypothesis within this IoU of the best ...
    shape_margin_px: float = 0.6  # ... or within this / sqrt(area in pixels), for small objects
    min_shape_area: float = 40.0  # pixels; smaller objects skip the shape check
    bg_tol: float = 20.0  # background mean absolute error (levels)
    duplicate_frac: float = 0.3  # a second blob of a colour at least this fraction of the first is an extra object


@dataclass
class ObjectDecision:
    """How one object of a turn was judged. role: kept | edited | added | removed."""

    id: str
    colour: str
    shape: str
    role: str
    found: bool
    ok: bool
    reason: str = ""
    position_error: float | None = None  # vs the exact expected frame, fraction of the shorter side
    size_ratio: float | None = None  # produced area / expected area
    shape_iou: float | None = None  # IoU of the expected shape at the expected rotation
    detected_shape: str | None = None
    detected_rotation: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TurnScore:
    turn: int  # 1-based
    instruction: str
    kind: str
    success: bool  # this turn, judged on its own input
    counted: bool  # cumulative: this and every earlier turn succeeded
    objects: list[ObjectDecision]
    extra: list[str]  # colours of objects that should not be there
    background_ok: bool
    background_error: float | None
    psnr: float | None
    ssim: float | None
    iou_src: float | None = None
    iou_dst: float | None = None
    reason: str = ""

    @property
    def edit_ok(self) -> bool:
        """The instructed change itself is right (a turn can get it right and still fail on side effects):
        the background for a background change, else every object the turn adds, edits or removes."""
        if self.reason == "no image":
            return False
        if self.kind == "background":
            return self.background_ok
        return all(o.ok for o in self.objects if o.role != "kept")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objects"] = [o.to_dict() for o in self.objects]
        d["edit_ok"] = self.edit_ok
        return d


@dataclass
class SessionScore:
    session_id: str
    turns: list[TurnScore]

    @property
    def successful_turns(self) -> int:
        """Number of leading successful turns (the cumulative score)."""
        return sum(t.counted for t in self.turns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "successful_turns": self.successful_turns,
            "turns": [t.to_dict() for t in self.turns],
        }


def _to_array(image: Any, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) from an array, a PIL image or a path, resized to `size` (W, H) if needed."""
    from PIL import Image

    if isinstance(image, str | bytes) or hasattr(image, "__fspath__"):
        with Image.open(image) as im:
            image = im.convert("RGB")
    if isinstance(image, Image.Image):
        im = image.convert("RGB")
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if (arr.shape[1], arr.shape[0]) == tuple(size):
            return arr
        im = Image.fromarray(arr)
    if im.size != tuple(size):
        im = im.resize(tuple(size), Image.BICUBIC)
    return np.asarray(im)


def _dist(a: tuple[float, float], b: tuple[float, float], s: float) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1]) / s


def _main(blobs: dict[str, list[Blob]], colour: str) -> Blob | None:
    lst = blobs.get(colour)
    return lst[0] if lst else None


class TurnJudge:
    """Judges one produced image against the expected state, given the model's input image."""

    def __init__(self, size: tuple[int, int], tol: Tolerances | None = None) -> None:
        self.size = size
        self.S = float(min(size))
        self.tol = tol or Tolerances()
        self.min_area = min_object_area(size)

    def detect(self, img: np.ndarray) -> dict[str, list[Blob]]:
        return detect_objects(img, self.min_area)

    def expected_detections(self, state: SceneState) -> dict[str, list[Blob]]:
        """Detections in the exact render of `state` (memoised)."""
        cache = self.__dict__.setdefault("_cache", {})
        if state not in cache:
            cache[state] = self.detect(render_state(state, self.size))
        return cache[state]

    def _shape(self, dec: ObjectDecision, blob: Blob, obj) -> bool:
        if blob.area < self.tol.min_shape_area:
            return True
        iou, best_shape, best_rot, best = fit_shape(blob, obj.shape, obj.rotation)
        dec.shape_iou, dec.detected_shape, dec.detected_rotation = round(iou, 4), best_shape, best_rot
        return iou >= best - max(self.tol.shape_margin, self.tol.shape_margin_px / math.sqrt(blob.area))

    def judge(
        self,
        prev_state: SceneState,
        state: SceneState,
        change: dict[str, Any],
        ref: dict[str, list[Blob]],
        expected: dict[str, list[Blob]],
        produced: dict[str, list[Blob]],
        produced_img: np.ndarray,
        expected_img: np.ndarray,
    ) -> tuple[list[ObjectDecision], list[str], bool, float | None]:
        """Per-object decisions, extra colours, background ok, background error."""
        t, S = self.tol, self.S
        kind = change.get("kind", "")
        edited = set(change.get("objects", ()))
        prev_objs = {o.id: o for o in prev_state.present_objects}
        objs = {o.id: o for o in state.present_objects}
        decisions: list[ObjectDecision] = []
        for oid in list(prev_objs) + [i for i in objs if i not in prev_objs]:
            before, after = prev_objs.get(oid), objs.get(oid)
            if after is None:  # removed
                b = _main(produced, before.colour)
                dec = ObjectDecision(oid, before.colour, before.shape, "removed", found=b is not None, ok=b is None)
                dec.reason = "" if dec.ok else "still there"
                decisions.append(dec)
                continue
            exp_blob = _main(expected, after.colour)
            blob = _main(produced, after.colour)
            role = "added" if before is None else ("edited" if oid in edited or kind.startswith("camera") else "kept")
            dec = ObjectDecision(oid, after.colour, after.shape, role, found=blob is not None, ok=False)
            decisions.append(dec)
            if blob is None:
                dec.reason = f"no {after.colour} object found"
                continue
            if exp_blob is not None:
                dec.position_error = round(_dist(blob.centroid, exp_blob.centroid, S), 4)
                dec.size_ratio = round(blob.area / exp_blob.area, 4)
            shape_ok = self._shape(dec, blob, after)
            if before is None:
                ok_pos = exp_blob is not None and dec.position_error <= t.add_tol
                ok_size = exp_blob is not None and 1 / t.add_area_tol <= dec.size_ratio <= t.add_area_tol
                dec.ok = ok_pos and ok_size and shape_ok
                dec.reason = _reason(pos=ok_pos, size=ok_size, shape=shape_ok)
                continue
            r = _main(ref, before.colour)
            if r is None:
                dec.reason = f"no {before.colour} object in the input image"
                continue
            shift = _dist(blob.centroid, r.centroid, S)
            area_ratio = blob.area / r.area
            kept_pos = shift <= t.pos_tol
            kept_size = 1 / t.area_tol <= area_ratio <= t.area_tol
            prev_exp = _main(self.expected_detections(prev_state), before.colour)
            if role == "kept":
                dec.ok = kept_pos and kept_size and shape_ok
                dec.reason = _reason(pos=kept_pos, size=kept_size, shape=shape_ok)
            elif kind == "swap":
                other = next(i for i in edited if i != oid)
                r_other = _main(ref, prev_objs[other].colour) if other in prev_objs else None
                ok_pos = r_other is not None and _dist(blob.centroid, r_other.centroid, S) <= t.pos_tol
                dec.ok = ok_pos and kept_size and shape_ok
                dec.reason = _reason(pos=ok_pos, size=kept_size, shape=shape_ok)
            elif kind in ("move", "camera_pan"):
                if exp_blob is None or prev_exp is None:
                    dec.reason = "expected position unknown"
                    continue
                ex, ey = exp_blob.centroid[0] - prev_exp.centroid[0], exp_blob.centroid[1] - prev_exp.centroid[1]
                px, py = blob.centroid[0] - r.centroid[0], blob.centroid[1] - r.centroid[1]
                e_len, p_len = math.hypot(ex, ey), math.hypot(px, py)
                ok_dir = p_len > 0 and e_len > 0 and _angle(ex, ey, px, py) <= t.angle_tol
                ok_dist = e_len > 0 and t.dist_range[0] <= p_len / e_len <= t.dist_range[1]
                dec.ok = ok_dir and ok_dist and kept_size and shape_ok
                dec.reason = _reason(direction=ok_dir, distance=ok_dist, size=kept_size, shape=shape_ok)
            elif kind == "resize" or kind == "camera_zoom":
                grow = state_area(after, state) > state_area(before, prev_state)
                ok_dir = area_ratio >= t.resize_min if grow else area_ratio <= 1 / t.resize_min
                ok_abs = dec.size_ratio is not None and 1 / t.add_area_tol <= dec.size_ratio <= t.add_area_tol
                ok_pos = (
                    kept_pos if kind == "resize" else dec.position_error is not None and dec.position_error <= t.add_tol
                )
                dec.ok = ok_dir and ok_abs and ok_pos and shape_ok
                dec.reason = _reason(resize=ok_dir, size=ok_abs, pos=ok_pos, shape=shape_ok)
            else:  # recolour, rotate: in place, same size, the shape check covers the rotation
                dec.ok = kept_pos and kept_size and shape_ok
                dec.reason = _reason(pos=kept_pos, size=kept_size, shape=shape_ok)
        expected_colours = {o.colour for o in objs.values()}
        extra = []
        for colour, blobs in produced.items():
            if colour not in expected_colours:
                extra.append(colour)
            elif len(blobs) > 1 and blobs[1].area >= max(self.min_area, t.duplicate_frac * blobs[0].area):
                extra.append(colour)
        bg_ok, bg_err = self._background(state, produced, produced_img, expected_img)
        return decisions, sorted(extra), bg_ok, bg_err

    def turn(
        self,
        prev_state: SceneState,
        state: SceneState,
        change: dict[str, Any],
        input_img: np.ndarray,
        produced_img: np.ndarray,
        expected_img: np.ndarray,
        ref: dict[str, list[Blob]] | None = None,
    ) -> tuple[bool, list[ObjectDecision], list[str], bool, float | None, dict[str, list[Blob]]]:
        """Judge one turn from images: (success, decisions, extra colours, background ok, background
        error, detections in the produced image)."""
        ref = ref if ref is not None else self.detect(input_img)
        produced = self.detect(produced_img)
        expected = self.expected_detections(state)
        decisions, extra, bg_ok, bg_err = self.judge(
            prev_state, state, change, ref, expected, produced, produced_img, expected_img
        )
        success = all(d.ok for d in decisions) and not extra and bg_ok
        return success, decisions, extra, bg_ok, bg_err, produced

    def _background(self, state, produced, produced_img, expected_img) -> tuple[bool, float | None]:
        W, H = self.size
        occupied = np.zeros((H, W), dtype=bool)
        for m in render_masks(state, self.size).values():
            occupied |= m
        for blobs in produced.values():
            for b in blobs:
                occupied |= b.mask
        occupied |= classify_colours(produced_img) >= 0
        # grow by 2 px so anti-aliased and codec-blurred edges do not count as background
        grown = occupied.copy()
        for _ in range(2):
            g = grown.copy()
            g[1:, :] |= grown[:-1, :]
            g[:-1, :] |= grown[1:, :]
            g[:, 1:] |= grown[:, :-1]
            g[:, :-1] |= grown[:, 1:]
            grown = g
        free = ~grown
        if free.mean() < 0.1:
            return True, None
        err = float(np.abs(produced_img.astype(np.float64) - expected_img.astype(np.float64))[free].mean())
        return err <= self.tol.bg_tol, round(err, 3)


def state_area(obj, state: SceneState) -> float:
    """Drawn area in shorter-side units squared (includes the camera zoom)."""
    return (obj.radius * state.camera.zoom) ** 2


def _angle(ax: float, ay: float, bx: float, by: float) -> float:
    cos = (ax * bx + ay * by) / (math.hypot(ax, ay) * math.hypot(bx, by))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def _reason(**checks: bool) -> str:
    failed = [k for k, v in checks.items() if not v]
    return "" if not failed else "wrong " + ", ".join(failed)


# --------------------------------------------------------------------------------------------
# sessions


def score_session(
    session,
    images: Sequence[Any],
    masks: Sequence[Any] | None = None,
    tol: Tolerances | None = None,
    exact_inputs: bool = False,
) -> SessionScore:
    """Score the images a model produced for each turn of a BenchmarkSession.

    images: one per turn (uint8 (H, W, 3) arrays, PIL images or paths; resized to the session size
    if needed); missing turns fail. masks: optional, one per turn: a bool (H, W) array (compared
    with the expected dst RoE), a (src, dst) pair or {"src": ..., "dst": ...}, or None.
    Turn k is judged against the image it edited (what a kept object must stay as): the model's own turn k-1
    image, or with `exact_inputs` (images made from the exact earlier frames, `--true-history`) the exact
    frame k-1.
    """
    size = tuple(session.size)
    judge = TurnJudge(size, tol)
    ref_img = _to_array(session.start_image, size)
    ref = judge.detect(ref_img)
    prev_state = session.start_state
    turns: list[TurnScore] = []
    alive = True
    for k, turn in enumerate(session.turns):
        change = {"kind": turn.kind, "objects": list(turn.objects)}
        expected_img = np.asarray(turn.image)
        if k >= len(images) or images[k] is None:
            ts = TurnScore(
                k + 1, turn.instruction, turn.kind, False, False, [], [], False, None, None, None, reason="no image"
            )
            turns.append(ts)
            alive = False
            prev_state = turn.state
            if exact_inputs:
                ref_img = expected_img
                ref = judge.detect(ref_img)
            continue
        img = _to_array(images[k], size)
        success, decisions, extra, bg_ok, bg_err, produced = judge.turn(
            prev_state, turn.state, change, ref_img, img, expected_img, ref=ref
        )
        alive = alive and success
        reasons = [f"{d.id} ({d.colour} {d.shape}, {d.role}): {d.reason}" for d in decisions if not d.ok]
        if extra:
            reasons.append("unexpected " + ", ".join(extra) + " object(s)")
        if not bg_ok:
            reasons.append(f"background differs (error {bg_err})")
        ts = TurnScore(
            turn=k + 1,
            instruction=turn.instruction,
            kind=turn.kind,
            success=success,
            counted=alive,
            objects=decisions,
            extra=extra,
            background_ok=bg_ok,
            background_error=bg_err,
            psnr=round(psnr(img, expected_img), 4),
            ssim=round(ssim(img, expected_img), 4) if min(size) >= 11 else None,
            reason="; ".join(reasons),
        )
        if masks is not None and k < len(masks) and masks[k] is not None:
            src, dst = _split_masks(masks[k])
            if src is not None:
                ts.iou_src = round(mask_iou(_resize_mask(src, size), turn.roe.src), 4)
            if dst is not None:
                ts.iou_dst = round(mask_iou(_resize_mask(dst, size), turn.roe.dst), 4)
        turns.append(ts)
        if exact_inputs:
            ref_img = expected_img
            ref = judge.detect(ref_img)
        else:
            ref, ref_img = produced, img
        prev_state = turn.state
    return SessionScore(session.id, turns)


def _split_masks(m: Any) -> tuple[Any, Any]:
    if isinstance(m, dict):
        return m.get("src"), m.get("dst")
    if isinstance(m, tuple | list) and len(m) == 2:
        return m[0], m[1]
    return None, m


def _resize_mask(m: Any, size: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(m)
    if arr.ndim == 3:
        arr = arr.mean(-1)
    if arr.dtype != bool:
        arr = arr > (127 if arr.max() > 1 else 0.5)
    if (arr.shape[1], arr.shape[0]) != tuple(size):
        from PIL import Image

        arr = np.asarray(Image.fromarray(arr.astype(np.uint8) * 255).resize(tuple(size), Image.NEAREST)) > 127
    return arr


def aggregate(scores: Sequence[SessionScore]) -> list[dict[str, Any]]:
    """Per-turn table over sessions: cumulative success rate (MSE-Bench style), per-turn success rate
    (each turn judged on its own input), mean PSNR / SSIM / mask IoU, and object by object the share of the
    objects a turn changes (edited, added, removed) that came out right and of the others left intact."""
    n_turns = max((len(s.turns) for s in scores), default=0)
    rows = []
    for k in range(n_turns):
        ts = [s.turns[k] for s in scores if k < len(s.turns)]

        def mean(vals: list[float | None]) -> float | None:
            vals = [v for v in vals if v is not None]
            return round(float(np.mean(vals)), 4) if vals else None

        rows.append(
            {
                "turn": k + 1,
                "sessions": len(ts),
                "success_rate": round(sum(t.counted for t in ts) / len(ts), 4),
                "turn_success_rate": round(sum(t.success for t in ts) / len(ts), 4),
                "psnr": mean([t.psnr for t in ts]),
                "ssim": mean([t.ssim for t in ts]),
                "iou_src": mean([t.iou_src for t in ts]),
                "iou_dst": mean([t.iou_dst for t in ts]),
                "edited_right": object_share(ts, changed=True),
                "kept_intact": object_share(ts, changed=False),
            }
        )
    return rows


def object_share(turns: Sequence[TurnScore], changed: bool) -> float | None:
    """Over every object the turns scored: the share judged `ok` among those the instruction changes
    (`changed`: edited, added, removed) or among the ones it keeps; None when there are none."""
    oks = [o.ok for t in turns for o in t.objects if (o.role != "kept") == changed]
    return round(sum(oks) / len(oks), 4) if oks else None


def by_kind(scores: Sequence[SessionScore]) -> dict[str, dict[str, Any]]:
    """Per edit kind, over every scored turn: how many turns, the share that succeeded, the share whose
    instructed change was right (`edit_ok`, side effects aside), the share with an object of a colour that
    should not be there, and the share of kept objects left intact. Kinds sorted by name."""
    groups: dict[str, list[TurnScore]] = {}
    for s in scores:
        for t in s.turns:
            groups.setdefault(t.kind, []).append(t)
    out = {}
    for kind in sorted(groups):
        ts = groups[kind]
        kept = [o.ok for t in ts for o in t.objects if o.role == "kept"]
        out[kind] = {
            "turns": len(ts),
            "success_rate": round(sum(t.success for t in ts) / len(ts), 4),
            "edit_ok_rate": round(sum(t.edit_ok for t in ts) / len(ts), 4),
            "unexpected_rate": round(sum(bool(t.extra) for t in ts) / len(ts), 4),
            "kept_intact": round(sum(kept) / len(kept), 4) if kept else None,
        }
    return out
