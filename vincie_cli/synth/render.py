"""A small numpy rasteriser for scene states: anti-aliased shapes, patterns, outlines, backgrounds.

Shapes are unions of convex polygons (or a circle) in unit coordinates; a pixel's signed distance
to the shape (negative inside, in pixels) gives a 1-pixel anti-aliased edge, coverage =
clip(0.5 - d, 0, 1). Only each object's bounding box is evaluated. A pixel belongs to an object's
instance mask when the object covers at least half of it (d <= 0, outline included) and no object
drawn later does.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import numpy as np

from vincie_cli.synth.world import (
    BACKGROUND_COLOURS,
    OUTLINE_COLOURS,
    PATTERN_SHADE,
    SHAPE_EXTENT,
    Background,
    Camera,
    ObjectState,
    SceneState,
)

TEXTURE_CONTRAST = 18.0  # levels between the two tones of a checker / stripes background
CHECKER_CELLS = 8  # checker cells per world unit
STRIPE_PERIOD = 0.1  # world units


def _regular(n: int, radius: float, start_deg: float) -> list[tuple[float, float]]:
    return [
        (
            radius * math.cos(math.radians(start_deg + 360.0 * k / n)),
            radius * math.sin(math.radians(start_deg + 360.0 * k / n)),
        )
        for k in range(n)
    ]


@cache
def shape_pieces(shape: str) -> tuple[tuple[tuple[float, float], ...], ...]:
    """Convex polygons (unit radius, y down) whose union is the shape; () for a circle."""
    if shape == "circle":
        return ()
    if shape == "square":
        s = 0.9
        return (((-s, -s), (s, -s), (s, s), (-s, s)),)
    if shape == "triangle":
        return (tuple(_regular(3, 1.3, -90.0)),)
    if shape == "hexagon":
        return (tuple(_regular(6, 1.05, 0.0)),)
    if shape == "cross":
        a, b = 1.15, 0.4
        return (((-a, -b), (a, -b), (a, b), (-a, b)), ((-b, -a), (b, -a), (b, a), (-b, a)))
    if shape == "star":
        outer = _regular(5, 1.35, -90.0)
        inner = _regular(5, 0.55, -90.0 + 36.0)
        # One convex kite per point: centre, inner vertex, outer point, next inner vertex.
        return tuple(((0.0, 0.0), inner[k - 1], outer[k], inner[k]) for k in range(5))
    raise ValueError(f"unknown shape {shape!r}")


def _piece_planes(poly, cx: float, cy: float, r: float, rot_deg: float) -> np.ndarray:
    """Edge planes (nx, ny, c) in pixel space with outward unit normals: inside iff nx*x + ny*y - c <= 0."""
    cos, sin = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    pts = [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in poly]
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    planes = []
    for i in range(len(pts)):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % len(pts)]
        nx, ny = y1 - y0, -(x1 - x0)
        norm = math.hypot(nx, ny)
        if norm == 0:
            continue
        nx, ny = nx / norm, ny / norm
        c = nx * x0 + ny * y0
        if nx * mx + ny * my - c > 0:  # make the normal point outward
            nx, ny, c = -nx, -ny, -c
        planes.append((nx, ny, c))
    return np.asarray(planes, dtype=np.float64)


def shape_distance(
    shape: str, cx: float, cy: float, r: float, rot_deg: float, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """Signed distance in pixels (negative inside) of pixel centres `xs` (W,) x `ys` (H,) -> (H, W)."""
    X = xs[None, :]
    Y = ys[:, None]
    if shape == "circle":
        return (np.sqrt((X - cx) ** 2 + (Y - cy) ** 2) - r).astype(np.float32)
    out = None
    for poly in shape_pieces(shape):
        planes = _piece_planes(poly, cx, cy, r, rot_deg)
        d = None
        for nx, ny, c in planes:
            e = (nx * X - c) + ny * Y
            d = e if d is None else np.maximum(d, e)
        out = d if out is None else np.minimum(out, d)
    return out.astype(np.float32)


@lru_cache(maxsize=64)
def shape_area_factor(shape: str) -> float:
    """Area of the shape at radius 1 (so area = factor * r^2)."""
    if shape == "circle":
        return math.pi
    n = 801
    xs = np.linspace(-1.5, 1.5, n)
    d = shape_distance(shape, 0.0, 0.0, 1.0, 0.0, xs, xs)
    return float((d <= 0).mean() * 9.0)


# --------------------------------------------------------------------------------------------
# object geometry on screen


def object_geometry(obj: ObjectState, camera: Camera, size: tuple[int, int]) -> tuple[float, float, float]:
    """(centre x px, centre y px, radius px) of an object under a camera."""
    W, H = size
    S = min(W, H)
    cx = ((obj.position[0] - camera.x) * camera.zoom + 0.5) * W
    cy = ((obj.position[1] - camera.y) * camera.zoom + 0.5) * H
    return cx, cy, obj.radius * camera.zoom * S


def outline_width(r_px: float) -> float:
    return max(1.0, 0.12 * r_px)


def _bbox(cx: float, cy: float, reach: float, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    W, H = size
    x0, x1 = max(0, int(math.floor(cx - reach))), min(W, int(math.ceil(cx + reach)) + 1)
    y0, y1 = max(0, int(math.floor(cy - reach))), min(H, int(math.ceil(cy + reach)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def object_patch(obj: ObjectState, camera: Camera, size: tuple[int, int]):
    """(bbox, d, d_outer, r_px, cx, cy) for an object: signed distances of the fill and of the whole
    object (fill + outline) over its bounding box, or None when it is off-screen or vanished."""
    cx, cy, r = object_geometry(obj, camera, size)
    if r <= 0.05:
        return None
    ow = outline_width(r) if obj.outline else 0.0
    reach = SHAPE_EXTENT[obj.shape] * r + ow + 2.0
    box = _bbox(cx, cy, reach, size)
    if box is None:
        return None
    y0, y1, x0, x1 = box
    xs = np.arange(x0, x1, dtype=np.float64) + 0.5
    ys = np.arange(y0, y1, dtype=np.float64) + 0.5
    d = shape_distance(obj.shape, cx, cy, r, obj.rotation, xs, ys)
    d_outer = d - ow if ow else d
    return box, d, d_outer, r, cx, cy, xs, ys


def _pattern_mask(obj: ObjectState, r: float, cx: float, cy: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """True where the darker pattern tone shows (in the object's rotating frame)."""
    cos, sin = math.cos(math.radians(obj.rotation)), math.sin(math.radians(obj.rotation))
    X = xs[None, :] - cx
    Y = ys[:, None] - cy
    u = X * cos + Y * sin
    v = -X * sin + Y * cos
    period = max(4.0, 0.55 * r)
    if obj.pattern == "striped":
        return np.floor(u / (period / 2.0)).astype(np.int64) % 2 == 1
    # dotted: dots of radius 0.3 * period on a grid
    du = u - period * np.round(u / period)
    dv = v - period * np.round(v / period)
    return du * du + dv * dv <= (0.3 * period) ** 2


# --------------------------------------------------------------------------------------------
# backgrounds


def _bg_rgb(name: str) -> np.ndarray:
    return np.asarray(BACKGROUND_COLOURS[name], dtype=np.float32)


def _second_tone(base: np.ndarray) -> np.ndarray:
    return base - TEXTURE_CONTRAST if base.mean() > 128 else base + TEXTURE_CONTRAST


def render_background(bg: Background, camera: Camera, size: tuple[int, int]) -> np.ndarray:
    """float32 (H, W, 3) background seen through `camera` (textures and gradients move with it)."""
    W, H = size
    base = _bg_rgb(bg.colour)
    if bg.kind == "solid":
        return np.broadcast_to(base, (H, W, 3)).copy()
    wx = ((np.arange(W, dtype=np.float64) + 0.5) / W - 0.5) / camera.zoom + camera.x  # (W,)
    wy = ((np.arange(H, dtype=np.float64) + 0.5) / H - 0.5) / camera.zoom + camera.y  # (H,)
    if bg.kind == "gradient":
        a = math.radians(bg.angle)
        t = np.clip(0.5 + (wx[None, :] - 0.5) * math.cos(a) + (wy[:, None] - 0.5) * math.sin(a), 0.0, 1.0)
        c2 = _bg_rgb(bg.colour2 or bg.colour)
        return (base[None, None, :] + (c2 - base)[None, None, :] * t[:, :, None].astype(np.float32)).astype(np.float32)
    if bg.kind == "checker":
        cx = np.floor(wx * CHECKER_CELLS).astype(np.int64)
        cy = np.floor(wy * CHECKER_CELLS).astype(np.int64)
        alt = ((cx[None, :] + cy[:, None]) % 2).astype(bool)
    elif bg.kind == "stripes":
        alt = (np.floor((wx[None, :] + wy[:, None]) / STRIPE_PERIOD).astype(np.int64) % 2).astype(bool)
    else:
        raise ValueError(f"unknown background kind {bg.kind!r}")
    out = np.broadcast_to(base, (H, W, 3)).copy()
    out[alt] = _second_tone(base)
    return out


class Renderer:
    """Renders scene states at one frame size, caching the background between frames."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = (int(size[0]), int(size[1]))
        self._bg_key = None
        self._bg: np.ndarray | None = None

    def background(self, state: SceneState) -> np.ndarray:
        key = (state.background, state.background_from, state.background_mix, state.camera)
        if key != self._bg_key:
            bg = render_background(state.background, state.camera, self.size)
            if state.background_from is not None and state.background_mix < 1.0:
                old = render_background(state.background_from, state.camera, self.size)
                m = np.float32(state.background_mix)
                bg = old * (1 - m) + bg * m
            self._bg_key, self._bg = key, bg
        return self._bg

    def render(self, state: SceneState, labels: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(uint8 (H, W, 3) image, uint8 (H, W) label map or None).

        `labels` maps object ids to label values (0 is background); objects not in it get no label.
        """
        img = self.background(state).copy()
        W, H = self.size
        lab = np.zeros((H, W), dtype=np.uint8) if labels is not None else None
        for obj in sorted(state.objects, key=lambda o: o.z):
            patch = object_patch(obj, state.camera, self.size)
            if patch is None:
                continue
            (y0, y1, x0, x1), d, d_outer, r, cx, cy, xs, ys = patch
            region = img[y0:y1, x0:x1]
            if obj.outline:
                a = np.clip(0.5 - d_outer, 0.0, 1.0)[:, :, None]
                oc = np.asarray(OUTLINE_COLOURS[obj.outline], dtype=np.float32)
                region += (oc - region) * a
            fill = np.asarray(obj.rgb, dtype=np.float32)
            a = np.clip(0.5 - d, 0.0, 1.0)[:, :, None]
            if obj.pattern != "plain":
                dark = _pattern_mask(obj, r, cx, cy, xs, ys)
                colour = np.where(dark[:, :, None], fill * np.float32(PATTERN_SHADE), fill)
                region += (colour - region) * a
            else:
                region += (fill - region) * a
            if lab is not None and obj.id in labels:
                lab[y0:y1, x0:x1][d_outer <= 0] = labels[obj.id]
        out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        return out, lab


def render_state(state: SceneState, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3): the exact frame for a scene state at size (W, H)."""
    return Renderer(size).render(state)[0]


def render_masks(state: SceneState, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """{object id: bool (H, W)} visible instance masks (occlusion applied) for a state."""
    labels = {o.id: i + 1 for i, o in enumerate(state.objects)}
    _, lab = Renderer(size).render(state, labels)
    out = {}
    for oid, v in labels.items():
        m = lab == v
        if m.any():
            out[oid] = m
    return out
