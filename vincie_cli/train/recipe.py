"""The training recipe: one YAML file = one `Recipe` (dataclasses below are the single source of truth).

    vincie train recipes/tiny.yaml --set optim.lr=3e-4 --set train.max_steps=50 --print-config
    vincie train tiny ...        # a recipe that ships with the package, by name (works from a pip install)

Loading is strict: an unknown key or a value of the wrong type is a `UsageError` naming the dotted key.
`--set a.b=value` overrides are parsed as YAML. `model.dit` / `model.vae` / `model.text` are mappings of
fields that override the preset's `DiTConfig` / `VAEConfig` / `TextEncoderConfig`; they are checked when
the model config is resolved (`resolve_model_config`). Every checkpoint holds the resolved recipe.yaml.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vincie_cli.config import apply_overrides, dump_yaml, from_dict, load_yaml
from vincie_cli.utils.io import UsageError

TASKS = ("nip", "csp", "nsp")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise UsageError(f"{key}: {msg}")


def _prob(value: float, key: str) -> None:
    _check(0.0 <= value <= 1.0, key, f"expected a probability in [0, 1], got {value}")


@dataclass
class LoraSection:
    """LoRA adapters (through peft) on the DiT's linear layers; rank 0 trains all DiT weights instead."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    # module names (last path components) in the transformer blocks that get adapters
    targets: list[str] = field(default_factory=lambda: ["proj_qkv", "proj_out", "proj_in", "proj_in_gate"])

    def __post_init__(self) -> None:
        _check(self.rank >= 0, "model.lora.rank", f"expected >= 0, got {self.rank}")
        _check(0.0 <= self.dropout < 1.0, "model.lora.dropout", f"expected in [0, 1), got {self.dropout}")
        _check(bool(self.targets), "model.lora.targets", "name at least one module")


@dataclass
class ModelSection:
    """Which network to train and how its inputs are laid out."""

    preset: str | None = "tiny"  # tiny | mini | 3b | 7b (model/presets.py); None: the architecture of `init`
    init: str | None = None  # start from weights: our model folder, a checkpoint folder, or a release folder
    text_init: str | None = None  # a text encoder folder to use (e.g. the release's llm14b/) instead of the model's
    dit: dict[str, Any] = field(default_factory=dict)  # DiTConfig field overrides
    vae: dict[str, Any] = field(default_factory=dict)  # VAEConfig field overrides
    text: dict[str, Any] = field(default_factory=dict)  # TextEncoderConfig field overrides
    layout: Literal["paper", "released"] = "paper"  # conditioning layout (docs/training.md)
    attention: Literal["block_causal", "full"] = "block_causal"  # paper layout only
    rope: Literal["interleaved", "text_then_image"] = "interleaved"  # paper layout only
    condition: Literal["none", "source"] = "none"  # paper layout: targets also carry their source image's latent
    # paper layout: the network predicts v, the clean latent, or a correction to its linear guess from the source
    prediction: Literal["velocity", "x0", "x0_source"] = "velocity"
    # prediction x0_source: prior std of (target - source) latents; the output is scaled by it (docs/training.md)
    source_sigma: float = 0.1
    attention_precision: Literal["bf16", "fp32"] = "fp32"  # "bf16": the release's q/k/v rounding
    frozen_dtype: Literal["fp32", "bf16"] = "fp32"  # the frozen autoencoder (and byte/T5 text encoder)
    gradient_checkpointing: bool = False
    lora: LoraSection = field(default_factory=LoraSection)

    def __post_init__(self) -> None:
        _check(self.preset is not None or self.init is not None, "model.preset", "give a preset or model.init")
        _check(self.source_sigma > 0, "model.source_sigma", f"expected > 0, got {self.source_sigma}")


