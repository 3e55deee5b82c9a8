"""The synthetic world: palette, shapes, sizes, scene state, events and their interpolation.

A scene is a background, a camera and 0..N flat objects. Every object has a unique fill colour in
its scene, so "the red circle" always names exactly one object, and a detector can find it by
colour alone. Coordinates:

- object positions are *world* fractions of the frame (x of the width, y of the height, y down);
- radii are fractions of the frame's shorter side S = min(W, H);
- the camera looks at world point (x, y) with a zoom factor; a world point p lands on pixel
  ((p.x - cam.x) * zoom + 0.5) * W (and likewise for y with H).

Events (add, remove, move, ...) are pure functions state -> state; a timeline interpolates smoothly
between the key states they produce (`interpolate`). All random choices go through `Rng`, which
only uses `random.Random.random()` (the one method Python guarantees to stay stable), so the same
seed gives the same world on every Python version.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vincie_cli.utils.io import UsageError

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# vocabulary

# Fill colours: saturated, with hues at least ~25 degrees apart, so they stay apart after H.264
# (4:2:0 chroma) and after downscaling to 64x64. Backgrounds and outlines are low-chroma, so a
# pixel's hue alone says which object it belongs to.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (250, 130, 20),
    "yellow": (240, 215, 20),
    "green": (40, 185, 60),
    "cyan": (20, 195, 215),
    "blue": (40, 80, 225),
    "purple": (145, 60, 215),
    "pink": (240, 80, 180),
}
COLOURS = tuple(PALETTE)

# Background colours: chroma <= 35, pairwise mean absolute difference >= 40 levels.
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (235, 235, 235),
    "beige": (205, 190, 170),
    "gray": (140, 140, 140),
    "slate": (70, 85, 105),
    "charcoal": (45, 45, 45),
}
BACKGROUND_KINDS = ("solid", "gradient", "checker", "stripes")

OUTLINE_COLOURS: dict[str, tuple[int, int, int]] = {"white": (245, 245, 245), "black": (20, 20, 20)}
PATTERNS = ("plain", "striped", "dotted")
PATTERN_SHADE = 0.6  # stripes and dots use the fill colour times this (same hue, darker)

# Nominal radius of each size, as a fraction of the shorter frame side.
SIZES: dict[str, float] = {"small": 0.08, "medium": 0.11, "large": 0.15}
SIZE_ORDER = ("small", "medium", "large")

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
# Farthest point of each shape from its centre, in units of the object's radius (for placement).
SHAPE_EXTENT: dict[str, float] = {
    "circle": 1.0,
    "square": 0.9 * math.sqrt(2.0),
    "triangle": 1.3,
    "star": 1.35,
    "hexagon": 1.05,
    "cross": math.hypot(1.15, 0.4),
}
# Rotational symmetry period in degrees (0: any rotation looks the same).
SHAPE_PERIOD: dict[str, float] = {
    "circle": 0.0,
    "square": 90.0,
    "triangle": 120.0,
    "star": 72.0,
    "hexagon": 60.0,
    "cross": 90.0,
}
# Shapes whose rotation is clearly visible, and the turn an event applies (half their period, the
# most visible angle). Circles and hexagons are never rotated.
ROTATE_STEP: dict[str, float] = {"square": 45.0, "cross": 45.0, "triangle": 60.0, "star": 36.0}

EVENT_KINDS = (
    "add",
    "remove",
    "move",
    "recolour",
    "resize",
    "rotate",
    "swap",
    "background",
    "camera_pan",
    "camera_zoom",
    "none",
)
CAMERA_EVENTS = ("camera_pan", "camera_zoom")

# World limits: objects stay inside the frame, the camera stays near the centre.
MARGIN = 0.03
CAMERA_PAN_LIMIT = 0.15
ZOOM_RANGE = (0.8, 1.3)
MIN_MOVE, MAX_MOVE = 0.2, 0.4  # move distance, in units of the shorter side
ZOOM_STEP = 1.25
MIN_BACKGROUND_CHANGE = 35.0  # mean absolute difference (levels) a background change must make


# --------------------------------------------------------------------------------------------
# deterministic randomness


class Rng:
    """Random choices built only on `random.Random.random()`, stable across Python versions."""

    def __init__(self, seed: int | str) -> None:
        self._r = random.Random(str(seed))

    def random(self) -> float:
        return self._r.random()

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self._r.random()

    def randint(self, a: int, b: int) -> int:
        """Whole number in [a, b]."""
        return a + min(int(self._r.random() * (b - a + 1)), b - a)

    def choice(self, seq: Sequence[T]) -> T:
        if not seq:
            raise IndexError("choice from an empty sequence")
        return seq[min(int(self._r.random() * len(seq)), len(seq) - 1)]

    def weighted(self, items: Sequence[T], weights: Sequence[float]) -> T:
        total = sum(weights)
        x = self._r.random() * total
        for item, w in zip(items, weights):
            x -= w
            if x < 0:
                return item
        return items[-1]

    def shuffled(self, seq: Sequence[T]) -> list[T]:
        out = list(seq)
        for i in range(len(out) - 1, 0, -1):
            j = self.randint(0, i)
            out[i], out[j] = out[j], out[i]
        return out

    def sample(self, seq: Sequence[T], k: int) -> list[T]:
        return self.shuffled(seq)[:k]


def _r4(x: float) -> float:
    return round(float(x), 4)


# --------------------------------------------------------------------------------------------
# state


@dataclass(frozen=True)
class ObjectState:
    """One object. `colour`/`size` are names; `rgb`/`radius` are what is drawn (they differ from
    the names' values only in the middle of a recolour, resize, appear or disappear)."""

    id: str
    shape: str
    colour: str
    size: str
    position: tuple[float, float]  # world (x, y), fractions of width and height
    rotation: float = 0.0  # degrees, clockwise on screen
    pattern: str = "plain"
    outline: str | None = None  # "white" | "black" | None
    z: int = 0  # drawing order (higher on top)
    radius: float = -1.0  # drawn radius, fraction of the shorter side; -1: SIZES[size]
    rgb: tuple[float, float, float] | None = None  # drawn fill colour; None: PALETTE[colour]

    def __post_init__(self) -> None:
        if self.radius < 0:
            object.__setattr__(self, "radius", SIZES[self.size])
        if self.rgb is None:
            object.__setattr__(self, "rgb", tuple(float(c) for c in PALETTE[self.colour]))

    @property
    def nominal_radius(self) -> float:
        return SIZES[self.size]

    @property
    def present(self) -> bool:
        """Counts as in the scene (captions, changes): drawn at least half its nominal size."""
        return self.radius >= 0.5 * SIZES[self.size]

    @property
    def settled(self) -> bool:
        return self.radius == SIZES[self.size] and tuple(self.rgb) == tuple(float(c) for c in PALETTE[self.colour])

    def describe(self, article: str = "a") -> str:
        """'a small red circle with dark stripes and a white outline'."""
        text = f"{article} {self.size} {self.colour} {self.shape}"
        extras = []
        if self.pattern == "striped":
            extras.append("dark stripes")
        elif self.pattern == "dotted":
            extras.append("dark dots")
        if self.outline:
            extras.append(f"a {self.outline} outline")
        if extras:
            text += " with " + " and ".join(extras)
        return text

    def short(self) -> str:
        """'the red circle' (colours are unique in a scene)."""
        return f"the {self.colour} {self.shape}"

    def to_dict(self) -> dict[str, Any]:
        d = {
            "id": self.id,
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "position": [self.position[0], self.position[1]],
            "rotation": self.rotation,
            "pattern": self.pattern,
            "outline": self.outline,
            "z": self.z,
        }
        if self.radius != SIZES[self.size]:
            d["radius"] = self.radius
        if tuple(self.rgb) != tuple(float(c) for c in PALETTE[self.colour]):
            d["rgb"] = list(self.rgb)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectState:
        return cls(
            id=str(d["id"]),
            shape=str(d["shape"]),
            colour=str(d["colour"]),
            size=str(d["size"]),
            position=(float(d["position"][0]), float(d["position"][1])),
            rotation=float(d.get("rotation", 0.0)),
            pattern=str(d.get("pattern", "plain")),
            outline=d.get("outline"),
            z=int(d.get("z", 0)),
            radius=float(d.get("radius", -1.0)),
            rgb=tuple(float(c) for c in d["rgb"]) if d.get("rgb") is not None else None,
        )


@dataclass(frozen=True)
class Background:
    """kind: solid | gradient (colour -> colour2 along `angle`) | checker | stripes (low contrast)."""

    kind: str
    colour: str
    colour2: str | None = None
    angle: float = 90.0  # gradient direction in degrees (90: top to bottom)

    def describe(self) -> str:
        if self.kind == "gradient":
            return f"a gradient background from {self.colour} to {self.colour2}"
        if self.kind == "checker":
            return f"a {self.colour} checkered background"
        if self.kind == "stripes":
            return f"a {self.colour} striped background"
        return f"a plain {self.colour} background"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "colour": self.colour, "colour2": self.colour2, "angle": self.angle}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Background:
        return cls(str(d["kind"]), str(d["colour"]), d.get("colour2"), float(d.get("angle", 90.0)))


