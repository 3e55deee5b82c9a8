"""The training loop: `setup(recipe)` -> `fit(state)`, one optimizer step per `train_step(state)`.

    micro-batch (token budget) -> VAE / text encode (no grad) -> timesteps, noise, layout samples ->
    DiT -> flow-matching loss on noisy target tokens (per task) -> backward (x grad_accum) -> clip ->
    non-finite guard -> AdamW step -> EMA -> log / validate / checkpoint

Everything random is a function of (recipe seed, step, micro-batch, rank) or of a session's stream
position, and the data position is saved with every checkpoint, so `--resume` continues exactly: on CPU
the losses of a resumed run equal an uninterrupted run's step for step. Distributed runs go through
accelerate (`accelerate launch -m vincie_cli train ...`): DDP or FSDP2 (see recipes/accelerate/).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vincie_cli.model.layouts import GROUPS, ContextDegrade, LayoutSpec, pack_samples, run_dit, training_samples
from vincie_cli.train.batching import Prepared, Preparer, TokenBatcher
from vincie_cli.train.checkpoint import (
    STATE_FORMAT,
    CheckpointWriter,
    clean_partial,
    config_differences,
    find_latest,
    list_checkpoints,
    load_state,
)
from vincie_cli.train.ema import EMA
from vincie_cli.train.optim import build_optimizer, flatten_state, set_lr, unflatten_state
from vincie_cli.train.recipe import Recipe, lr_at, recipe_yaml
from vincie_cli.utils.io import BadInputError, DirLock, UsageError, VincieError
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)

# dense bf16 matmul peak per device (TFLOP/s), for the MFU estimate
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


# --------------------------------------------------------------------------------------------
# model


def _override(cls, base: dict[str, Any], over: dict[str, Any], key: str):
    try:
        return cls.from_dict({**base, **over})
    except (BadInputError, TypeError) as e:
        raise UsageError(f"{key}: {e}") from None


def resolve_model_config(recipe: Recipe, base=None):
    """The ModelConfig a recipe trains: the preset (or `base`) with model.dit / .vae / .text overrides."""
    from vincie_cli.model.dit import DiTConfig
    from vincie_cli.model.presets import ModelConfig, get_preset
    from vincie_cli.model.text import TextEncoderConfig
    from vincie_cli.model.vae import VAEConfig

    m = recipe.model
    cfg = base if base is not None else get_preset(m.preset)
    dit = _override(DiTConfig, cfg.dit.to_dict(), m.dit, "model.dit")
    vae = _override(VAEConfig, cfg.vae.to_dict(), m.vae, "model.vae")
    text = _override(TextEncoderConfig, cfg.text.to_dict(), m.text, "model.text")
    try:
        return ModelConfig(cfg.name if base is not None else m.preset, dit, vae, text)
    except BadInputError as e:
        raise UsageError(f"model: {e}") from None


def layout_spec(recipe: Recipe) -> LayoutSpec:
    m = recipe.model
    if m.layout == "released":
        return LayoutSpec("released")
    return LayoutSpec("paper", m.attention, m.rope, m.condition, m.prediction, m.source_sigma)


def model_config_dict(model, spec: LayoutSpec, recipe: Recipe | None = None) -> dict[str, Any]:
    """model_config.json of a checkpoint: the architecture, the conditioning layout it was trained in, and (with
    a recipe) the sampling settings its validation used, which `vincie edit` takes as its defaults."""
    from vincie_cli.model.presets import ModelConfig

    text_cfg = model.text_encoder.config if model.text_encoder is not None else model.config.text
    cfg = ModelConfig(model.config.name, model.dit.config, model.vae.config, text_cfg)
    d = cfg.to_dict()
    d["layout"] = spec.to_dict()
    if recipe is not None and spec.kind == "paper":
        e = recipe.eval
        d["sampling"] = {
            "steps": e.steps,
            "shift": e.shift,
            "guidance": e.cfg_scale,
            "resolution": recipe.data.resolution,
        }
    return d


def _arch(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """The parts of a model config that must match to load weights (DiT shapes, latent channels, text width)."""
    vae = cfg_dict.get("vae", {})
    return {"dit": cfg_dict.get("dit", {}), "vae": vae, "text.dim": cfg_dict.get("text", {}).get("dim")}


def load_or_build_model(recipe: Recipe, device: torch.device, init: str | None = None):
    """The model to train: loaded from `init` (model folder, checkpoint or release) or built from the preset.

    A preset given together with `init` must describe the same architecture; a mismatch is an error that
    names the differing fields.
    """
    from vincie_cli.model.pipeline import VincieModel
    from vincie_cli.model.presets import build_model

    m = recipe.model
    attention = m.attention_precision
    init = init or m.init
    if init is None:
        cfg = resolve_model_config(recipe)
        model = build_model(cfg, device=device, dtype=torch.float32, seed=recipe.train.seed)
        if m.text_init:
            from vincie_cli.model.text import load_text_encoder

            try:
                model.text_encoder = load_text_encoder(m.text_init, device=device)
            except VincieError as e:
                raise BadInputError(f"model.text_init: {e}") from None
    else:
        try:
            model = VincieModel.from_pretrained(
                init, device=device, dtype=torch.float32, attention=attention, text_path=m.text_init
            )
        except VincieError as e:
            raise BadInputError(f"model.init: {e}") from None
        loaded = model_config_dict(model, LayoutSpec())
        if m.preset is not None or m.dit or m.vae or m.text:
            want = resolve_model_config(recipe, base=None if m.preset is not None else model.config)
            diff = config_differences(_arch(want.to_dict()), _arch(loaded))
            if diff:
                raise BadInputError(
                    f"{init}: its architecture differs from the recipe's (model.preset {m.preset!r}): "
                    + "; ".join(diff[:8])
                    + ("" if len(diff) <= 8 else f" (and {len(diff) - 8} more)")
                )
    te = model.text_encoder
    if te is not None and te.dim != model.dit.config.txt_in_dim:
        raise BadInputError(
            f"text encoder width {te.dim} does not match the DiT's txt_in_dim {model.dit.config.txt_in_dim}"
        )
    model.dit.attention = attention
    return model


# --------------------------------------------------------------------------------------------
# data


class ListSource:
    """An in-memory, endlessly cycling session source with a resumable position (tests, benchmarks)."""

    def __init__(self, sessions: list[Any], loop: bool = True) -> None:
        if not sessions:
            raise UsageError("no sessions")
        self.sessions = list(sessions)
        self.loop = loop
        self.position = 0

    def __iter__(self) -> Iterator[Any]:
        while self.loop or self.position < len(self.sessions):
            n = self.position
            s = self.sessions[n % len(self.sessions)]
            self.position += 1
            meta = dict(s.meta or {})
            meta["position"] = {"consumer": 0, "epoch": n // len(self.sessions), "index": n % len(self.sessions)}
            yield _with_meta(s, meta)

    def state_dict(self) -> dict[str, Any]:
        return {"format": "vincie-list-source/1", "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def _with_meta(session, meta):
    import copy

    s = copy.copy(session)
    s.meta = meta
    return s


def open_dataset(recipe: Recipe, rank: int, world: int, cache_identity: Any, sources=None, split=None, loop=True):
    from vincie_cli.sessions.dataset import SessionDataset

    d = recipe.data
    return SessionDataset(
        sources if sources is not None else d.sources,
        split=d.split if split is None else split,
        shuffle_buffer=d.shuffle_buffer if loop else 0,
        seed=recipe.train.seed,
        rank=rank,
        world_size=world,
        loop=loop,
        max_resolution=d.max_source_side,
        cache_identity=cache_identity if d.use_cache else None,
        errors=d.errors,
    )


# --------------------------------------------------------------------------------------------
# state


@dataclass
class TrainState:
    recipe: Recipe
    out_dir: Path
    accelerator: Any
    model: Any  # VincieModel (unwrapped)
    trainer: nn.Module  # prepared module whose forward runs the DiT on a PackedInput
    optimizer: torch.optim.Optimizer
    trainable: dict[str, nn.Parameter]
    ema: EMA | None
    spec: LayoutSpec
    preparer: Preparer
    source: Any  # SessionDataset or ListSource
    batcher: TokenBatcher
    emit: Callable[[dict[str, Any]], None]
    lora: bool = False
    cache_identity: Any = None
    val_sessions: list[Any] = field(default_factory=list)
    step: int = 0
    tokens: int = 0
    sessions: int = 0
    bad_total: int = 0
    bad_run: int = 0
    elapsed: float = 0.0
    last_saved: int = -1
    peak_flops: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    lock: Any = None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def dit(self):
        return self.model.dit


class _Trainer(nn.Module):
    """Wraps the DiT so text assembly (turn-embedding rows) happens inside forward (FSDP-safe)."""

    def __init__(self, dit: nn.Module) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, packed) -> Tensor:
        return run_dit(self.dit, packed)


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); None where /proc/cpuinfo is unreadable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _accelerator(recipe: Recipe, out_dir: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if recipe.train.precision == "bf16" and not torch.cuda.is_available() and cpu_has_native_bf16() is False:
        # measured (docs/training.md): AVX2-only EPYC, mini, 0.014 steps/s bf16 against 0.21 fp32
        log.warning(
            "train.precision bf16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated here, about 15x slower "
            "than fp32; use --set train.precision=fp32"
        )

    if AcceleratorState._shared_state:  # an earlier run in this process (tests): keep the process group
        AcceleratorState._reset_state()
    trackers = []
    if recipe.log.tensorboard:
        trackers.append("tensorboard")
    if recipe.log.wandb:
        trackers.append("wandb")
    return Accelerator(
        mixed_precision="bf16" if recipe.train.precision == "bf16" else "no",
        cpu=not torch.cuda.is_available(),
        log_with=trackers or None,
        project_dir=str(out_dir / "logs"),
    )


def _peak_flops(recipe: Recipe, device: torch.device) -> float | None:
    if recipe.log.peak_tflops:
        return recipe.log.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tf in PEAK_TFLOPS.items():
            if key in name:
                return tf * 1e12
    return None


def setup(
    recipe: Recipe,
    out_dir: str | Path | None = None,
    resume: bool = False,
    emit: Callable[[dict[str, Any]], None] | None = None,
    sessions: list[Any] | None = None,
    val_sessions: list[Any] | None = None,
) -> TrainState:
    """Devices, model, optimizer, EMA, data and (with `resume`) the latest checkpoint of `out_dir`.

    sessions / val_sessions: in-memory `Session` lists instead of `data.sources` (tests, benchmarks).
    """
    out = Path(out_dir) if out_dir is not None else recipe.output_dir()
    if sessions is None and not recipe.data.sources:
        raise UsageError("data.sources: no session shards given (set it in the recipe or with --set)")
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    out.mkdir(parents=True, exist_ok=True)
    lock = DirLock(out, "-train").acquire()
    try:
        return _setup(recipe, out, resume, emit or (lambda r: None), sessions, val_sessions, lock)
    except BaseException:
        lock.release()
        raise


def _setup(recipe, out, resume, emit, sessions, val_sessions, lock) -> TrainState:
    clean_partial(out)
    ckpt = find_latest(out) if resume else None
    if not resume and list_checkpoints(out):
        raise UsageError(f"{out} already holds checkpoints; pass --resume to continue, or choose another --out-dir")
    if resume and ckpt is None:
        log.warning("%s: no checkpoint to resume from; starting a new run", out)
    accelerator = _accelerator(recipe, out)
    device = accelerator.device
    spec = layout_spec(recipe)

    loaded = load_state(ckpt) if ckpt is not None else None
    if loaded is not None and not recipe.model.lora.rank:
        model = load_or_build_model(recipe, device, init=str(ckpt))  # checks the architecture against the recipe
    else:
        model = load_or_build_model(recipe, device)
    if model.text_encoder is None:
        raise VincieError("the model has no text encoder (model.init without text_encoder/)")
    model.text_cache_size = 1024  # prompt states cached on the text device (QWen: 5120 wide)
    try:
        model.text_encoder.tokenize("probe")
    except Exception as e:  # a randomly built QWen has no tokenizer
        raise UsageError(f"model.init: this text encoder cannot tokenize ({e}); start from released weights") from None

    frozen = torch.bfloat16 if recipe.model.frozen_dtype == "bf16" else torch.float32
    model.vae.to(device=device, dtype=frozen).requires_grad_(False).eval()
    model.text_encoder.to(device=device).requires_grad_(False).eval()
    dit = model.dit.to(device)
    dit.train()
    dit.gradient_checkpointing = recipe.model.gradient_checkpointing

    lora = recipe.model.lora.rank > 0
    if lora:
        from vincie_cli.train.lora import inject_lora

        lr_cfg = recipe.model.lora
        inject_lora(dit, lr_cfg.rank, lr_cfg.alpha, lr_cfg.dropout, lr_cfg.targets)
        dit.to(device)
    if loaded is not None:
        _load_weights(dit, loaded, lora, device)
    elif recipe.model.init is None and spec.prediction == "x0_source":
        # from scratch, start as the linear guess (output 0): the copy of what the edit leaves alone is free
        torch.nn.init.zeros_(dit.vid_out.proj.weight)
        torch.nn.init.zeros_(dit.vid_out.proj.bias)
    elif spec.prediction == "x0_source":
        _rescale_source_output(dit, model.config.layout, spec)
    if recipe.train.compile:
        dit.compile()
    # the model is prepared first (FSDP replaces parameters), then the optimizer is built over the result
    trainer = accelerator.prepare(_Trainer(dit))
    dit = accelerator.unwrap_model(trainer).dit
    model.dit = dit
    trainable = {n: p for n, p in dit.named_parameters() if p.requires_grad}
    optimizer = accelerator.prepare(build_optimizer(list(trainable.items()), recipe.optim))
    ema = EMA(trainable, recipe.train.ema_decay, recipe.train.ema_warmup) if recipe.train.ema_decay > 0 else None

    rank, world = accelerator.process_index, accelerator.num_processes
    cache_identity = None
    if recipe.data.use_cache:
        if loaded is not None:
            cache_identity = loaded.json.get("cache_identity")
            if cache_identity is None:
                raise UsageError(f"{loaded.path}: the run started without data.use_cache; resume it without the cache")
        elif recipe.model.init is None:
            raise UsageError("data.use_cache needs model.init: the model folder the latent cache was built with")
        else:
            cache_identity = model.identity()
    if sessions is not None:
        source: Any = ListSource(sessions)
    else:
        source = open_dataset(recipe, rank, world, cache_identity)
    ph, pw = dit.config.patch_size[1:]
    te = model.text_encoder
    preparer = Preparer(recipe, spec, lambda t: len(te.tokenize(t)), model.vae.spatial_factor, (ph, pw))

    state = TrainState(
        recipe=recipe, out_dir=out, accelerator=accelerator, model=model, trainer=trainer, optimizer=optimizer,
        trainable=trainable, ema=ema, spec=spec, preparer=preparer, source=source,
        batcher=TokenBatcher(iter(()), preparer, recipe.train.tokens_per_batch), emit=emit, lora=lora,
        cache_identity=cache_identity, peak_flops=_peak_flops(recipe, device), lock=lock,
    )  # fmt: skip
    if loaded is not None:
        _restore(state, loaded)
    if isinstance(source, ListSource):
        it: Iterable = source
    elif recipe.data.num_workers > 0:
        it = source.loader(batch_size=1, num_workers=recipe.data.num_workers, collate_fn=lambda b: b[0])
    else:
        it = source
    state.batcher = TokenBatcher(iter(it), preparer, recipe.train.tokens_per_batch, source.state_dict)
    state.val_sessions = val_sessions if val_sessions is not None else _load_val_sessions(state)
    if accelerator.log_with:
        from vincie_cli.config import to_dict

        flat = _flatten(to_dict(recipe))
        accelerator.init_trackers(recipe.name, config={k: v for k, v in flat.items() if _scalar(v)})
    log.info(
        "training %s (%s layout%s), %.1fM trainable parameters, on %d x %s",
        model.config.name, spec.kind, f", {spec.attention}, {spec.rope}" if spec.kind == "paper" else "",
        sum(p.numel() for p in trainable.values()) / 1e6, world, device,
    )  # fmt: skip
    return state


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _scalar(v: Any) -> bool:
    return isinstance(v, bool | int | float | str)


def _rescale_source_output(dit: nn.Module, init_layout: dict | None, spec: LayoutSpec) -> None:
    """Starting an x0_source model from one trained with another source_sigma: scale the output projection by
    old / new sigma, so the initial prediction at t = T (source + sigma * out) is the one it was trained to make."""
    if not init_layout:
        return
    was = LayoutSpec.of(init_layout)
    if was.prediction != "x0_source" or was.source_sigma == spec.source_sigma:
        return
    scale = was.source_sigma / spec.source_sigma
    with torch.no_grad():
        dit.vid_out.proj.weight.mul_(scale)
        dit.vid_out.proj.bias.mul_(scale)
    log.info("model.init: source_sigma %g -> %g, output projection x %g", was.source_sigma, spec.source_sigma, scale)


def _load_val_sessions(state: TrainState) -> list[Any]:
    r = state.recipe
    if r.eval.every <= 0:
        return []
    from vincie_cli.sessions.dataset import SessionDataset

    attempts = (
        [(r.data.val_sources, None)]
        if r.data.val_sources
        else [(r.data.sources, "val"), (r.data.sources, r.data.split)]
    )
    for sources, split in attempts:
        try:
            ds = SessionDataset(sources, split=split, loop=False, max_resolution=r.data.max_source_side)
        except BadInputError:
            continue
        out = []
        for s in ds:
            if s.num_turns >= 1:
                out.append(s)
            if len(out) >= r.eval.sessions:
                break
        if out:
            if split == r.data.split and not r.data.val_sources:
                log.warning("no validation split; validating on the first training sessions")
            return out
    log.warning("no validation sessions found; validation is off")
    return []


# --------------------------------------------------------------------------------------------
# one step


def _seed(*parts: Any) -> int:
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:15], 16)


@torch.no_grad()
def encode_batch(state: TrainState, batch: list[Prepared], gen: torch.Generator) -> list[list[Tensor]]:
    """Clean latents (h, w, C) fp32 on the CPU of every stack frame, per session (cache or VAE)."""
    vae = state.model.vae
    if state.recipe.flow.vae_sample and gen.device != state.device:
        gen = torch.Generator(device=state.device).manual_seed(int(gen.initial_seed()))
    out: list[list[Tensor] | None] = []
    todo: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for i, p in enumerate(batch):
        if p.latents is not None:
            out.append([z.float().cpu() for z in p.latents])
            continue
        out.append([None] * len(p.pixels))  # type: ignore[list-item]
        for f, x in enumerate(p.pixels):
            todo.setdefault(tuple(x.shape), []).append((i, f))
    for items in todo.values():
        for s in range(0, len(items), 64):
            chunk = items[s : s + 64]
            x = torch.stack([batch[i].pixels[f] for i, f in chunk]).to(state.device, vae.dtype)
            z = vae.encode(x, sample=state.recipe.flow.vae_sample, generator=gen)
            for (i, f), zz in zip(chunk, z.float().cpu()):
                out[i][f] = zz  # type: ignore[index]
    return out  # type: ignore[return-value]


def make_inputs(state: TrainState, batch: list[Prepared], gen: torch.Generator, timestep: float | None = None):
    """Encode a micro-batch and lay it out: the packed DiT input with its loss rows. Every target is noised
    to `timestep` when given (diagnostics), else to the recipe's training timesteps."""
    from vincie_cli.flow.schedule import training_timesteps

    r = state.recipe
    latents = encode_batch(state, batch, gen)
    texts = list(dict.fromkeys(t for p in batch for t in p.comp.texts))
    with torch.no_grad():
        encoded = dict(zip(texts, state.model.encode_prompts(texts)))
    dev = state.device
    step_states = [[encoded[t].to(dev) for t in p.comp.texts] for p in batch]
    n_targets = sum(len(p.comp.targets) for p in batch)
    f = r.flow
    ts = (f.timestep_dist, f.timestep_loc, f.timestep_scale, f.timestep_shift)
    times = training_timesteps(n_targets, gen, *ts, grid_steps=f.timestep_grid_steps).tolist()
    if timestep is not None:  # drawn anyway above, so the noise that follows is the same for every timestep
        times = [float(timestep)] * n_targets
    samples, owners, k = [], [], 0
    weights = {t: r.tasks.weight(t) for t in ("nip", "csp", "nsp")}
    degrade = ContextDegrade(
        r.tasks.degrade_context, r.tasks.degrade_noise, r.tasks.degrade_fade, r.tasks.degrade_erase,
        r.tasks.degrade_erase_at,
    )  # fmt: skip
    dgen = torch.Generator().manual_seed(_seed(gen.initial_seed(), "degrade"))  # leaves the noise draws as they are
    own: list[dict[int, Tensor]] = [{} for _ in batch]
    if r.tasks.self_context > 0 and timestep is None:
        sgen = torch.Generator().manual_seed(_seed(gen.initial_seed(), "self"))  # its own draws, as degrade's
        chosen = [i for i in range(len(batch)) if float(torch.rand((), generator=sgen)) < r.tasks.self_context]
        own = own_outputs(state, batch, latents, step_states, chosen, sgen)
    backend = "flex" if dev.type == "cuda" else "dense"
    for i, (p, lat) in enumerate(zip(batch, latents)):
        tmap = {j: times[k + n] for n, j in enumerate(p.comp.targets)}
        k += len(p.comp.targets)
        for s in training_samples(
            state.spec, lat, p.comp.hidden, p.comp.targets, p.comp.tasks, p.step_lens, tmap, gen,
            state.preparer.patch, weights, r.tasks.context_loss_weight, f.changed_threshold, degrade, dgen, own[i],
            f.changed_against == "seen",
        ):  # fmt: skip
            samples.append(s)
            owners.append(i)
    return pack_samples(samples, step_states, owners, state.spec, dev, backend, changed_share=f.changed_share)