@dataclass
class DataSection:
    """Where sessions come from and how frames become latents."""

    sources: list[str] = field(default_factory=list)  # shard files, globs, folders, fsspec URLs
    split: str | None = "train"
    val_sources: list[str] = field(default_factory=list)  # validation sessions (default: split "val" of sources)
    resolution: int = 256  # area target: frames are resized to about resolution² pixels
    aspect: Literal["keep_ratio", "adaptive"] = "keep_ratio"  # adaptive: snap to the nearest bucket
    aspect_buckets: list[str] = field(default_factory=lambda: ["9:16", "3:4", "1:1", "4:3", "16:9"])
    max_source_side: int | None = None  # shrink decoded frames first (saves decode time for big sources)
    max_turns: int = 5  # longer sessions are cut to a random window of this many turns
    shuffle_buffer: int = 256
    num_workers: int = 0  # DataLoader worker processes per rank
    use_cache: bool = False  # use the latent cache beside the shards (must be made by this very model)
    errors: Literal["raise", "skip"] = "raise"

    def __post_init__(self) -> None:
        _check(self.resolution >= 16, "data.resolution", f"expected >= 16, got {self.resolution}")
        _check(self.max_turns >= 1, "data.max_turns", f"expected >= 1, got {self.max_turns}")
        _check(self.shuffle_buffer >= 0, "data.shuffle_buffer", "expected >= 0")
        _check(self.num_workers >= 0, "data.num_workers", "expected >= 0")
        for r in self.aspect_buckets:
            w, _, h = r.partition(":")
            _check(w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0, "data.aspect_buckets", f"bad {r!r}")