@dataclass(frozen=True)
class Camera:
    """The world point at the frame centre and a zoom factor (>1: closer)."""

    x: float = 0.5
    y: float = 0.5
    zoom: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "zoom": self.zoom}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Camera:
        return cls(float(d["x"]), float(d["y"]), float(d["zoom"]))


@dataclass(frozen=True)
class SceneState:
    """Everything a frame shows. `background_from`/`background_mix` describe a cross-fade in
    progress (drawn as (1 - mix) * from + mix * background); None when settled."""

    objects: tuple[ObjectState, ...]
    background: Background
    camera: Camera = field(default_factory=Camera)
    background_from: Background | None = None
    background_mix: float = 1.0

    def object(self, obj_id: str) -> ObjectState | None:
        for o in self.objects:
            if o.id == obj_id:
                return o
        return None

    @property
    def present_objects(self) -> list[ObjectState]:
        """Objects in the scene (drawn at least half size), in drawing order."""
        return [o for o in self.objects if o.present]

    @property
    def visible_objects(self) -> list[ObjectState]:
        """Present objects whose centre is inside the frame (what a caption lists)."""
        out = []
        for o in self.present_objects:
            sx, sy = self.screen_position(o)
            if 0.0 <= sx <= 1.0 and 0.0 <= sy <= 1.0:
                out.append(o)
        return out

    def by_colour(self, colour: str) -> ObjectState | None:
        for o in self.objects:
            if o.colour == colour:
                return o
        return None

    def screen_position(self, obj: ObjectState) -> tuple[float, float]:
        """Where the object's centre lands, as fractions of the frame (may be outside [0, 1])."""
        c = self.camera
        return ((obj.position[0] - c.x) * c.zoom + 0.5, (obj.position[1] - c.y) * c.zoom + 0.5)

    def describe(self) -> str:
        objs = self.visible_objects
        bg = self.background.describe()
        if not objs:
            return f"An empty scene: {bg}."
        parts = [o.describe() for o in objs]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{listed[0].upper()}{listed[1:]} on {bg}."

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "objects": [o.to_dict() for o in self.objects],
            "background": self.background.to_dict(),
            "camera": self.camera.to_dict(),
        }
        if self.background_from is not None:
            d["background_from"] = self.background_from.to_dict()
            d["background_mix"] = self.background_mix
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneState:
        return cls(
            objects=tuple(ObjectState.from_dict(o) for o in d["objects"]),
            background=Background.from_dict(d["background"]),
            camera=Camera.from_dict(d.get("camera", {"x": 0.5, "y": 0.5, "zoom": 1.0})),
            background_from=Background.from_dict(d["background_from"]) if d.get("background_from") else None,
            background_mix=float(d.get("background_mix", 1.0)),
        )


