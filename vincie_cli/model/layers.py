"""Building blocks of the VINCIE transformer: RMSNorm, timestep embedding, 3-axis RoPE, packed attention.

Shapes use N for packed tokens (all samples concatenated), H heads, d head width.

Attention dispatch (`packed_attention`) keeps every sample to itself. Backends, each a separate function:
- `_attention_flash_varlen`: flash-attn's varlen kernel (CUDA, bf16, no mask, only when `flash_attn` imports);
- `_attention_sdpa`: one `scaled_dot_product_attention` call per sample (any device), optional dense bool masks.
- `_attention_flex`: FlexAttention with one `FlexMask` (a BlockMask) over the whole packed sequence, selected
  when `masks` is a `FlexMask` (block-sparse masks on GPU: block-causal session training).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION_MODES = ("bf16", "fp32")


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with statistics in fp32; `affine=False` has no weight (and no state_dict key)."""

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}"


# --------------------------------------------------------------------------------------------
# timestep embedding


def timestep_sinusoid(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """(B,) float timesteps in [0, 1000] -> (B, dim) fp32 `[sin | cos]` features (sin half first).

    Same operation order as diffusers' `get_timestep_embedding(flip_sin_to_cos=False,
    downscale_freq_shift=0)`, so the fp32 values are bit-identical to the release.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / half)
    args = t[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """sinusoid(256) -> Linear -> SiLU -> Linear -> SiLU -> Linear(out_dim); keys `proj_in`, `proj_hid`, `proj_out`."""

    def __init__(self, hidden_dim: int, out_dim: int, sinusoid_dim: int = 256) -> None:
        super().__init__()
        self.sinusoid_dim = sinusoid_dim
        self.proj_in = nn.Linear(sinusoid_dim, hidden_dim)
        self.proj_hid = nn.Linear(hidden_dim, hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, out_dim)

    def forward(self, t: Tensor) -> Tensor:
        """(G,) timesteps -> (G, out_dim) in the weight dtype."""
        e = timestep_sinusoid(t, self.sinusoid_dim).to(self.proj_in.weight.dtype)
        e = F.silu(self.proj_in(e))
        e = F.silu(self.proj_hid(e))
        return self.proj_out(e)


# --------------------------------------------------------------------------------------------
# 3-axis RoPE ("mmrope3d")


def rope_frequencies(axis_dim: int, theta: float = 10000.0, device: torch.device | str | None = None) -> Tensor:
    """Per-axis rotary frequencies theta^(-2k/axis_dim), k < axis_dim // 2, fp32 (the released buffer values)."""
    n = axis_dim // 2
    return 1.0 / (theta ** (torch.arange(0, axis_dim, 2, device=device)[:n].float() / axis_dim))


class _RopeFreqs(nn.Module):
    """Holds the persistent `freqs` buffer so its key reads `...attn.rope.rope.freqs` as in the release."""

    def __init__(self, axis_dim: int) -> None:
        super().__init__()
        self.register_buffer("freqs", rope_frequencies(axis_dim), persistent=True)


class RoPE3d(nn.Module):
    """3-axis rotary embedding of one attention layer (only a checkpoint-compatible frequency buffer).

    The forward pass computes cos/sin once per model call (`rope_cos_sin`) from the config, in fp32, so a
    model cast to bf16 keeps exact frequencies; `load_dit_weights` checks stored buffers against them.
    """

    def __init__(self, rope_dim: int) -> None:
        super().__init__()
        self.axis_dim = rope_dim // 3
        self.rope = _RopeFreqs(self.axis_dim)


def rope_cos_sin(pos: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor]:
    """Positions (N, 3) and per-axis freqs (n,) -> cos, sin of shape (N, 3n), fp32.

    Pair p = axis * n + k (head dims 2p, 2p+1) turns by angle pos[axis] * freqs[k].
    """
    angles = pos.float()[:, :, None] * freqs.float()[None, None, :]
    angles = angles.flatten(1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs (GPT-J style) of the first 2*cos.shape[-1] channels of x (N, H, d), in fp32.

    Channels past the rotated width pass through unchanged. Returns x's dtype.
    """
    r = 2 * cos.shape[-1]
    xr = x[..., :r].float().unflatten(-1, (-1, 2))
    x0, x1 = xr.unbind(-1)
    c, s = cos[:, None, :], sin[:, None, :]
    rotated = torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2).to(x.dtype)
    if r == x.shape[-1]:
        return rotated
    return torch.cat([rotated, x[..., r:]], dim=-1)


# --------------------------------------------------------------------------------------------
# attention


@functools.cache
def _flash_varlen_fn():
    """flash-attn's varlen function, or None when the package is missing or broken."""
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:
        return None
    return flash_attn_varlen_func


def flash_attn_available() -> bool:
    return _flash_varlen_fn() is not None


class FlexMask:
    """A FlexAttention `BlockMask` over a whole packed batch (all samples as one sequence), usable wherever
    a list of per-sample masks is: `len()` is the number of samples. The block mask must keep samples apart
    and follow the packed token order ([video_i; text_i] per sample)."""

    def __init__(self, block_mask, num_samples: int, attended_pairs: int = 0) -> None:
        self.block_mask = block_mask
        self.num_samples = num_samples
        self.attended_pairs = attended_pairs

    def __len__(self) -> int:
        return self.num_samples


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _attention_flex(q: Tensor, k: Tensor, v: Tensor, mask: FlexMask, precision: str) -> Tensor:
    """FlexAttention over the whole packed sequence (compiled on CUDA; the eager fallback elsewhere)."""
    from torch.nn.attention.flex_attention import flex_attention

    out_dtype, n = q.dtype, q.shape[0]
    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    length = mask.block_mask.seq_lengths[0]  # the mask may cover padding after the last sample
    qh, kh, vh = (F.pad(t.to(dt), (0, 0, 0, 0, 0, length - n)).transpose(0, 1)[None] for t in (q, k, v))
    fn = _compiled_flex() if q.is_cuda else flex_attention
    o = fn(qh, kh, vh, block_mask=mask.block_mask)  # (1, H, length, d)
    if precision == "bf16":
        o = o.bfloat16()
    return o[0, :, :n].transpose(0, 1).to(out_dtype)


def packed_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    seqlens: list[int],
    *,
    precision: str = "bf16",
    masks: list[Tensor] | FlexMask | None = None,
    use_flash: bool = True,
) -> Tensor:
    """Full attention inside each sample of a packed batch.

    q, k, v: (N, H, d), samples contiguous with lengths `seqlens` (sum = N). Softmax scale 1/sqrt(d).
    precision "bf16": the release's numerics (q, k, v rounded to bf16, fp32 softmax, output rounded to bf16);
    "fp32": no rounding. masks: optional list of per-sample bool (n_i, n_i), True = may attend, or one
    `FlexMask` over the whole packed sequence (FlexAttention backend). Returns (N, H, d) in q's dtype.
    """
    if precision not in ATTENTION_MODES:
        raise ValueError(f"attention precision must be one of {ATTENTION_MODES}, got {precision!r}")
    if sum(seqlens) != q.shape[0]:
        raise ValueError(f"seqlens sum to {sum(seqlens)} but q has {q.shape[0]} rows")
    if isinstance(masks, FlexMask):
        return _attention_flex(q, k, v, masks, precision)
    if masks is None and use_flash and precision == "bf16" and q.is_cuda and flash_attn_available():
        return _attention_flash_varlen(q, k, v, seqlens)
    return _attention_sdpa(q, k, v, seqlens, precision=precision, masks=masks)


def _attention_flash_varlen(q: Tensor, k: Tensor, v: Tensor, seqlens: list[int]) -> Tensor:
    """flash-attn varlen kernel on bf16 q/k/v (one call for the whole packed batch)."""
    fn = _flash_varlen_fn()
    cu = torch.tensor([0, *seqlens], device=q.device, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    m = max(seqlens)
    out = fn(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu, cu, m, m, softmax_scale=q.shape[-1] ** -0.5)
    return out.to(q.dtype)


def _attention_sdpa(
    q: Tensor, k: Tensor, v: Tensor, seqlens: list[int], *, precision: str, masks: list[Tensor] | None
) -> Tensor:
    """Per-sample `scaled_dot_product_attention`.

    bf16 on CPU emulates the release's kernel: bf16-rounded inputs, fp32 math, bf16-rounded output.
    bf16 on CUDA runs SDPA natively in bf16 (flash/efficient kernels, fp32 softmax accumulation).
    """
    out_dtype = q.dtype
    if precision == "bf16":
        q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
        compute_dtype = torch.bfloat16 if q.is_cuda else torch.float32
    else:
        compute_dtype = torch.float32
    if masks is not None and len(masks) != len(seqlens):
        raise ValueError(f"got {len(masks)} attention masks for {len(seqlens)} samples")
    outs = []
    start = 0
    for i, n in enumerate(seqlens):
        # (n, H, d) -> (1, H, n, d)
        qi, ki, vi = (t[start : start + n].to(compute_dtype).transpose(0, 1)[None] for t in (q, k, v))
        mask = None
        if masks is not None:
            mask = masks[i].to(device=q.device, dtype=torch.bool)
            if mask.shape != (n, n):
                raise ValueError(f"attention mask {i} has shape {tuple(mask.shape)}, expected ({n}, {n})")
        o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask)
        if precision == "bf16":
            o = o.bfloat16()
        outs.append(o[0].transpose(0, 1))
        start += n
    return torch.cat(outs, dim=0).to(out_dtype)
