"""Euler sampler over a velocity callable, with classifier-free guidance as in the release.

The callable (`Denoiser`) maps (x_t, t, branches) to one velocity per requested branch, "pos" and/or "neg".
Each guided evaluation asks for "pos" then "neg" (two calls), or for both in one call with `batched=True`
(the caller may then run one packed B=2 forward). Guidance: G = v_neg + s·(v_pos − v_neg), optionally
rescaled by ρ·std(v_pos)/std(G) + 1 − ρ, std over dims 1.. (per token of a packed (L, C) state, unbiased).
The scale applies while (i+1)/len(grid) <= partial, else s = 1 and the negative pass is skipped.
Steps: x ← A(t_{i+1})·x̂0 + B(t_{i+1})·ε̂; the last grid entry jumps to x̂0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from vincie_cli.flow.schedule import T_MAX, eps_from_v, schedule_a, schedule_b, x0_from_v

Denoiser = Callable[[Tensor, Tensor, Sequence[str]], list[Tensor]]


@dataclass
class StepInfo:
    """What the callback sees after evaluation i (the state `x` is already updated)."""

    i: int
    steps: int
    t: Tensor
    t_next: Tensor | None  # None at the final jump to x̂0
    scale: float
    x: Tensor
    v: Tensor  # guided velocity
    v_pos: Tensor
    v_neg: Tensor | None  # None when the negative pass was skipped


VelocityFn = Callable[[Tensor, Tensor], Tensor]


def two_pass(pos: VelocityFn, neg: VelocityFn | None = None) -> Denoiser:
    """Adapt two plain callables f(x_t, t) -> v into a `Denoiser` (branches run one after the other)."""
    fns = {"pos": pos, "neg": neg}

    def denoise(x_t: Tensor, t: Tensor, branches: Sequence[str]) -> list[Tensor]:
        if any(fns[b] is None for b in branches):
            raise ValueError("guidance needs a negative callable")
        return [fns[b](x_t, t) for b in branches]

    return denoise


def guidance_scale(i: int, steps: int, scale: float, partial: float = 1.0) -> float:
    """The CFG scale of evaluation i: `scale` while (i+1)/steps <= partial, else 1."""
    return scale if (i + 1) / steps <= partial else 1.0


def classifier_free_guidance(v_pos: Tensor, v_neg: Tensor, scale: float, rescale: float = 0.0) -> Tensor:
    """G = v_neg + scale·(v_pos − v_neg), with optional std rescale over dims 1.. (unbiased)."""
    g = v_neg + scale * (v_pos - v_neg)
    if rescale != 0.0:
        dims = list(range(1, v_pos.ndim))
        factor = v_pos.std(dim=dims, keepdim=True) / g.std(dim=dims, keepdim=True)
        g = g * (rescale * factor + (1 - rescale))
    return g


def euler_step(x_t: Tensor, v: Tensor, t: Tensor, s: Tensor, T: float = T_MAX) -> Tensor:
    """Move x_t from timestep t to s through the x̂0 / ε̂ estimates (the release's v_lerp update)."""
    x0, eps = x0_from_v(x_t, v, t, T), eps_from_v(x_t, v, t, T)
    s = s.reshape(s.shape + (1,) * (x_t.ndim - s.ndim))
    return schedule_a(s, T) * x0 + schedule_b(s, T) * eps


def euler_sample(
    noise: Tensor,
    denoiser: Denoiser,
    timesteps: Tensor,
    *,
    T: float = T_MAX,
    cfg_scale: float = 1.0,
    cfg_rescale: float = 0.0,
    cfg_partial: float = 1.0,
    batched: bool = False,
    callback: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """Integrate from `noise` at timesteps[0] over the grid and return the x̂0 estimate.

    noise: the initial state, e.g. the packed (L, C) noise of every frame (fp32). timesteps: the grid
    (e.g. `sampling_timesteps()`); one guided evaluation per entry, the last one is the jump to x̂0.
    batched: ask the denoiser for ("pos", "neg") in one call instead of two calls.
    """
    x = noise
    steps = len(timesteps)
    for i in range(steps):
        t = timesteps[i]
        scale = guidance_scale(i, steps, cfg_scale, cfg_partial)
        v_neg = None
        if scale == 1.0:
            v_pos = v = denoiser(x, t, ("pos",))[0]
        else:
            if batched:
                v_pos, v_neg = denoiser(x, t, ("pos", "neg"))
            else:
                v_pos = denoiser(x, t, ("pos",))[0]
                v_neg = denoiser(x, t, ("neg",))[0]
            v = classifier_free_guidance(v_pos, v_neg, scale, cfg_rescale)
        t_next = timesteps[i + 1] if i + 1 < steps else None
        x = euler_step(x, v, t, t_next, T) if t_next is not None else x0_from_v(x, v, t, T)
        if callback is not None:
            callback(StepInfo(i, steps, t, t_next, scale, x, v, v_pos, v_neg))
    return x