@dataclass
class TasksSection:
    """Context composition (paper §3.3, §4.1): proxy tasks, dropout and loss weights."""

    roe_prob: float = 0.8  # a session uses its RoE masks with this probability
    drop_current_frame: float = 0.2  # per turn: hide the turn's source image from every later target
    drop_current_mask: float = 0.7  # per turn: leave out the source-frame mask (no CSP step)
    drop_next_mask: float = 0.7  # per turn: leave out the target-frame mask (no NSP step)
    text_dropout: float = 0.1  # per session: every step text becomes "" (for classifier-free guidance)
    camera_prefix: bool = True  # prepend "[###CAMERA: motion###] " to instructions, as the release saw them
    template: bool = True  # the released "Based on <IMGi>, ... Output <IMGj>: " template (prompts.py)
    loss_weights: dict[str, float] = field(default_factory=lambda: {"nip": 1.0, "csp": 1.0, "nsp": 1.0})
    context_loss_weight: float = 0.0  # released layout: loss weight on the (noised) context frames
    max_targets: int = 0  # released layout / full attention: targets per session (0 = all), drawn at random
    # show later targets each image after the first degraded with this probability, as inference's own
    # outputs drift: faded toward its mean by up to degrade_fade, noise of std up to degrade_noise (latent
    # units); losses still target the clean latents (layouts.ContextDegrade). 0 = off
    degrade_context: float = 0.0
    degrade_noise: float = 0.1
    degrade_fade: float = 0.3
    # ... and blank one rectangle of each degraded frame to its mean, sides up to this share of the frame's
    # (layouts.ContextDegrade.erase): what it held is only in the earlier frames. 0 = off
    degrade_erase: float = 0.0
    # where the rectangle goes: anywhere (uniform, mostly background), or kept: centred on content that the
    # session's first image holds at the same place, so only reading the context restores it
    degrade_erase_at: Literal["anywhere", "kept"] = "anywhere"
    # show later targets, with this probability per session, the model's own outputs for the session's images
    # after the first instead of the clean frames: each predicted in one step from t = 1000 given the clean
    # frames before it (no gradient), what a 1-step sampler returns at inference; losses still target the
    # clean latents (loop.own_outputs). Costs one more forward per step. 0 = off
    self_context: float = 0.0

    def __post_init__(self) -> None:
        for name in ("roe_prob", "drop_current_frame", "drop_current_mask", "drop_next_mask", "text_dropout"):
            _prob(getattr(self, name), f"tasks.{name}")
        _prob(self.degrade_context, "tasks.degrade_context")
        _prob(self.self_context, "tasks.self_context")
        _check(self.degrade_noise >= 0, "tasks.degrade_noise", f"expected >= 0, got {self.degrade_noise}")
        _check(0 <= self.degrade_fade <= 1, "tasks.degrade_fade", f"expected in [0, 1], got {self.degrade_fade}")
        _check(0 <= self.degrade_erase <= 1, "tasks.degrade_erase", f"expected in [0, 1], got {self.degrade_erase}")
        unknown = sorted(set(self.loss_weights) - set(TASKS))
        _check(not unknown, "tasks.loss_weights", f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
        for k, v in self.loss_weights.items():
            _check(v >= 0, f"tasks.loss_weights.{k}", f"expected >= 0, got {v}")
        _check(self.context_loss_weight >= 0, "tasks.context_loss_weight", "expected >= 0")
        _check(self.max_targets >= 0, "tasks.max_targets", "expected >= 0")

    def weight(self, task: str) -> float:
        return float(self.loss_weights.get(task, 1.0))


@dataclass
class FlowSection:
    # training timesteps: "logit_normal" (t = 1000 sigmoid(loc + scale z)) or "uniform", then the sampling
    # grid's shift (1: none). Sampling with shift s spends most steps near t = 1000; a model never trained
    # there starts every edit from a guess it has not learned (docs/training.md). "grid": only the points
    # of the timestep_grid_steps-step sampling grid with that shift (a model always sampled with few steps)
    timestep_dist: Literal["logit_normal", "uniform", "grid"] = "logit_normal"
    timestep_loc: float = 0.0
    timestep_scale: float = 1.0
    timestep_shift: float = 1.0
    timestep_grid_steps: int = 2
    # "velocity": the MSE of eps - x0; "x0": each target's velocity MSE times max(t/T, 0.05)^2, i.e. the MSE
    # of the clean latent it implies (every sampling step weighs the same; pairs with model.prediction x0)
    loss: Literal["velocity", "x0"] = "velocity"
    # the error that loss measures: "l2", squared (the model learns the mean of what a target could be);
    # "l1", absolute (the per-channel median: where a one-step sampler is unsure whether a position is object
    # or background, the median commits to the likelier one, the mean paints a faint blend of both)
    loss_norm: Literal["l2", "l1"] = "l2"
    vae_sample: bool = False  # encode with a posterior sample instead of the mean
    # share of an image target's loss given to the latent positions its edit changed (mean squared difference
    # from its source image over channels > changed_threshold, in latent units); 0 = off, every position
    # weighs the same. A small object's edit is a few % of the positions: without it copying the source
    # scores almost as well as making the edit (docs/training.md)
    changed_share: float = 0.0
    changed_threshold: float = 0.01
    # what "changed" is measured against: "source", the clean source frame (only the edit counts); "seen",
    # the source as the target is shown it (tasks.degrade_context / self_context: what a drifted or blanked
    # source lost and the target has back counts as changed too, so putting it back weighs like an edit)
    changed_against: Literal["source", "seen"] = "source"

    def __post_init__(self) -> None:
        _check(self.timestep_scale > 0, "flow.timestep_scale", "expected > 0")
        _check(self.timestep_shift > 0, "flow.timestep_shift", "expected > 0")
        _check(self.timestep_grid_steps >= 1, "flow.timestep_grid_steps", "expected >= 1")
        _check(0 <= self.changed_share < 1, "flow.changed_share", f"expected in [0, 1), got {self.changed_share}")
        _check(self.changed_threshold >= 0, "flow.changed_threshold", "expected >= 0")


@dataclass
class OptimSection:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01  # matrices only; norms, biases, modulation offsets and embeddings get none
    warmup_steps: int = 100
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1  # the decayed lr ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 = off

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", f"expected > 0, got {self.lr}")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", "expected >= 0")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "expected in [0, 1]")
        _check(self.grad_clip >= 0, "optim.grad_clip", "expected >= 0")
        _check(all(0 <= b < 1 for b in self.betas), "optim.betas", f"expected in [0, 1), got {self.betas}")