@torch.no_grad()
def own_outputs(
    state: TrainState,
    batch: list[Prepared],
    latents: list[list[Tensor]],
    step_states: list[list[Tensor]],
    chosen: list[int],
    gen: torch.Generator,
) -> list[dict[int, Tensor]]:
    """`tasks.self_context`: per session of `batch`, {frame: (h, w, C)} the model's own one-step output for
    each image target that a later target sees, in the chosen sessions ({} for the others).

    One packed forward without gradient: every target noised to t = 1000 (pure noise, `gen`'s draws), each
    seeing the clean frames before it, so frame j's output is x̂0 = what a 1-step sampler returns for turn j
    after a clean history. Many-step samplers produce sharper images than this one-step estimate."""
    from vincie_cli.flow.schedule import T_MAX, add_noise, x0_from_v

    out: list[dict[int, Tensor]] = [{} for _ in batch]
    samples, owners, frames = [], [], []
    for i in chosen:
        p, lat = batch[i], latents[i]
        targets = p.comp.targets
        images = [j for j in targets if p.comp.tasks[j - 1] == "nip" and j < max(targets)]
        if not images:
            continue  # no image target that a later one sees
        tmap = {j: float(T_MAX) for j in targets}
        for s in training_samples(
            state.spec, lat, p.comp.hidden, targets, p.comp.tasks, p.step_lens, tmap, gen,
            state.preparer.patch, {}, 0.0,
        ):  # fmt: skip
            samples.append(s)
            owners.append(i)
        frames += [(i, j, j in images) for j in targets]  # the loss entries come in target order
    if not samples:
        return out
    dev = state.device
    packed = pack_samples(samples, step_states, owners, state.spec, dev, "flex" if dev.type == "cuda" else "dense")
    with state.accelerator.autocast():
        v = state.trainer(packed).float()
    loss = [entry for s in samples for entry in s.loss]
    assert len(loss) == len(frames), "one loss entry per target"
    rows = packed.loss_rows.split([entry[3].shape[0] for entry in loss])  # pack_samples' order
    for (i, j, keep), (_, _, _, x0, eps, _), r in zip(frames, loss, rows):
        if keep:
            x_t = add_noise(x0.to(dev), eps.to(dev), float(T_MAX))
            h, w, c = latents[i][j].shape
            out[i][j] = x0_from_v(x_t, v[r], float(T_MAX)).reshape(h, w, c).cpu()
    return out


