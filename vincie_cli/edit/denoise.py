"""One editing round: sample the next frame of a session from its context frames and texts.

Released layout (reference §1, §4, §5): the K context latents and one blank target frame are stacked in time
(T = K + 1), noise covers all T frames, and the Euler sampler integrates all of them under CFG against the
negative text; the last frame is the new image. `sample_round` is the one denoising loop `vincie edit` runs,
and the parity test drives it with the reference's own inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vincie_cli.flow.sampler import StepInfo, euler_sample
from vincie_cli.flow.schedule import T_MAX, sampling_timesteps
from vincie_cli.model.conditioning import ReleasedDenoiser, build_condition


@dataclass(frozen=True)
class SamplerSettings:
    """The numbers of one round's sampler (the subset of EditSettings it needs)."""

    steps: int = 50
    shift: float = 12.0
    guidance: float = 7.5
    rescale: float = 0.0
    partial: float = 1.0
    batched_cfg: bool = False
    T: float = T_MAX


class _Float32Out:
    """Wraps the DiT so its velocity comes back in fp32 (a bf16 DiT still gets an fp32 sampler state)."""

    def __init__(self, dit) -> None:
        self.dit = dit

    def __call__(self, **kw) -> Tensor:
        return self.dit(**kw).float()


def sample_round(
    dit,
    context: Tensor,
    noise: Tensor,
    txt_pos: Tensor,
    txt_pos_shape: Tensor,
    txt_neg: Tensor | None,
    txt_neg_shape: Tensor | None,
    sampler: SamplerSettings,
    *,
    callback: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """Run the guided sampler over one round in the released layout; returns x̂0 for every frame (T, h, w, C).

    dit: a `VincieTransformer` (or anything with its forward signature, e.g. a compiled one). context: the K
    clean context latents (K, h, w, C); noise: (K+1, h, w, C) fp32; txt_*: assembled session / negative texts
    with their (1, 1) shapes (the negative may be None when guidance is 1). The new frame is `out[-1]`.
    """
    k, h, w, c = context.shape
    if tuple(noise.shape) != (k + 1, h, w, c):
        raise ValueError(f"noise must be ({k + 1}, {h}, {w}, {c}), got {tuple(noise.shape)}")
    device = _device_of(dit, noise)
    cond = build_condition(context.to(device=device, dtype=torch.float32))
    # shapes stay on the CPU: the DiT reads them as Python ints, which would sync a GPU on every forward
    vid_shape = torch.tensor([[k + 1, h, w]], dtype=torch.long)
    guided = sampler.guidance != 1.0 and sampler.partial > 0
    if guided and txt_neg is None:
        raise ValueError("guidance needs the negative text")
    den = ReleasedDenoiser(
        _Float32Out(dit),
        cond.reshape(-1, c + 1),
        vid_shape,
        txt_pos.to(device),
        txt_pos_shape.cpu(),
        txt_neg.to(device) if txt_neg is not None else None,
        txt_neg_shape.cpu() if txt_neg_shape is not None else None,
    )
    grid = sampling_timesteps(sampler.steps, sampler.shift, sampler.T, device=device)
    with torch.inference_mode():
        x = euler_sample(
            noise.to(device=device, dtype=torch.float32).reshape(-1, c),
            den,
            grid,
            T=sampler.T,
            cfg_scale=sampler.guidance,
            cfg_rescale=sampler.rescale,
            cfg_partial=sampler.partial,
            batched=sampler.batched_cfg,
            callback=callback,
        )
    return x.reshape(k + 1, h, w, c)


def sample_paper_round(
    dit,
    layout: dict,
    context: Tensor,
    noise: Tensor,
    steps_pos: list[Tensor],
    steps_neg: list[Tensor] | None,
    sampler: SamplerSettings,
    *,
    callback: Callable[[StepInfo], None] | None = None,
    source: int | None = None,
) -> Tensor:
    """One round in the paper's layout (clean context tokens + one noisy target, `model.layouts`): returns
    the new frame's latent (h, w, C). context: (K, h, w, C); noise: (1, h, w, C) fp32 (only the target is
    noised); steps_pos: per text step the prompt states (K of them); steps_neg: the negative's steps;
    source: the context frame being edited (the latest image, not a mask) for layouts that condition on it."""
    from vincie_cli.model.layouts import make_denoiser

    k, h, w, c = context.shape
    if tuple(noise.shape) != (1, h, w, c):
        raise ValueError(f"noise must be (1, {h}, {w}, {c}), got {tuple(noise.shape)}")
    device = _device_of(dit, noise)
    base = getattr(dit, "_orig_mod", dit)
    den = make_denoiser(base, layout, list(context.float().cpu()), steps_pos, steps_neg, source=source)
    if dit is not base:
        den.dit = dit  # the compiled module runs the forwards
    grid = sampling_timesteps(sampler.steps, sampler.shift, sampler.T, device=device)
    with torch.inference_mode():
        x = euler_sample(
            noise.to(device=device, dtype=torch.float32).reshape(-1, c),
            den,
            grid,
            T=sampler.T,
            cfg_scale=sampler.guidance,
            cfg_rescale=sampler.rescale,
            cfg_partial=sampler.partial,
            batched=sampler.batched_cfg,
            callback=callback,
        )
    return den.target(x.float())


def round_noise(shape: Sequence[int], seed: int, device: torch.device | str) -> Tensor:
    """fp32 standard-normal noise from a generator seeded with `seed` on `device` (the release draws it on the
    compute device's generator with the session seed, the same seed in every round)."""
    g = torch.Generator(device=device).manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=g, device=device, dtype=torch.float32)


def _device_of(dit, fallback: Tensor) -> torch.device:
    for obj in (dit, getattr(dit, "_orig_mod", None)):
        dev = getattr(obj, "device", None)
        if isinstance(dev, torch.device):
            return dev
    return fallback.device