def background_difference(a: Background, b: Background) -> float:
    """Mean absolute difference in levels between two backgrounds (centred camera, 32x32)."""
    from vincie_cli.synth.render import render_background

    size = (32, 32)
    return float(abs(render_background(a, Camera(), size) - render_background(b, Camera(), size)).mean())


# --------------------------------------------------------------------------------------------
# interpolation


def smoothstep(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3.0 - 2.0 * u)


def _lerp(a: float, b: float, p: float) -> float:
    return a + (b - a) * p


def interpolate(a: SceneState, b: SceneState, p: float) -> SceneState:
    """The state a fraction `p` (already eased) of the way from `a` to `b`.

    Objects are matched by id; one only in `a` shrinks away, one only in `b` grows in. Names
    (colour, size, background) switch at p = 0.5, drawn values (rgb, radius, cross-fade) move
    continuously. p <= 0 returns `a`, p >= 1 returns `b` exactly.
    """
    if p <= 0.0:
        return a
    if p >= 1.0:
        return b
    a_objs = {o.id: o for o in a.objects}
    b_objs = {o.id: o for o in b.objects}
    out: list[ObjectState] = []
    for oid in list(a_objs) + [i for i in b_objs if i not in a_objs]:
        oa, ob = a_objs.get(oid), b_objs.get(oid)
        if oa is not None and ob is not None:
            late = p >= 0.5
            out.append(
                dataclasses.replace(
                    ob if late else oa,
                    position=(_lerp(oa.position[0], ob.position[0], p), _lerp(oa.position[1], ob.position[1], p)),
                    rotation=_lerp(oa.rotation, ob.rotation, p),
                    radius=_lerp(oa.radius, ob.radius, p),
                    rgb=tuple(_lerp(x, y, p) for x, y in zip(oa.rgb, ob.rgb)),
                    z=max(oa.z, ob.z),
                )
            )
        elif oa is not None:
            out.append(dataclasses.replace(oa, radius=oa.radius * (1.0 - p)))
        elif ob is not None:
            out.append(dataclasses.replace(ob, radius=ob.radius * p))
    out.sort(key=lambda o: o.z)
    ca, cb = a.camera, b.camera
    zoom = ca.zoom if ca.zoom == cb.zoom else math.exp(_lerp(math.log(ca.zoom), math.log(cb.zoom), p))
    camera = Camera(_lerp(ca.x, cb.x, p), _lerp(ca.y, cb.y, p), zoom)
    if a.background != b.background:
        bg, bg_from, mix = (b.background if p >= 0.5 else a.background), a.background, p
    else:
        bg, bg_from, mix = b.background, None, 1.0
    return SceneState(tuple(out), bg, camera, bg_from, mix)


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class SynthConfig:
    """What the generator may draw. Sizes must be even (H.264 4:2:0)."""

    width: int = 256
    height: int = 256
    fps: int = 24
    duration: float = 5.0  # seconds
    min_objects: int = 1
    max_objects: int = 5
    min_events: int = 3
    max_events: int = 5
    event_kinds: tuple[str, ...] = EVENT_KINDS
    camera: bool = True  # allow camera pan and zoom events
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = COLOURS
    background_kinds: tuple[str, ...] = BACKGROUND_KINDS
    patterns: bool = True  # striped / dotted fills
    outlines: bool = True
    motion_seconds: tuple[float, float] = (0.4, 0.8)  # duration of one event's motion
    hold_seconds: tuple[float, float] = (0.25, 0.6)  # static hold before each event
    crf: int = 18  # x264 quality (lower: closer to the ground truth)
    encoder_preset: str = "ultrafast"

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise UsageError(f"synth size {self.width}x{self.height}: need even sizes of at least 16x16")
        if not 1 <= self.fps <= 240:
            raise UsageError(f"synth fps {self.fps}: need 1..240")
        if self.duration <= 0:
            raise UsageError(f"synth duration {self.duration}: must be positive")
        if not 0 <= self.min_objects <= self.max_objects <= len(self.colours):
            raise UsageError(
                f"synth objects {self.min_objects}..{self.max_objects}: need 0 <= min <= max <= {len(self.colours)}"
            )
        if not 0 <= self.min_events <= self.max_events:
            raise UsageError(f"synth events {self.min_events}..{self.max_events}: need 0 <= min <= max")
        for name, values, allowed in (
            ("event kind", self.event_kinds, EVENT_KINDS),
            ("shape", self.shapes, SHAPES),
            ("colour", self.colours, COLOURS),
            ("background kind", self.background_kinds, BACKGROUND_KINDS),
        ):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise UsageError(f"synth {name} {bad or '(none)'}: expected some of {', '.join(allowed)}")
        if self.max_events > 0 and not self.allowed_events:
            raise UsageError("synth: no event kinds left (only camera kinds were allowed, and the camera is off)")
        self.event_kinds = tuple(self.event_kinds)
        self.shapes = tuple(self.shapes)
        self.colours = tuple(self.colours)
        self.background_kinds = tuple(self.background_kinds)
        self.motion_seconds = tuple(self.motion_seconds)  # type: ignore[assignment]
        self.hold_seconds = tuple(self.hold_seconds)  # type: ignore[assignment]

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    @property
    def num_frames(self) -> int:
        return max(1, round(self.duration * self.fps))

    @property
    def aspect(self) -> tuple[float, float]:
        """(W / S, H / S) with S the shorter side: converts fractions of the frame to radius units."""
        s = min(self.width, self.height)
        return (self.width / s, self.height / s)

    @property
    def allowed_events(self) -> tuple[str, ...]:
        return tuple(k for k in self.event_kinds if self.camera or k not in CAMERA_EVENTS)

    @classmethod
    def for_difficulty(cls, name: str, **overrides: Any) -> SynthConfig:
        """Presets: easy (1-3 objects, simple events, no camera), medium (the default), hard."""
        presets: dict[str, dict[str, Any]] = {
            "easy": dict(
                min_objects=1,
                max_objects=3,
                min_events=2,
                max_events=3,
                event_kinds=("add", "remove", "move", "recolour", "resize", "none"),
                camera=False,
                background_kinds=("solid",),
                patterns=False,
                outlines=False,
            ),
            "medium": {},
            "hard": dict(
                min_objects=3,
                max_objects=5,
                min_events=5,
                max_events=8,
                motion_seconds=(0.3, 0.6),
                hold_seconds=(0.2, 0.4),
            ),
        }
        if name not in presets:
            raise UsageError(f"unknown difficulty {name!r}; expected one of {', '.join(presets)}")
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------------------------
# sampling and events