def batch_flops(config, packed) -> float:
    """Model FLOPs of one forward of a packed batch: `forward_flops` with attention counted over the pairs the
    mask allows (not the dense n² a full mask would cost)."""
    from vincie_cli.model.dit import forward_flops

    dense = forward_flops(config, packed.vid_lens, packed.txt_lens)
    inner = config.heads * config.head_dim
    full_attn = sum(2 * (a + b) ** 2 * inner for a, b in zip(packed.vid_lens, packed.txt_lens))
    masked = 2 * packed.attended_pairs * inner
    return float(dense - 2 * config.num_layers * (full_attn - masked))


def target_loss(
    out: Tensor, packed, weighting: str = "velocity", row_weights: bool = True, norm: str = "l2"
) -> tuple[Tensor, Tensor, Tensor]:
    """The training loss of DiT outputs `out` on `packed`: (scalar, per-group mean losses, groups present).

    `weighting` is the recipe's `flow.loss` ("velocity" or "x0", the clean-latent error); `norm` its
    `flow.loss_norm` ("l2": squared error, "l1": absolute error); `row_weights`: apply the packed
    per-position weights (`flow.changed_share`; False: every position weighs the same)."""
    from vincie_cli.flow.loss import task_weighted_loss, token_l1, token_mse
    from vincie_cli.flow.schedule import T_MAX
    from vincie_cli.model.layouts import X0_T_MIN

    if norm not in ("l2", "l1"):
        raise VincieError(f'flow.loss_norm: expected "l2" or "l1", got {norm!r}')
    per_token = (token_l1 if norm == "l1" else token_mse)(out[packed.loss_rows], packed.target)
    if weighting == "x0":  # the clean-latent error: x0_hat - x0 = (t/T) (v_hat - v), squared for l2
        scale = (packed.row_timesteps()[packed.loss_rows] / T_MAX).clamp(min=X0_T_MIN)
        per_token = per_token * (scale.pow(2) if norm == "l2" else scale)
    if packed.row_weights is not None and row_weights:
        per_token = per_token * packed.row_weights
    loss, per_group = task_weighted_loss(per_token, packed.groups, packed.weights)
    present = torch.zeros(len(GROUPS), device=per_token.device).index_add(0, packed.groups, torch.ones_like(per_token))
    return loss, per_group.detach(), present > 0