@dataclass
class TrainSection:
    max_steps: int = 1000
    max_time: float | None = None  # seconds; stop (and checkpoint) when reached
    tokens_per_batch: int = 8192  # token budget of one micro-batch per process (video + text tokens)
    grad_accum: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast (weights and optimizer stay fp32)
    seed: int = 0
    ema_decay: float = 0.9998  # 0 = no EMA
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)) so short runs get a useful EMA
    checkpoint_every: int = 1000
    keep_last: int = 3  # checkpoints kept (older ones are deleted once a newer one is complete)
    max_bad_steps: int = 20  # stop after this many non-finite steps in a row
    threads: int | None = None  # CPU threads for torch (None: torch's default)
    compile: bool = False  # torch.compile the transformer

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "train.max_steps", f"expected >= 1, got {self.max_steps}")
        _check(self.tokens_per_batch >= 16, "train.tokens_per_batch", "expected >= 16")
        _check(self.grad_accum >= 1, "train.grad_accum", "expected >= 1")
        _check(0 <= self.ema_decay < 1, "train.ema_decay", f"expected in [0, 1), got {self.ema_decay}")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", "expected >= 1")
        _check(self.keep_last >= 1, "train.keep_last", "expected >= 1")
        _check(self.max_bad_steps >= 1, "train.max_bad_steps", "expected >= 1")
        _check(self.max_time is None or self.max_time > 0, "train.max_time", "expected > 0")


@dataclass
class EvalSection:
    """Validation editing sessions, saved as image grids under <out>/val/."""

    every: int = 0  # steps between validations (0 = off)
    sessions: int = 4
    turns: int = 3  # turns generated per session (fewer when a session is shorter)
    steps: int = 10  # sampling steps
    shift: float = 3.0  # sampling grid shift (the release uses 12 at 256²; small images want less)
    cfg_scale: float = 1.0  # guidance against empty texts (1.0 = no guidance, one pass)
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.every >= 0, "eval.every", "expected >= 0")
        _check(self.sessions >= 1 and self.turns >= 1 and self.steps >= 1, "eval", "sessions, turns, steps >= 1")


@dataclass
class LogSection:
    every: int = 10  # steps between train_event records / tracker logs
    tensorboard: bool = True
    wandb: bool = False
    peak_tflops: float | None = None  # per device, for MFU (None: known GPUs are detected; CPU reports none)

    def __post_init__(self) -> None:
        _check(self.every >= 1, "log.every", "expected >= 1")


@dataclass
class Recipe:
    name: str = "run"
    out_dir: str | None = None  # default: runs/<name>
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    tasks: TasksSection = field(default_factory=TasksSection)
    flow: FlowSection = field(default_factory=FlowSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)

    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name


def recipe_from_dict(data: dict[str, Any], where: str = "recipe") -> Recipe:
    try:
        return from_dict(Recipe, data)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None


PACKAGED_RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def packaged_recipes() -> list[str]:
    """Names of the recipes that ship inside the package (tiny, mini, 3b, 7b, sft)."""
    return sorted(p.stem for p in PACKAGED_RECIPES.glob("*.yaml"))


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path as given, else a packaged recipe by name ("mini" or "mini.yaml")."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    packaged = PACKAGED_RECIPES / (p.name if p.suffix == ".yaml" else f"{p.name}.yaml")
    if p.parent == Path(".") and packaged.is_file():
        return packaged
    known = ", ".join(packaged_recipes()) or "none"
    raise UsageError(f"{p}: no such recipe file (packaged recipes, usable by name: {known})")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe YAML (a path or a packaged recipe's name), apply `--set key=value` overrides, and check
    it (errors name file and key)."""
    path = find_recipe(path)
    data = apply_overrides(load_yaml(path), list(overrides))
    return recipe_from_dict(data, str(path))


def recipe_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (what --print-config prints and checkpoints store)."""
    return dump_yaml(recipe)


def lr_at(step: int, optim: OptimSection, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then the chosen decay."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.decay == "constant":
        return optim.lr
    span = max(1, max_steps - optim.warmup_steps)
    p = min(1.0, max(0.0, (step - optim.warmup_steps) / span))
    floor = optim.lr * optim.min_lr_ratio
    if optim.decay == "linear":
        return floor + (optim.lr - floor) * (1 - p)
    return floor + (optim.lr - floor) * 0.5 * (1 + math.cos(math.pi * p))
