"""The released conditioning layout and the packed ("native resolution") tensor format.

Released layout (one session round): the K context latents and one blank target frame are stacked in time,
T = K + 1. The 17-channel condition is `[clean latent 16 | mask 1]` with mask 1 on context frames and an
all-zero target frame. The DiT input is `[x_t 16 | condition 17]` = 33 channels, and noise covers all frames.

Packed format: samples of shapes (T_i, h_i, w_i, C) are flattened row-major and concatenated to
(sum_i T_i*h_i*w_i, C), with `shapes` (B, 3) long = [[T_i, h_i, w_i], ...]; text is (sum_i L_i, C) with
(B, 1) lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vincie_cli.utils.io import BadInputError


def build_condition(context_latents: Tensor) -> Tensor:
    """(K, h, w, C) clean context latents -> (K+1, h, w, C+1) condition `[latent | mask]`, target frame all zero.

    K = 0 (no context image) gives a single all-zero frame, as the release does for T = 1.
    """
    if context_latents.ndim != 4:
        raise BadInputError(f"context latents must be (K, h, w, C), got shape {tuple(context_latents.shape)}")
    k, h, w, c = context_latents.shape
    cond = context_latents.new_zeros((k + 1, h, w, c + 1))
    cond[:k, ..., :c] = context_latents
    cond[:k, ..., c] = 1.0
    return cond


def dit_input(x_t: Tensor, cond: Tensor) -> Tensor:
    """Channel-concatenate the noisy latent and the condition: (..., C) + (..., C+1) -> (..., 2C+1)."""
    if x_t.shape[:-1] != cond.shape[:-1]:
        raise BadInputError(f"x_t {tuple(x_t.shape)} and condition {tuple(cond.shape)} do not line up")
    return torch.cat([x_t, cond.to(x_t.dtype)], dim=-1)


def pack(items: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """List of (T, h, w, C) -> packed (sum T*h*w, C) and shapes (B, 3) long."""
    if not items:
        raise BadInputError("nothing to pack")
    for i, x in enumerate(items):
        if x.ndim != 4:
            raise BadInputError(f"item {i} must be (T, h, w, C), got shape {tuple(x.shape)}")
    shapes = torch.tensor([list(x.shape[:3]) for x in items], dtype=torch.long)
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in items]), shapes


def unpack(packed: Tensor, shapes: Tensor) -> list[Tensor]:
    """Inverse of `pack`: (sum T*h*w, C) + (B, 3) -> list of (T, h, w, C)."""
    dims = [tuple(int(v) for v in s) for s in shapes.reshape(-1, 3).tolist()]
    sizes = [t * h * w for t, h, w in dims]
    if sum(sizes) != packed.shape[0]:
        raise BadInputError(f"shapes cover {sum(sizes)} rows but the packed tensor has {packed.shape[0]}")
    return [p.reshape(*d, packed.shape[-1]) for p, d in zip(packed.split(sizes), dims)]


def pack_text(items: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """List of (L_i, C) -> (sum L, C) and lengths (B, 1) long."""
    if not items:
        raise BadInputError("nothing to pack")
    return torch.cat(list(items)), torch.tensor([[x.shape[0]] for x in items], dtype=torch.long)


class ReleasedDenoiser:
    """The released guided-denoising callable for `flow.sampler.euler_sample` (one session round).

    dit: a `VincieTransformer` (any callable with its forward signature). cond: packed (N, C+1) condition of
    B samples with `vid_shape` (B, 3); txt_pos / txt_neg: assembled texts of the B samples with (B, 1) shapes.
    `__call__(x_t, t, branches)` returns one velocity per branch ("pos", "neg"). Asking for both at once runs
    one B=2 packed forward (video duplicated, the two texts as two samples), which gives the same numbers as
    two calls because attention never crosses samples.
    """

    def __init__(
        self, dit, cond: Tensor, vid_shape: Tensor, txt_pos: Tensor, txt_pos_shape: Tensor,
        txt_neg: Tensor | None = None, txt_neg_shape: Tensor | None = None,
    ) -> None:  # fmt: skip
        self.dit, self.cond, self.vid_shape = dit, cond, vid_shape.reshape(-1, 3)
        self.text = {"pos": (txt_pos, txt_pos_shape.reshape(-1, 1))}
        if txt_neg is not None:
            self.text["neg"] = (txt_neg, txt_neg_shape.reshape(-1, 1))
        self.calls = 0

    def __call__(self, x_t: Tensor, t: Tensor, branches: Sequence[str]) -> list[Tensor]:
        missing = [b for b in branches if b not in self.text]
        if missing:
            raise BadInputError(f"no text given for branch(es) {missing}")
        vid = dit_input(x_t, self.cond)
        n, b = len(branches), self.vid_shape.shape[0]
        txts = [self.text[b] for b in branches]
        self.calls += 1
        out = self.dit(
            vid=vid if n == 1 else vid.repeat(n, 1),
            txt=torch.cat([t_ for t_, _ in txts]),
            vid_shape=self.vid_shape.repeat(n, 1),
            txt_shape=torch.cat([s for _, s in txts]),
            timestep=t.reshape(-1)[:1].float().repeat(n * b),
        )
        return list(out.chunk(n)) if n > 1 else [out]