def train_step(state: TrainState) -> dict[str, Any]:
    """One optimizer step over `train.grad_accum` micro-batches; returns its metrics."""
    r, acc = state.recipe, state.accelerator
    t0 = time.perf_counter()
    lr = lr_at(state.step, r.optim, r.train.max_steps)
    set_lr(state.optimizer, lr)
    losses, groups_sum, groups_n = [], torch.zeros(len(GROUPS)), torch.zeros(len(GROUPS))
    tokens = sessions = 0
    flops = 0.0
    cfg = state.dit.config
    for micro in range(r.train.grad_accum):
        batch = state.batcher.next_batch()
        if batch is None:
            raise VincieError("the session data ran out (a non-looping source)")
        gen = torch.Generator().manual_seed(_seed(r.train.seed, state.step, micro, acc.process_index))
        packed = make_inputs(state, batch, gen)
        sync = micro == r.train.grad_accum - 1
        ctx = acc.no_sync(state.trainer) if not sync and acc.num_processes > 1 else _null()
        with ctx, acc.autocast():
            out = state.trainer(packed)
            loss, per_group, present = target_loss(out.float(), packed, r.flow.loss, norm=r.flow.loss_norm)
        acc.backward(loss / r.train.grad_accum)
        losses.append(loss.detach())
        groups_sum += torch.where(present, per_group, 0).cpu()
        groups_n += present.cpu()
        tokens += packed.num_tokens
        sessions += len(batch)
        flops += 3 * batch_flops(cfg, packed)
    loss = torch.stack(losses).mean()
    grad_norm = torch.tensor(0.0)
    if r.optim.grad_clip > 0:
        grad_norm = acc.clip_grad_norm_(list(state.trainable.values()), r.optim.grad_clip)
    else:
        grad_norm = _grad_norm(state.trainable.values())
    loss_all = acc.reduce(loss.reshape(1), "mean")
    finite = bool(torch.isfinite(loss_all).all()) and bool(torch.isfinite(torch.as_tensor(grad_norm)).all())
    if finite:
        state.optimizer.step()
        if state.ema is not None:
            state.ema.update()
        state.bad_run = 0
    else:
        state.bad_total += 1
        state.bad_run += 1
    state.optimizer.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    state.step += 1
    state.tokens += tokens
    state.sessions += sessions
    state.elapsed += dt
    per_task = {g: float(groups_sum[i] / groups_n[i]) for i, g in enumerate(GROUPS) if groups_n[i] > 0}
    metrics = {
        "step": state.step,
        "loss": float(loss_all.mean()),
        "losses": per_task,
        "lr": lr,
        "grad_norm": float(torch.as_tensor(grad_norm)),
        "tokens": tokens,
        "sessions": sessions,
        "seconds": dt,
        "tokens_per_s": tokens * acc.num_processes / dt,
        "sessions_per_s": sessions * acc.num_processes / dt,
        "mfu": flops / dt / state.peak_flops if state.peak_flops else None,
        "finite": finite,
    }
    if not finite:
        log.warning("step %d: non-finite loss or gradient (loss %s, grad norm %s); step skipped (%d in a row)",
                    state.step, metrics["loss"], metrics["grad_norm"], state.bad_run)  # fmt: skip
        if state.is_main:
            state.emit({"type": "train_event", "event": "bad_step", "step": state.step, "loss": metrics["loss"],
                        "grad_norm": metrics["grad_norm"], "in_a_row": state.bad_run})  # fmt: skip
        if state.bad_run >= r.train.max_bad_steps:
            raise VincieError(
                f"{state.bad_run} non-finite steps in a row (train.max_bad_steps={r.train.max_bad_steps}); stopping. "
                f"Lower optim.lr or check the data; the last good checkpoint is kept in {state.out_dir}"
            )
    return metrics


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _grad_norm(params: Iterable[nn.Parameter]) -> Tensor:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.tensor(0.0)