class World:
    """Samples scenes and applies events for one video or benchmark session (owns the id counter)."""

    def __init__(self, rng: Rng, cfg: SynthConfig) -> None:
        self.rng = rng
        self.cfg = cfg
        self.ax, self.ay = cfg.aspect
        self._next_id = 1

    # ---- geometry

    def _extent(self, shape: str, size: str) -> float:
        return SHAPE_EXTENT[shape] * SIZES[size]

    def _fits(self, pos: tuple[float, float], shape: str, size: str, others: Sequence[ObjectState]) -> bool:
        """Inside the frame (at zoom 1, centred camera) and clear of every other object."""
        e = self._extent(shape, size)
        mx, my = (e + MARGIN) / self.ax, (e + MARGIN) / self.ay
        if not (mx <= pos[0] <= 1 - mx and my <= pos[1] <= 1 - my):
            return False
        for o in others:
            d = math.hypot((pos[0] - o.position[0]) * self.ax, (pos[1] - o.position[1]) * self.ay)
            if d < e + self._extent(o.shape, o.size) + 2 * MARGIN:
                return False
        return True

    def _free_position(
        self, shape: str, size: str, others: Sequence[ObjectState], tries: int = 60
    ) -> tuple[float, float] | None:
        e = self._extent(shape, size)
        mx, my = (e + MARGIN) / self.ax, (e + MARGIN) / self.ay
        if mx >= 0.5 or my >= 0.5:
            return None
        for _ in range(tries):
            pos = (_r4(self.rng.uniform(mx, 1 - mx)), _r4(self.rng.uniform(my, 1 - my)))
            if self._fits(pos, shape, size, others):
                return pos
        return None

    # ---- sampling

    def new_id(self) -> str:
        oid = f"obj{self._next_id}"
        self._next_id += 1
        return oid

    def sample_background(self, avoid: Background | None = None) -> Background:
        for _ in range(50):
            kind = self.rng.choice(self.cfg.background_kinds)
            colour = self.rng.choice(list(BACKGROUND_COLOURS))
            colour2 = None
            angle = 90.0
            if kind == "gradient":
                colour2 = self.rng.choice([c for c in BACKGROUND_COLOURS if c != colour])
                angle = self.rng.choice([0.0, 45.0, 90.0, 135.0])
            bg = Background(kind, colour, colour2, angle)
            if avoid is None or background_difference(bg, avoid) >= MIN_BACKGROUND_CHANGE:
                return bg
        return bg

    def sample_object(self, others: Sequence[ObjectState], size: str | None = None) -> ObjectState | None:
        used = {o.colour for o in others}
        colours = [c for c in self.cfg.colours if c not in used]
        if not colours:
            return None
        shape = self.rng.choice(self.cfg.shapes)
        sizes = [size] if size else self.rng.shuffled(SIZE_ORDER)
        for sz in sizes:
            pos = self._free_position(shape, sz, others)
            if pos is None:
                continue
            pattern = self.rng.choice(PATTERNS) if self.cfg.patterns and self.rng.random() < 0.4 else "plain"
            outline = self.rng.choice(list(OUTLINE_COLOURS)) if self.cfg.outlines and self.rng.random() < 0.35 else None
            rotation = 0.0
            if shape in ROTATE_STEP and self.rng.random() < 0.3:
                rotation = ROTATE_STEP[shape]
            z = max((o.z for o in others), default=-1) + 1
            return ObjectState(
                id=self.new_id(),
                shape=shape,
                colour=self.rng.choice(colours),
                size=sz,
                position=pos,
                rotation=rotation,
                pattern=pattern,
                outline=outline,
                z=z,
            )
        return None

    def sample_scene(self, n_objects: int | None = None) -> SceneState:
        n = n_objects if n_objects is not None else self.rng.randint(self.cfg.min_objects, self.cfg.max_objects)
        objs: list[ObjectState] = []
        for _ in range(n):
            o = self.sample_object(objs)
            if o is not None:
                objs.append(o)
        return SceneState(tuple(objs), self.sample_background(), Camera())

    # ---- events

    def propose(self, kind: str, state: SceneState) -> tuple[SceneState, dict[str, Any]] | None:
        """Apply one event of `kind` to a settled state: (new state, params), or None if impossible."""
        return getattr(self, f"_ev_{kind}")(state)

    def _replace(self, state: SceneState, obj: ObjectState, **changes: Any) -> SceneState:
        new = dataclasses.replace(obj, **changes)
        if "colour" in changes:
            new = dataclasses.replace(new, rgb=tuple(float(c) for c in PALETTE[new.colour]))
        if "size" in changes:
            new = dataclasses.replace(new, radius=SIZES[new.size])
        return dataclasses.replace(state, objects=tuple(new if o.id == obj.id else o for o in state.objects))

    def _ev_none(self, state: SceneState):
        return state, {}

    def _ev_add(self, state: SceneState):
        if len(state.objects) >= self.cfg.max_objects:
            return None
        obj = self.sample_object(state.objects)
        if obj is None:
            return None
        return dataclasses.replace(state, objects=state.objects + (obj,)), {"objects": [obj.id]}

    def _ev_remove(self, state: SceneState):
        if len(state.objects) <= max(1, self.cfg.min_objects):
            return None
        obj = self.rng.choice(state.objects)
        return dataclasses.replace(state, objects=tuple(o for o in state.objects if o.id != obj.id)), {
            "objects": [obj.id]
        }

    def _ev_move(self, state: SceneState):
        if not state.objects:
            return None
        for obj in self.rng.shuffled(state.objects):
            others = [o for o in state.objects if o.id != obj.id]
            for _ in range(12):
                angle = self.rng.randint(0, 7) * 45.0
                dist = self.rng.uniform(MIN_MOVE, MAX_MOVE)
                dx = math.cos(math.radians(angle)) * dist / self.ax
                dy = -math.sin(math.radians(angle)) * dist / self.ay  # angle counter-clockwise, y down
                pos = (_r4(obj.position[0] + dx), _r4(obj.position[1] + dy))
                if self._fits(pos, obj.shape, obj.size, others):
                    return self._replace(state, obj, position=pos), {"objects": [obj.id], "angle": angle}
        return None

    def _ev_recolour(self, state: SceneState):
        used = {o.colour for o in state.objects}
        free = [c for c in self.cfg.colours if c not in used]
        if not state.objects or not free:
            return None
        obj = self.rng.choice(state.objects)
        return self._replace(state, obj, colour=self.rng.choice(free)), {"objects": [obj.id]}

    def _ev_resize(self, state: SceneState):
        for obj in self.rng.shuffled(state.objects):
            others = [o for o in state.objects if o.id != obj.id]
            for size in self.rng.shuffled([s for s in SIZE_ORDER if s != obj.size]):
                if self._fits(obj.position, obj.shape, size, others):
                    return self._replace(state, obj, size=size), {"objects": [obj.id]}
        return None

    def _ev_rotate(self, state: SceneState):
        candidates = [o for o in state.objects if o.shape in ROTATE_STEP]
        if not candidates:
            return None
        obj = self.rng.choice(candidates)
        delta = ROTATE_STEP[obj.shape] * self.rng.choice([1.0, -1.0])
        return self._replace(state, obj, rotation=_r4(obj.rotation + delta)), {"objects": [obj.id], "degrees": delta}

    def _ev_swap(self, state: SceneState):
        objs = list(state.objects)
        if len(objs) < 2:
            return None
        for _ in range(10):
            a, b = self.rng.sample(objs, 2)
            others = [o for o in objs if o.id not in (a.id, b.id)]
            moved_a = dataclasses.replace(a, position=b.position)
            if self._fits(b.position, a.shape, a.size, others) and self._fits(
                a.position, b.shape, b.size, others + [moved_a]
            ):
                new = self._replace(self._replace(state, a, position=b.position), b, position=a.position)
                return new, {"objects": [a.id, b.id]}
        return None

    def _ev_background(self, state: SceneState):
        return dataclasses.replace(state, background=self.sample_background(avoid=state.background)), {}

    def _ev_camera_pan(self, state: SceneState):
        c = state.camera
        options = []
        for name, dx, dy in (("right", 1, 0), ("left", -1, 0), ("down", 0, 1), ("up", 0, -1)):
            amount = _r4(self.rng.uniform(0.08, 0.12))
            nx, ny = _r4(c.x + dx * amount), _r4(c.y + dy * amount)
            if abs(nx - 0.5) <= CAMERA_PAN_LIMIT and abs(ny - 0.5) <= CAMERA_PAN_LIMIT:
                options.append((name, nx, ny))
        if not options:
            return None
        name, nx, ny = self.rng.choice(options)
        return dataclasses.replace(state, camera=Camera(nx, ny, c.zoom)), {"direction": name}

    def _ev_camera_zoom(self, state: SceneState):
        c = state.camera
        options = [z for z in (_r4(c.zoom * ZOOM_STEP), _r4(c.zoom / ZOOM_STEP)) if ZOOM_RANGE[0] <= z <= ZOOM_RANGE[1]]
        if not options:
            return None
        zoom = self.rng.choice(options)
        return dataclasses.replace(state, camera=Camera(c.x, c.y, zoom)), {
            "direction": "in" if zoom > c.zoom else "out"
        }
