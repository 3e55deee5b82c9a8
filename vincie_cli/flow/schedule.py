"""The lerp schedule, its conversions from a velocity prediction, and the sampling / training timesteps.

x_t = A(t)·x0 + B(t)·ε with A(t) = 1 − t/T, B(t) = t/T, T = 1000.0 (continuous). The model predicts
v = ε − x0. Conversions are written as in the release (dividing by A + B, which is 1 up to rounding), so
sampler states match it to the last bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

T_MAX = 1000.0


def schedule_a(t: Tensor, T: float = T_MAX) -> Tensor:
    """A(t) = 1 − t/T, the data coefficient."""
    return 1 - (t / T)


def schedule_b(t: Tensor, T: float = T_MAX) -> Tensor:
    """B(t) = t/T, the noise coefficient."""
    return t / T


def _bcast(t: Tensor | float, x: Tensor) -> Tensor:
    """Timesteps () or (N,) -> broadcastable against x (N, ...) with new dims on the right."""
    t = torch.as_tensor(t, device=x.device)
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def add_noise(x0: Tensor, eps: Tensor, t: Tensor | float, T: float = T_MAX) -> Tensor:
    """x_t = A(t)·x0 + B(t)·ε; t is a scalar or one value per row of x0."""
    t = _bcast(t, x0)
    return schedule_a(t, T) * x0 + schedule_b(t, T) * eps


def x0_from_v(x_t: Tensor, v: Tensor, t: Tensor | float, T: float = T_MAX) -> Tensor:
    """x̂0 = (x_t − B·v)/(A + B)."""
    t = _bcast(t, x_t)
    a, b = schedule_a(t, T), schedule_b(t, T)
    return (x_t - b * v) / (a + b)


def eps_from_v(x_t: Tensor, v: Tensor, t: Tensor | float, T: float = T_MAX) -> Tensor:
    """ε̂ = (x_t + A·v)/(A + B)."""
    t = _bcast(t, x_t)
    a, b = schedule_a(t, T), schedule_b(t, T)
    return (x_t + a * v) / (a + b)


def sampling_timesteps(
    steps: int = 50, shift: float = 12.0, T: float = T_MAX, device: torch.device | str | None = None
) -> Tensor:
    """Shifted uniform-trailing grid, (steps,) fp32, from T down to (never reaching) 0.

    u = arange(1, 0, −1/steps) in fp32, t = T · shift·u / (1 + (shift − 1)·u), computed in the release's
    order so the values are bit-identical on the same device type. Like the release, a few step counts
    (49, 98, 103, ...) get one extra entry near 0 from the float-step arange; 50 gives exactly 50.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    u = torch.arange(1.0, 0.0, -1.0 / steps, dtype=torch.float32, device=device)
    u = shift * u / (1 + (shift - 1) * u)
    return u * float(T)


def logit_normal_timesteps(
    n: int,
    generator: torch.Generator | None = None,
    loc: float = 0.0,
    scale: float = 1.0,
    T: float = T_MAX,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training timesteps t = T·sigmoid(loc + scale·z), z ~ N(0, 1); (n,) fp32 in (0, T)."""
    z = torch.randn(n, generator=generator, device=device, dtype=torch.float32)
    return torch.sigmoid(loc + scale * z) * float(T)


def uniform_timesteps(
    n: int, generator: torch.Generator | None = None, T: float = T_MAX, device: torch.device | str | None = None
) -> Tensor:
    """Training timesteps t = T·u, u ~ U[0, 1); (n,) fp32."""
    return torch.rand(n, generator=generator, device=device, dtype=torch.float32) * float(T)


def shift_timesteps(t: Tensor, shift: float, T: float = T_MAX) -> Tensor:
    """The sampling grid's shift applied to timesteps: u = t/T -> shift·u / (1 + (shift − 1)·u), times T.

    shift 1 is the identity; shift > 1 moves mass towards T, where `sampling_timesteps` with the same shift
    spends most of its steps, so a model trained this way is trained where it will be sampled.
    """
    u = t / T
    return shift * u / (1 + (shift - 1) * u) * float(T)


def grid_timesteps(
    n: int, steps: int, shift: float, generator: torch.Generator | None = None, T: float = T_MAX
) -> Tensor:
    """(n,) training timesteps drawn uniformly from the `steps`-step sampling grid with `shift`
    (`sampling_timesteps`): a model sampled with few steps is only ever asked at those timesteps."""
    grid = sampling_timesteps(steps, shift, T)
    return grid[torch.randint(len(grid), (n,), generator=generator)]


def training_timesteps(
    n: int,
    generator: torch.Generator | None = None,
    dist: str = "logit_normal",
    loc: float = 0.0,
    scale: float = 1.0,
    shift: float = 1.0,
    T: float = T_MAX,
    grid_steps: int = 2,
) -> Tensor:
    """(n,) training timesteps: `dist` "logit_normal" (loc, scale) or "uniform", then `shift_timesteps`;
    or "grid": the points of the `grid_steps`-step sampling grid with that shift (`grid_timesteps`)."""
    if dist == "grid":
        return grid_timesteps(n, grid_steps, shift, generator, T)
    if dist == "logit_normal":
        t = logit_normal_timesteps(n, generator, loc, scale, T)
    elif dist == "uniform":
        t = uniform_timesteps(n, generator, T)
    else:
        raise ValueError(f"unknown timestep distribution {dist!r} (logit_normal, uniform or grid)")
    return t if shift == 1.0 else shift_timesteps(t, shift, T)