# --------------------------------------------------------------------------------------------
# checkpoints


def _full_state_dict(state: TrainState) -> dict[str, Tensor]:
    """Raw DiT weights (adapters merged), gathered to full tensors."""
    if state.lora:
        from vincie_cli.train.lora import merged_state_dict

        return {k: v.cpu() for k, v in merged_state_dict(state.dit).items()}
    sd = state.accelerator.get_state_dict(state.trainer)
    return {k.removeprefix("dit."): v.detach().cpu() for k, v in sd.items()}


def _full_tensor(t: Tensor) -> Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def save_checkpoint(state: TrainState) -> Path | None:
    """Write `<out>/step-%08d/` (all ranks take part in gathering; the main process writes)."""
    from vincie_cli import __version__

    acc = state.accelerator
    raw = _full_state_dict(state)
    ema_sd = None
    if state.ema is not None:
        if state.lora:
            from vincie_cli.train.lora import merged_state_dict

            with state.ema.applied():
                ema_sd = {k: v.cpu() for k, v in merged_state_dict(state.dit).items()}
        else:
            ema_sd = dict(raw)
            for k, v in state.ema.shadow.items():
                ema_sd[k] = _full_tensor(v).cpu()
    tensors, opt_rest = flatten_state(_optimizer_state(state))
    tensors["rng/torch"] = torch.get_rng_state()
    if state.lora:
        for k, p in state.trainable.items():
            tensors[f"lora/{k}"] = p.detach().cpu()
            if state.ema is not None:
                tensors[f"lora_ema/{k}"] = state.ema.shadow[k].cpu()
    data_states = [state.batcher.resume_state()]
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        data_states = gather_object(data_states)
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return None
    r = state.recipe
    js = {
        "format": STATE_FORMAT,
        "step": state.step,
        "tokens": state.tokens,
        "sessions": state.sessions,
        "bad_steps": state.bad_total,
        "elapsed_s": state.elapsed,
        "world_size": acc.num_processes,
        "ema": {"updates": state.ema.updates, "decay": state.ema.decay} if state.ema else None,
        "lora": state.lora,
        "optimizer": opt_rest,
        "data": data_states,
        "cache_identity": state.cache_identity,
        "layout": state.spec.to_dict(),
        "last_loss": state.history[-1]["loss"] if state.history else None,
    }
    writer = CheckpointWriter(
        name=r.name,
        model_config=model_config_dict(state.model, state.spec, r),
        dit=ema_sd if ema_sd is not None else raw,
        dit_raw=raw if ema_sd is not None else None,
        vae=state.model.vae,
        text_encoder=state.model.text_encoder,
        state_tensors=tensors,
        state_json=js,
        recipe_yaml=recipe_yaml(r),
        source={
            "from": r.model.init,
            "layout": "vincie",
            "training": {
                "recipe": r.name,
                "step": state.step,
                "tokens": state.tokens,
                "version": __version__,
                "torch": torch.__version__,
                "weights": "ema" if ema_sd is not None else "raw",
            },
        },  # fmt: skip
        reuse_from=find_latest(state.out_dir),
    )
    path = writer.write(state.out_dir, state.step, r.train.keep_last)
    state.last_saved = state.step
    acc.wait_for_everyone()
    return path


