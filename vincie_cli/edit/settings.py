"""`EditSettings`: every option of an editing session, with the reference's values as defaults.

Defaults follow the released generator (reference notes §1, §5, §8, §9): 50 Euler steps on the shift-12
trailing grid, CFG 7.5 (no rescale, all steps), area-256 resolution with the aspect kept, the
"Based on <IMGi>, ... Output <IMGj>: " template, one seed for every round of a session (1, as the release's
`seed = 1 + repeat` with one repeat), an fp32 DiT whose attention rounds q/k/v to bf16, a bf16 VAE, noise drawn
on the compute device's generator. Two defaults differ on purpose and are documented in docs/editing.md:
context latents stay in memory between turns (`roundtrip="latent"`; "png" is the reference's decode -> PNG ->
re-encode) and the VAE posterior is its mean (the release samples it with an unseeded RNG).

Settings come from the CLI, from a session.json (resume, replay) or from a plain dict (`vincie eval`'s
`--gen-set KEY=VALUE`): `EditSettings.from_dict` accepts the field names and the CLI's spellings of list
values ("current,next", "10,0,1.2").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from vincie_cli.utils.io import UsageError

CHAIN_STEPS = ("current", "next")
ROUNDTRIPS = ("latent", "png")
FITS = ("pad", "crop", "stretch")
PRECISIONS = ("fp32", "bf16", "fp16")
ATTENTIONS = ("bf16", "fp32")
POSTERIORS = ("mean", "sample")
NOISE_DEVICES = ("device", "cpu")
NEGATIVES = ("auto", "prompt", "empty")

# Settings fixed for the lifetime of a session: changing them on --resume would change what the earlier
# turns' context frames are, so the session could no longer be continued faithfully.
SESSION_FIXED = ("resolution", "aspect", "fit", "roundtrip", "posterior", "max_input_pixels", "min_image_side")


@dataclass
class EditSettings:
    """Every knob of `vincie edit` / `vincie story` / `run_sessions`.

    Sampling: steps, shift, guidance (CFG scale), rescale, partial, seed, camera_prefix, template.
    Guidance's negative branch (`negative`): "prompt" is the release's (one negative prompt with turn
    embedding 0: `negative_prompt`, None for ours, `prompts.DEFAULT_NEGATIVE_PROMPT`); "empty" is the
    unconditional branch `vincie train` trains (one empty text per step); "auto" picks "empty" for models
    trained by `vincie train` (their config records a layout) unless a negative prompt is given, else "prompt".
    Images: resolution (target pixel area resolution²), aspect ("keep_ratio", "adaptive" or "W:H"), fit (how
    input images 2.. are brought to the first image's frame: "pad" letterboxes, "crop" fills and centre-crops,
    "stretch" resizes to the first image's size as the release does), max_input_pixels, min_image_side.
    Session: context (past turns in context; None: all), chain (mask frames predicted before each image),
    roundtrip ("latent" or "png"), keep_outside (None: off; N: outside the turn's change masks grown by N
    pixels, the edited image keeps the source image's pixels exactly; needs masks: chain, --mask or --drag).
    Numerics: precision (DiT dtype), attention ("bf16": the release's rounding of q/k/v; "fp32"),
    vae_precision, posterior ("mean" or a seeded "sample"), noise_device ("device": the compute device's
    generator, as the release; "cpu": the same noise on every machine).
    Speed / memory: batched_cfg (both guidance passes in one forward), compile (+ compile_backend), device,
    text_device, offload_text (move the text encoder to the CPU once the session's prompts are encoded).
    """

    # sampling
    steps: int = 50
    shift: float = 12.0
    guidance: float = 7.5
    rescale: float = 0.0
    partial: float = 1.0
    seed: int = 1
    negative: str = "auto"
    negative_prompt: str | None = None
    camera_prefix: str = ""
    template: bool = True
    # images
    resolution: int = 256
    aspect: str = "keep_ratio"
    fit: str = "pad"
    max_input_pixels: int = 64_000_000
    min_image_side: int = 16
    # session
    context: int | None = None
    chain: tuple[str, ...] = ()
    roundtrip: str = "latent"
    keep_outside: int | None = None
    # numerics
    precision: str = "fp32"
    attention: str = "bf16"
    vae_precision: str = "bf16"
    posterior: str = "mean"
    noise_device: str = "device"
    # speed / memory
    batched_cfg: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    device: str = "auto"
    text_device: str | None = None
    offload_text: bool = False

    def __post_init__(self) -> None:
        self.chain = parse_chain(self.chain)
        problems = []
        if self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.shift <= 0:
            problems.append(f"shift must be > 0, got {self.shift}")
        if not 0.0 <= self.partial <= 1.0:
            problems.append(f"partial must be in [0, 1], got {self.partial}")
        if not 0.0 <= self.rescale <= 1.0:
            problems.append(f"rescale must be in [0, 1], got {self.rescale}")
        if self.resolution < 16:
            problems.append(f"resolution must be >= 16 (pixels per side of the target area), got {self.resolution}")
        if self.context is not None and self.context < 0:
            problems.append(f"context must be >= 0 past turns, got {self.context}")
        if self.keep_outside is not None and self.keep_outside < 0:
            problems.append(f"keep_outside must be >= 0 pixels, got {self.keep_outside}")
        if self.max_input_pixels < 1 or self.min_image_side < 1:
            problems.append("max_input_pixels and min_image_side must be positive")
        for name, allowed in (
            ("roundtrip", ROUNDTRIPS),
            ("fit", FITS),
            ("precision", PRECISIONS),
            ("vae_precision", PRECISIONS),
            ("attention", ATTENTIONS),
            ("posterior", POSTERIORS),
            ("noise_device", NOISE_DEVICES),
            ("negative", NEGATIVES),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if problems:
            raise UsageError("invalid edit settings: " + "; ".join(problems))

    # conversion ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chain"] = list(self.chain)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, base: EditSettings | None = None) -> EditSettings:
        """Settings from a dict (session.json, `--gen-set` pairs); unknown keys are a UsageError naming them."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown edit setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = (base or cls()).to_dict()
        values.update(d)
        try:
            return cls(**{k: _coerce(k, v) for k, v in values.items()})
        except (TypeError, ValueError) as e:
            raise UsageError(f"invalid edit settings: {e}") from None

    def updated(self, **changes: Any) -> EditSettings:
        return replace(self, **changes)

    def session_conflicts(self, recorded: EditSettings) -> list[str]:
        """The session-fixed settings where self differs from a session's recorded settings."""
        return [
            f"{k} {getattr(recorded, k)!r} -> {getattr(self, k)!r}"
            for k in SESSION_FIXED
            if getattr(self, k) != getattr(recorded, k)
        ]


_FIELD_TYPES = {f.name: f.type for f in fields(EditSettings)}


def _coerce(name: str, value: Any) -> Any:
    """Accept strings for numbers and flags (dict sources such as `--gen-set steps=20` may carry strings)."""
    if value is None:
        return None
    kind = str(_FIELD_TYPES[name])
    if name == "chain":
        return parse_chain(value)
    if kind.startswith("int"):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        if isinstance(value, str):
            low = value.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(f"{name} must be true or false, got {value!r}")
            return low in ("1", "true", "yes", "on")
        return bool(value)
    return value


def parse_setting_pairs(pairs: Iterable[str], option: str = "--gen-set") -> dict[str, Any]:
    """KEY=VALUE strings (`--gen-set steps=1`) -> {key: value}, each value parsed as JSON when it is JSON
    (`1` -> 1, `true` -> True, `current,next` stays a string). Raises UsageError naming the bad pair."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def parse_chain(value: Any) -> tuple[str, ...]:
    """'current,next' / ['next'] / '' / None -> a tuple in canonical order ('current' before 'next')."""
    if value is None:
        return ()
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    else:
        items = [str(v).strip() for v in value]
    if any(v in ("none", "off") for v in items):
        items = [v for v in items if v not in ("none", "off")]
    bad = [v for v in items if v not in CHAIN_STEPS]
    if bad:
        raise UsageError(f"--chain: unknown step(s) {', '.join(map(repr, bad))}; use current, next or current,next")
    return tuple(s for s in CHAIN_STEPS if s in items)


@dataclass(frozen=True)
class Drag:
    """Move the predicted current change mask to make the next one: translate by (dx, dy) pixels of the
    edited frame, scale about the mask's centroid, rotate by `angle` degrees counter-clockwise about it."""

    dx: float
    dy: float
    scale: float = 1.0
    angle: float = 0.0

    def to_list(self) -> list[float]:
        return [self.dx, self.dy, self.scale, self.angle]


def parse_drag(value: str | list | tuple | Drag | None) -> Drag | None:
    """'DX,DY[,SCALE[,ANGLE]]' (or a list) -> Drag; a clear UsageError otherwise."""
    if value is None or isinstance(value, Drag):
        return value
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        nums = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise UsageError(
            f"--drag {value!r}: expected numbers DX,DY[,SCALE[,ANGLE]], e.g. 40,-10 or 0,0,1.5,30"
        ) from None
    if not 2 <= len(nums) <= 4:
        raise UsageError(f"--drag {value!r}: expected 2 to 4 numbers DX,DY[,SCALE[,ANGLE]]")
    drag = Drag(*nums)
    if drag.scale <= 0:
        raise UsageError(f"--drag {value!r}: SCALE must be > 0")
    return drag


@dataclass
class TurnControl:
    """Per-turn control of one new turn: a user-supplied next-frame mask file, or a drag of the current mask;
    and/or a user-supplied current mask file (what the edit changes; a drag then moves that one)."""

    mask: str | None = None
    drag: Drag | None = None
    current_mask: str | None = None

    def __post_init__(self) -> None:
        if self.mask is not None and self.drag is not None:
            raise UsageError("--mask and --drag both give the next-frame mask; pass one of them")
