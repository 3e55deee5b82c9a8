"""Flow-matching training helpers: noising, the velocity target, token-masked MSE and per-task reduction.

Tokens are rows of packed (N, C) tensors. Timesteps are given per row (e.g. each frame's t repeated over
its tokens), so clean context tokens (t = 0) and noisy target tokens can share one sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vincie_cli.flow.schedule import T_MAX, add_noise


def noisy_input(x0: Tensor, eps: Tensor, t: Tensor | float, T: float = T_MAX) -> Tensor:
    """x_t = (1 − t/T)·x0 + (t/T)·ε; t is a scalar or one value per row of x0."""
    return add_noise(x0, eps, t, T)


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """The v_lerp training target ε − x0."""
    return eps - x0


def token_mse(pred: Tensor, target: Tensor) -> Tensor:
    """(N, C) x2 -> (N,) mean squared error per token, in fp32."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def token_l1(pred: Tensor, target: Tensor) -> Tensor:
    """(N, C) x2 -> (N,) mean absolute error per token, in fp32. Its minimiser is the per-channel median of
    what the target could be (the MSE's is the mean): where a one-step model is unsure whether a position is
    object or background it commits to the likelier one instead of drawing a faint blend of both."""
    return (pred.float() - target.float()).abs().flatten(1).mean(dim=1)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean per-token MSE over the tokens where `mask` (N,) is True (all tokens when None); fp32 scalar.

    Returns 0 (with a gradient path) when the mask selects nothing.
    """
    per_token = token_mse(pred, target)
    if mask is None:
        return per_token.mean()
    w = mask.to(per_token.dtype)
    return (per_token * w).sum() / w.sum().clamp_min(1.0)


def per_group_loss(per_token: Tensor, groups: Tensor, num_groups: int, mask: Tensor | None = None) -> Tensor:
    """Mean of per-token losses within each group (e.g. each proxy task); (num_groups,) fp32.

    groups: (N,) long in [0, num_groups); masked-out tokens (mask False) are ignored. Empty groups give 0.
    """
    w = torch.ones_like(per_token) if mask is None else mask.to(per_token.dtype)
    sums = torch.zeros(num_groups, dtype=per_token.dtype, device=per_token.device).index_add(0, groups, per_token * w)
    counts = torch.zeros(num_groups, dtype=per_token.dtype, device=per_token.device).index_add(0, groups, w)
    return sums / counts.clamp_min(1.0)


def task_weighted_loss(
    per_token: Tensor, groups: Tensor, weights: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Combine per-group mean losses with `weights` (num_groups,): returns (scalar loss, per-group losses).

    Groups with no selected token do not count: the weighted sum is renormalised over present groups.
    """
    num = weights.numel()
    losses = per_group_loss(per_token, groups, num, mask)
    w = torch.ones_like(per_token) if mask is None else mask.to(per_token.dtype)
    present = torch.zeros(num, dtype=per_token.dtype, device=per_token.device).index_add(0, groups, w) > 0
    wts = weights.to(losses.dtype) * present
    return (losses * wts).sum() / wts.sum().clamp_min(1e-12), losses


def changed_positions(x0: Tensor, source: Tensor, threshold: float) -> Tensor:
    """(h*w,) bool: the positions where target x0 (h, w, C) differs from its source image's latent (h, w, C)
    by a mean squared difference over channels above `threshold` (latent units)."""
    return (x0.float() - source.float()).pow(2).mean(dim=-1).reshape(-1) > threshold


def changed_row_weights(changed: Tensor, share: float) -> Tensor | None:
    """Per-position loss weights that give the positions an edit changed `share` of a target's loss.

    changed: (h*w,) bool (`changed_positions`). Returns (h*w,) fp32 weights with mean 1 (changed positions:
    share * n / n_changed, the others: (1 - share) * n / n_unchanged), or None when nothing or everything
    changed (every position then weighs the same).
    """
    n, nc = changed.numel(), int(changed.sum())
    if nc == 0 or nc == n:
        return None
    w = torch.full((n,), (1.0 - share) * n / (n - nc))
    w[changed] = share * n / nc
    return w