def _is_fsdp(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def _optimizer_state(state: TrainState) -> dict[str, Any]:
    opt = getattr(state.optimizer, "optimizer", state.optimizer)
    if _is_fsdp(state.accelerator):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            state.trainer, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return opt.state_dict()


def _load_optimizer_state(state: TrainState, sd: dict[str, Any]) -> None:
    opt = getattr(state.optimizer, "optimizer", state.optimizer)
    if _is_fsdp(state.accelerator):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(state.trainer, opt, sd, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(sd)


def _load_weights(dit: nn.Module, loaded, lora: bool, device) -> None:
    """Before preparing: the raw weights (or, with LoRA, the raw adapters) of a checkpoint into the DiT."""
    from vincie_cli.model.dit import load_dit_weights

    if lora:
        with torch.no_grad():
            for k, p in dit.named_parameters():
                if ".lora_" in k:
                    key = f"lora/{k}"
                    if key not in loaded.tensors:
                        raise BadInputError(f"{loaded.path}: no adapter weights for {k} (another LoRA setup?)")
                    p.copy_(loaded.tensors[key].to(p.dtype))
    else:
        raw = loaded.dit_weights(raw=True)
        load_dit_weights(dit, {k: v.to(device) for k, v in raw.items()})


def _restore(state: TrainState, loaded) -> None:
    """Continue from a checkpoint (weights are already in): EMA, optimizer, counters, data position."""
    js, t = loaded.json, loaded.tensors
    if js.get("world_size", 1) != state.accelerator.num_processes:
        raise UsageError(
            f"{loaded.path}: saved by {js.get('world_size')} processes, this run has "
            f"{state.accelerator.num_processes}; resume with the same number of processes"
        )
    if bool(js.get("lora")) != state.lora:
        raise UsageError(f"{loaded.path}: LoRA {'on' if js.get('lora') else 'off'} there, not in this recipe")
    if state.ema is not None and js.get("ema"):
        if state.lora:
            shadow = {k: t[f"lora_ema/{k}"] for k in state.trainable}
        else:
            ema_w = loaded.dit_weights(raw=False)
            shadow = {k: ema_w[k] for k in state.trainable}
        state.ema.load(shadow, js["ema"]["updates"])
    _load_optimizer_state(state, unflatten_state(t, js["optimizer"]))
    if "rng/torch" in t:
        torch.set_rng_state(t["rng/torch"])
    state.step = int(js["step"])
    state.tokens = int(js["tokens"])
    state.sessions = int(js["sessions"])
    state.bad_total = int(js.get("bad_steps", 0))
    state.elapsed = float(js.get("elapsed_s", 0.0))
    state.last_saved = state.step
    data = js.get("data") or []
    rank = state.accelerator.process_index
    if rank < len(data) and data[rank] is not None:
        try:
            state.source.load_state_dict(data[rank])
        except (KeyError, UsageError) as e:
            raise UsageError(f"{loaded.path}: cannot continue the data stream ({e})") from None
    log.info("resumed from %s at step %d", loaded.path, state.step)


# --------------------------------------------------------------------------------------------
# the loop


def fit(state: TrainState) -> dict[str, Any]:
    """Train until `train.max_steps` (or `train.max_time`); checkpoint, log and validate on the way."""
    from vincie_cli.utils.log import progress

    r, acc = state.recipe, state.accelerator
    start_wall = time.time()
    window: list[dict[str, Any]] = []
    steps = range(state.step, r.train.max_steps)
    bar = progress(steps, total=r.train.max_steps, initial=state.step, desc="train", unit="step")
    try:
        while state.step < r.train.max_steps:
            m = train_step(state)
            next(bar, None)
            state.history.append({"step": m["step"], "loss": m["loss"], "losses": m["losses"], "finite": m["finite"]})
            window.append(m)
            if state.step % r.log.every == 0 or state.step == r.train.max_steps:
                _log(state, window)
                window = []
            if r.eval.every and state.step % r.eval.every == 0:
                _validate(state)
            out_of_time = r.train.max_time is not None and time.time() - start_wall >= r.train.max_time
            if state.step % r.train.checkpoint_every == 0 or state.step == r.train.max_steps or out_of_time:
                _checkpoint(state)
            if out_of_time:
                log.info("train.max_time reached after %d steps", state.step)
                break
    except KeyboardInterrupt:
        if state.step > state.last_saved and state.step > 0:
            log.info("interrupted: saving a checkpoint at step %d", state.step)
            _checkpoint(state)
        raise
    finally:
        bar.close()
        if acc.log_with:
            acc.end_training()
        if state.lock is not None:
            state.lock.release()
    latest = find_latest(state.out_dir)
    done = {
        "type": "train_event",
        "event": "done",
        "step": state.step,
        "loss": state.history[-1]["loss"] if state.history else None,
        "tokens": state.tokens,
        "sessions": state.sessions,
        "bad_steps": state.bad_total,
        "checkpoint": str(latest) if latest else None,
        "seconds": round(state.elapsed, 3),
    }
    if state.is_main:
        state.emit(done)
    return done


def _checkpoint(state: TrainState) -> None:
    path = save_checkpoint(state)
    if path is not None:
        state.emit({"type": "train_event", "event": "checkpoint", "step": state.step, "path": str(path)})


def _log(state: TrainState, window: list[dict[str, Any]]) -> None:
    if not window:
        return
    secs = sum(m["seconds"] for m in window)
    n = len(window)
    losses: dict[str, list[float]] = {}
    for m in window:
        for k, v in m["losses"].items():
            losses.setdefault(k, []).append(v)
    finite = [m["loss"] for m in window if math.isfinite(m["loss"])]
    mfus = [m["mfu"] for m in window if m["mfu"] is not None]
    rec = {
        "type": "train_event",
        "event": "step",
        "step": state.step,
        "loss": sum(finite) / len(finite) if finite else float("nan"),
        "losses": {k: sum(v) / len(v) for k, v in losses.items()},
        "lr": window[-1]["lr"],
        "grad_norm": window[-1]["grad_norm"],
        "tokens_per_s": sum(m["tokens"] for m in window) * state.accelerator.num_processes / secs,
        "sessions_per_s": sum(m["sessions"] for m in window) * state.accelerator.num_processes / secs,
        "steps_per_s": n / secs,
        "mfu": sum(mfus) / len(mfus) if mfus else None,
        "tokens_seen": state.tokens,
    }
    if state.is_main:
        state.emit(rec)
        log.info(
            "step %d  loss %.4f  %s  lr %.2e  %.0f tok/s  %.2f steps/s%s",
            state.step, rec["loss"], " ".join(f"{k} {v:.4f}" for k, v in rec["losses"].items()), rec["lr"],
            rec["tokens_per_s"], rec["steps_per_s"], f"  MFU {rec['mfu']:.1%}" if rec["mfu"] is not None else "",
        )  # fmt: skip
    if state.accelerator.log_with:
        scalars = {"train/loss": rec["loss"], "train/lr": rec["lr"], "train/grad_norm": rec["grad_norm"],
                   "perf/tokens_per_s": rec["tokens_per_s"], "perf/sessions_per_s": rec["sessions_per_s"]}  # fmt: skip
        scalars.update({f"train/loss_{k}": v for k, v in rec["losses"].items()})
        if rec["mfu"] is not None:
            scalars["perf/mfu"] = rec["mfu"]
        state.accelerator.log(scalars, step=state.step)


def _validate(state: TrainState) -> None:
    """Every rank runs the validation sessions (a sharded model needs all of them); the main one saves."""
    if not state.val_sessions:
        return
    from vincie_cli.train.validate import validate

    dit = state.dit
    dit.eval()
    try:
        if state.ema is not None:
            with state.ema.applied():
                result = validate(state)
        else:
            result = validate(state)
    finally:
        dit.train()
    if state.is_main:
        state.emit({"type": "train_event", "event": "validation", "step": state.step, **result})
        log.info("validation at step %d: PSNR %s, grid %s", state.step, result.get("psnr"), result["path"])
    if state.accelerator.log_with:
        state.accelerator.log({f"val/{k}": v for k, v in result.items() if isinstance(v, float)}, step=state.step)


def train(
    recipe: Recipe,
    out_dir: str | Path | None = None,
    resume: bool = False,
    emit: Callable[[dict[str, Any]], None] | None = None,
    sessions: list[Any] | None = None,
    val_sessions: list[Any] | None = None,
) -> TrainState:
    """setup + fit; returns the final state (its `history` holds every step's loss)."""
    state = setup(recipe, out_dir, resume, emit, sessions, val_sessions)
    fit(state)
    return state
