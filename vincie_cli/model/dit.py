"""The VINCIE transformer: a packed, native-resolution MM-DiT whose state_dict is the released one.

A batch is a list of samples of different sizes, concatenated without padding:
- video `vid` (sum_i T_i*h_i*w_i, C_in), each sample's (T, h, w, C) latent flattened row-major (t, h, w);
  `vid_shape` (B, 3) long = [T, h, w] in latent units (before the 1x2x2 patchify);
- text `txt` (sum_i L_i, txt_in_dim); `txt_shape` (B, 1) long = [L].
Attention is full inside a sample over [video tokens; text tokens] and never crosses samples.

Blocks 0..mm_layers-1 keep separate `.vid` / `.txt` weights, later blocks share `.all`. Modulation is adaLN
"single": one time MLP gives E (D, 2 sub-layers, 3 = shift/scale/gate) per sample, each block adds learned
offsets. The output head reuses the attention chunk of E (a quirk of the release that the weights learned).
RoPE is 3-axis: text token j -> (j, j, j), video token (f, r, c) -> (L_text + f, r, c).
See docs/model.md and the reference notes for the full specification.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from vincie_cli.model.layers import (
    ATTENTION_MODES,
    RMSNorm,
    RoPE3d,
    TimeEmbedding,
    apply_rope,
    packed_attention,
    rope_cos_sin,
    rope_frequencies,
)
from vincie_cli.utils.io import BadInputError

log = logging.getLogger(__name__)

ROPE_THETA = 10000.0
_STRIP_PREFIXES = ("_flops_wrap_module.", "_orig_mod.")


# --------------------------------------------------------------------------------------------
# config


@dataclass
class DiTConfig:
    """Hyper-parameters of the transformer; defaults are the released VINCIE-3B."""

    vid_in_channels: int = 33
    vid_out_channels: int = 16
    vid_dim: int = 2560
    txt_in_dim: int = 5120
    heads: int = 20
    head_dim: int = 128
    num_layers: int = 32
    mm_layers: int = 10
    mlp_hidden: int = 6912
    mlp_type: str = "swiglu"  # "swiglu" (bias-free) or "gelu" (the release's "normal" MLP: biased, GELU-tanh)
    patch_size: tuple[int, int, int] = field(default=(1, 2, 2))
    rope_dim: int = 128  # per-axis rotary width is rope_dim // 3
    norm_eps: float = 1e-5
    qk_bias: bool = False
    max_turns: int = 64

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)
        problems = []
        if len(self.patch_size) != 3 or self.patch_size[0] != 1:
            problems.append(f"patch_size must be (1, ph, pw), got {self.patch_size}")
        if self.heads < 1 or self.head_dim < 1 or self.vid_dim < 1:
            problems.append(
                f"vid_dim, heads and head_dim must be positive, got {self.vid_dim}, {self.heads}, {self.head_dim}"
            )
        if not 0 <= self.mm_layers <= self.num_layers or self.num_layers < 1:
            n, m = self.num_layers, self.mm_layers
            problems.append(f"need 1 <= num_layers and 0 <= mm_layers <= num_layers, got {n} and {m}")
        if self.mlp_type not in ("swiglu", "gelu"):
            problems.append(f"mlp_type must be 'swiglu' or 'gelu', got {self.mlp_type!r}")
        if self.rope_rotated_dims > self.head_dim:
            problems.append(f"rope_dim {self.rope_dim} turns {self.rope_rotated_dims} dims > head_dim {self.head_dim}")
        if self.max_turns < 1:
            problems.append(f"max_turns must be >= 1, got {self.max_turns}")
        if problems:
            raise BadInputError("invalid DiT config: " + "; ".join(problems))

    @property
    def emb_dim(self) -> int:
        """Width of the time embedding: 6 * vid_dim (shift/scale/gate x attn/mlp)."""
        return 6 * self.vid_dim

    @property
    def rope_axis_dim(self) -> int:
        return self.rope_dim // 3

    @property
    def rope_rotated_dims(self) -> int:
        """Head channels turned by RoPE: 3 axes x 2 x (axis_dim // 2); the rest pass through."""
        return 3 * 2 * (self.rope_axis_dim // 2)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DiTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BadInputError(f"unknown DiT config keys: {', '.join(unknown)}")
        return cls(**dict(d))

    @classmethod
    def from_official(cls, args: Mapping[str, Any], max_turns: int = 64) -> DiTConfig:
        """From the release's `NaDiT` constructor arguments (its `dit.model` YAML section)."""
        supported = {
            "ada": "single",
            "block_type": "mmdit",
            "msa_type": "mm_full",
            "rope_type": "mmrope3d",
            "norm": "fusedrms",
            "qk_norm": "fusedrms",
            "vid_out_norm": "fusedrms",
        }
        bad = [f"{k}={args.get(k)!r} (supported: {v!r})" for k, v in supported.items() if args.get(k, v) != v]
        d = int(args["vid_dim"])
        if int(args.get("txt_dim", d)) != d:
            bad.append(f"txt_dim {args['txt_dim']} != vid_dim {d}")
        if int(args.get("emb_dim", 6 * d)) != 6 * d:
            bad.append(f"emb_dim {args['emb_dim']} != 6*vid_dim")
        if not isinstance(args.get("txt_in_dim"), int):
            bad.append(f"txt_in_dim must be one int, got {args.get('txt_in_dim')!r}")
        if bad:
            raise BadInputError("unsupported DiT configuration: " + "; ".join(bad))
        ratio = args.get("expand_ratio", 4)
        mlp_type = {"swiglu": "swiglu", "normal": "gelu"}.get(args.get("mlp_type", "swiglu"))
        if mlp_type is None:
            raise BadInputError(f"unsupported mlp_type {args.get('mlp_type')!r} (supported: swiglu, normal)")
        if mlp_type == "swiglu":
            hidden = int(2 * d * ratio / 3)
            hidden = 256 * math.ceil(hidden / 256)
        else:
            hidden = d * ratio
        return cls(
            vid_in_channels=int(args["vid_in_channels"]),
            vid_out_channels=int(args["vid_out_channels"]),
            vid_dim=d,
            txt_in_dim=int(args["txt_in_dim"]),
            heads=int(args["heads"]),
            head_dim=int(args["head_dim"]),
            num_layers=int(args["num_layers"]),
            mm_layers=int(args["mm_layers"]),
            mlp_hidden=int(hidden),
            mlp_type=mlp_type,
            patch_size=tuple(args.get("patch_size", (1, 2, 2))),
            rope_dim=int(args.get("rope_dim", int(args["head_dim"]))),
            norm_eps=float(args.get("norm_eps", 1e-5)),
            qk_bias=bool(args.get("qk_bias", False)),
            max_turns=max_turns,
        )

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor]) -> DiTConfig:
        """Derive every hyper-parameter from a checkpoint's key names and shapes (spec §3.13).

        Not derivable and left at the defaults: norm_eps (1e-5) and the 1x2x2 patch (in-channels = in-features / 4).
        rope_dim is read from the `rope.rope.freqs` buffer (axis width a); the released convention
        rope_dim = min(3a + 2, head_dim) is chosen among the values with rope_dim // 3 == a.
        Raises BadInputError naming what does not fit.
        """
        sd = _strip_prefixes(sd)

        def shape(key: str) -> tuple[int, ...]:
            if key not in sd:
                raise BadInputError(f"not a VINCIE DiT state_dict: key {key!r} is missing")
            return tuple(sd[key].shape)

        ph, pw = 2, 2
        d, patch_in = shape("vid_in.proj.weight")
        patch_out = shape("vid_out.proj.weight")[0]
        if patch_in % (ph * pw) or patch_out % (ph * pw):
            raise BadInputError(
                f"vid_in.proj.weight in-features {patch_in} / vid_out.proj.weight out-features {patch_out} "
                f"are not multiples of {ph * pw} (a 1x2x2 patch)"
            )
        txt_out, txt_in_dim = shape("txt_in.weight")
        if txt_out != d:
            raise BadInputError(f"txt_in.weight maps to {txt_out} channels, expected vid_dim {d}")
        emb = shape("emb_in.proj_out.weight")[0]
        if emb != 6 * d:
            raise BadInputError(f"emb_in.proj_out.weight has {emb} rows, expected 6*vid_dim = {6 * d}")
        if "vid_out_norm.weight" not in sd:
            raise BadInputError("checkpoint has no vid_out_norm.weight: only the released output head is supported")

        block_ids: set[int] = set()
        mm_ids: set[int] = set()
        for k in sd:
            m = re.match(r"blocks\.(\d+)\.", k)
            if m:
                block_ids.add(int(m.group(1)))
                if ".vid." in k:
                    mm_ids.add(int(m.group(1)))
        if not block_ids:
            raise BadInputError("not a VINCIE DiT state_dict: no blocks.* keys")
        num_layers = max(block_ids) + 1
        missing_blocks = sorted(set(range(num_layers)) - block_ids)
        if missing_blocks:
            raise BadInputError(f"blocks {missing_blocks} are missing (highest block index is {num_layers - 1})")
        mm_layers = len(mm_ids)
        if mm_ids != set(range(mm_layers)):
            raise BadInputError(f"blocks with separate vid/txt weights must be a prefix 0..k-1, got {sorted(mm_ids)}")

        s0 = "vid" if mm_layers > 0 else "all"
        head_dim = shape(f"blocks.0.attn.norm_q.{s0}.weight")[0]
        qkv_rows = shape(f"blocks.0.attn.proj_qkv.{s0}.weight")[0]
        if qkv_rows % (3 * head_dim):
            raise BadInputError(
                f"blocks.0.attn.proj_qkv.{s0}.weight has {qkv_rows} rows, not a multiple of 3*head_dim = {3 * head_dim}"
            )
        heads = qkv_rows // (3 * head_dim)
        qk_bias = f"blocks.0.attn.proj_qkv.{s0}.bias" in sd
        if f"blocks.0.mlp.{s0}.proj_in_gate.weight" in sd:
            mlp_type = "swiglu"
        else:
            mlp_type = "gelu"
        mlp_hidden = shape(f"blocks.0.mlp.{s0}.proj_in.weight")[0]

        freqs_key = "blocks.0.attn.rope.rope.freqs"
        if freqs_key in sd:
            rope_dim = _rope_dim_from_freqs(sd[freqs_key], head_dim)
        else:
            rope_dim = head_dim
        max_turns = 64
        if "prompt_id_embedding.embedding.weight" in sd:
            max_turns, pdim = shape("prompt_id_embedding.embedding.weight")
            if pdim != txt_in_dim:
                raise BadInputError(
                    f"prompt_id_embedding.embedding.weight has width {pdim}, expected txt_in_dim {txt_in_dim}"
                )
        return cls(
            vid_in_channels=patch_in // (ph * pw),
            vid_out_channels=patch_out // (ph * pw),
            vid_dim=d,
            txt_in_dim=txt_in_dim,
            heads=heads,
            head_dim=head_dim,
            num_layers=num_layers,
            mm_layers=mm_layers,
            mlp_hidden=mlp_hidden,
            mlp_type=mlp_type,
            patch_size=(1, ph, pw),
            rope_dim=rope_dim,
            qk_bias=qk_bias,
            max_turns=max_turns,
        )


def _rope_dim_from_freqs(freqs: Tensor, head_dim: int) -> int:
    """Axis width a from the stored frequencies theta^(-2k/a); returns min(3a + 2, head_dim)."""
    n = freqs.numel()
    if freqs.is_meta:  # shapes only (a meta-device state_dict): assume an even axis width
        return max(6 * n, min(6 * n + 2, head_dim))
    f = freqs.detach().float().cpu()
    if n == 0:
        return min(2, head_dim)
    if n == 1:
        a = 2
    else:
        a = int(round(-2.0 * math.log(ROPE_THETA) / math.log(float(f[1]))))
        if a // 2 != n:
            raise BadInputError(f"rope.rope.freqs has {n} values, inconsistent with an axis width of {a}")
    rtol = 1e-5 if freqs.dtype in (torch.float32, torch.float64) else 1e-2
    if not torch.allclose(f, rope_frequencies(a, ROPE_THETA), rtol=rtol, atol=0):
        raise BadInputError("rope.rope.freqs values are not theta^(-2k/a) with theta = 10000")
    return max(3 * a, min(3 * a + 2, head_dim))


def _strip_prefixes(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        for p in _STRIP_PREFIXES:
            k = k.replace(p, "")
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------
# modules


class MMModule(nn.Module):
    """One sub-module per stream (`.vid`, `.txt`) in mm blocks, or one shared `.all`."""

    def __init__(self, factory: Callable[[], nn.Module], shared: bool, vid_only: bool = False) -> None:
        super().__init__()
        self.shared = shared
        if shared:
            self.all = factory()
        else:
            self.vid = factory()
            if not vid_only:
                self.txt = factory()

    def pick(self, stream: str) -> nn.Module:
        return self.all if self.shared else getattr(self, stream)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj_in_gate = nn.Linear(dim, hidden, bias=False)
        self.proj_out = nn.Linear(hidden, dim, bias=False)
        self.proj_in = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_out(F.silu(self.proj_in_gate(x)) * self.proj_in(x))


class GeluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, hidden)
        self.proj_out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_out(F.gelu(self.proj_in(x), approximate="tanh"))


class AdaSingle(nn.Module):
    """Learned per-block offsets added to the shared time embedding; keys `{layer}_{shift|scale|gate}`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        for layer in ("attn", "mlp"):  # the release's init: offsets ~ N(0, 1/D), scales around 1
            self.register_parameter(f"{layer}_shift", nn.Parameter(torch.randn(dim) / dim**0.5))
            self.register_parameter(f"{layer}_scale", nn.Parameter(torch.randn(dim) / dim**0.5 + 1))
            self.register_parameter(f"{layer}_gate", nn.Parameter(torch.randn(dim) / dim**0.5))


class _Emb(NamedTuple):
    """Time embedding of one stream: chunks (G, D, 2, 3) and token -> group index (None: one group, broadcast)."""

    e: Tensor
    index: Tensor | None

    def mod(self, layer: int, g: int, offset: Tensor) -> Tensor:
        """E[:, :, layer, g] + offset, one row per token (or one broadcast row)."""
        m = self.e[:, :, layer, g] + offset
        return m if self.index is None else m.index_select(0, self.index)


def _modulate_in(x: Tensor, emb: _Emb, layer: int, ada: AdaSingle, name: str) -> Tensor:
    scale = emb.mod(layer, 1, getattr(ada, f"{name}_scale"))
    shift = emb.mod(layer, 0, getattr(ada, f"{name}_shift"))
    return x * scale + shift


def _gate(y: Tensor, emb: _Emb, layer: int, ada: AdaSingle, name: str) -> Tensor:
    return y * emb.mod(layer, 2, getattr(ada, f"{name}_gate"))


@dataclass
class _Plan:
    """How one forward call's tokens are laid out for attention."""

    vid_lens: list[int]
    txt_lens: list[int]
    precision: str
    masks: list[Tensor] | None
    perm: Tensor | None  # cat([vid, txt]) rows -> per-sample [vid_i; txt_i] order (None when B == 1)
    inv: Tensor | None

    @property
    def seqlens(self) -> list[int]:
        return [a + b for a, b in zip(self.vid_lens, self.txt_lens)]

    def pack(self, v: Tensor, t: Tensor) -> Tensor:
        x = torch.cat([v, t], dim=0)
        return x if self.perm is None else x.index_select(0, self.perm)

    def unpack(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.inv is not None:
            x = x.index_select(0, self.inv)
        nv = sum(self.vid_lens)
        return x[:nv], x[nv:]


class _Rope(NamedTuple):
    cos_v: Tensor
    sin_v: Tensor
    cos_t: Tensor
    sin_t: Tensor


class MMAttention(nn.Module):
    """Joint attention over [video; text] per sample, with per-head qk RMSNorm and 3-axis RoPE."""

    def __init__(self, cfg: DiTConfig, shared: bool) -> None:
        super().__init__()
        d, hd = cfg.vid_dim, cfg.head_dim
        self.heads, self.head_dim = cfg.heads, hd
        inner = cfg.heads * hd  # may differ from vid_dim
        self.proj_qkv = MMModule(lambda: nn.Linear(d, 3 * inner, bias=cfg.qk_bias), shared)
        self.proj_out = MMModule(lambda: nn.Linear(inner, d), shared)
        self.norm_q = MMModule(lambda: RMSNorm(hd, cfg.norm_eps), shared)
        self.norm_k = MMModule(lambda: RMSNorm(hd, cfg.norm_eps), shared)
        self.rope = RoPE3d(cfg.rope_dim)

    def _qkv(self, x: Tensor, stream: str, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.proj_qkv.pick(stream)(x).unflatten(-1, (3, self.heads, self.head_dim)).unbind(1)
        q = apply_rope(self.norm_q.pick(stream)(q), cos, sin)
        k = apply_rope(self.norm_k.pick(stream)(k), cos, sin)
        return q, k, v

    def forward(self, a_v: Tensor, a_t: Tensor, rope: _Rope, plan: _Plan, vid_only_out: bool = False):
        qv, kv, vv = self._qkv(a_v, "vid", rope.cos_v, rope.sin_v)
        qt, kt, vt = self._qkv(a_t, "txt", rope.cos_t, rope.sin_t)
        out = packed_attention(
            plan.pack(qv, qt), plan.pack(kv, kt), plan.pack(vv, vt), plan.seqlens,
            precision=plan.precision, masks=plan.masks,
        )  # fmt: skip
        o_v, o_t = plan.unpack(out.flatten(1))
        o_v = self.proj_out.pick("vid")(o_v)
        o_t = None if vid_only_out else self.proj_out.pick("txt")(o_t)
        return o_v, o_t


class MMDiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, index: int) -> None:
        super().__init__()
        shared = index >= cfg.mm_layers
        self.is_last = index == cfg.num_layers - 1
        d = cfg.vid_dim
        self.norm = RMSNorm(d, cfg.norm_eps, affine=False)  # attn_norm and mlp_norm of the release (no weights)
        self.attn = MMAttention(cfg, shared)
        mlp_cls = SwiGLU if cfg.mlp_type == "swiglu" else GeluMLP
        self.mlp = MMModule(lambda: mlp_cls(d, cfg.mlp_hidden), shared, vid_only=self.is_last)
        self.ada = MMModule(lambda: AdaSingle(d), shared)

    def forward(self, x_v: Tensor, x_t: Tensor, ev: _Emb, et: _Emb, rope: _Rope, plan: _Plan):
        ada_v, ada_t = self.ada.pick("vid"), self.ada.pick("txt")
        a_v = _modulate_in(self.norm(x_v), ev, 0, ada_v, "attn")
        a_t = _modulate_in(self.norm(x_t), et, 0, ada_t, "attn")
        o_v, o_t = self.attn(a_v, a_t, rope, plan, vid_only_out=self.is_last)
        x_v = _gate(o_v, ev, 0, ada_v, "attn") + x_v
        m_v = self.mlp.pick("vid")(_modulate_in(self.norm(x_v), ev, 1, ada_v, "mlp"))
        x_v = _gate(m_v, ev, 1, ada_v, "mlp") + x_v
        if self.is_last:  # the text stream is not used after the last block
            return x_v, x_t
        x_t = _gate(o_t, et, 0, ada_t, "attn") + x_t
        m_t = self.mlp.pick("txt")(_modulate_in(self.norm(x_t), et, 1, ada_t, "mlp"))
        x_t = _gate(m_t, et, 1, ada_t, "mlp") + x_t
        return x_v, x_t


class PatchIn(nn.Module):
    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, dim)


class PatchOut(nn.Module):
    def __init__(self, dim: int, out_features: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, out_features)


class OutAda(nn.Module):
    """Output modulation offsets `out_shift`, `out_scale` (the time part reuses the attn chunk of E)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_shift = nn.Parameter(torch.randn(dim) / dim**0.5)
        self.out_scale = nn.Parameter(torch.randn(dim) / dim**0.5 + 1)


class PromptEmbedding(nn.Module):
    """Learned turn-index rows, in the text encoder's space: key `embedding.weight` (max_turns, txt_in_dim)."""

    def __init__(self, max_turns: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_turns, dim)

    def forward(self, ids: Tensor) -> Tensor:
        return self.embedding(ids)


# --------------------------------------------------------------------------------------------
# patchify


def patchify(x: Tensor, ph: int, pw: int) -> Tensor:
    """(T, h, w, C) -> (T, h/ph, w/pw, ph*pw*C), feature order (dy, dx, c) with c fastest."""
    t, h, w, c = x.shape
    x = x.reshape(t, h // ph, ph, w // pw, pw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(t, h // ph, w // pw, ph * pw * c)


def unpatchify(x: Tensor, ph: int, pw: int) -> Tensor:
    """Inverse of `patchify`: (T, h', w', ph*pw*C) -> (T, h'*ph, w'*pw, C)."""
    t, h, w, f = x.shape
    c = f // (ph * pw)
    x = x.reshape(t, h, w, ph, pw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(t, h * ph, w * pw, c)


# --------------------------------------------------------------------------------------------
# the model


class VincieTransformer(nn.Module):
    """Packed MM-DiT (NaDiT) predicting the flow velocity of every video token; see the module docstring."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        cfg = self.config = config
        _, ph, pw = cfg.patch_size
        d = cfg.vid_dim
        self.attention = "bf16"
        self.gradient_checkpointing = False
        self.vid_in = PatchIn(cfg.vid_in_channels * ph * pw, d)
        self.txt_in = nn.Linear(cfg.txt_in_dim, d)
        self.emb_in = TimeEmbedding(d, cfg.emb_dim)
        self.blocks = nn.ModuleList(MMDiTBlock(cfg, i) for i in range(cfg.num_layers))
        self.vid_out_norm = RMSNorm(d, cfg.norm_eps)
        self.vid_out_ada = OutAda(d)
        self.vid_out = PatchOut(d, cfg.vid_out_channels * ph * pw)
        self.prompt_id_embedding = PromptEmbedding(cfg.max_turns, cfg.txt_in_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.vid_in.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.vid_in.proj.weight.device

    def forward(
        self,
        vid: Tensor,
        txt: Tensor,
        vid_shape: Tensor,
        txt_shape: Tensor,
        timestep: Tensor | float,
        *,
        frame_timestep: Tensor | None = None,
        vid_pos: Tensor | None = None,
        txt_pos: Tensor | None = None,
        attn_mask: list[Tensor] | None = None,
    ) -> Tensor:
        """Velocity (sum T*h*w, C_out) for packed video (sum T*h*w, C_in) and text (sum L, txt_in_dim).

        timestep: (B,) in [0, 1000]. frame_timestep: optional (sum T_i,) per-frame timesteps for the video
        tokens (text keeps `timestep`). vid_pos / txt_pos: optional (N_vid_patched, 3) / (sum L, 3) RoPE
        positions replacing the default layout. attn_mask: optional list of B bool (N_i, N_i) over sample i's
        [patched video tokens; text tokens], True = may attend.
        """
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"VincieTransformer.attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        cfg = self.config
        _, ph, pw = cfg.patch_size
        dtype, device = self.dtype, self.device
        shapes, txt_lens = _check_inputs(vid, txt, vid_shape, txt_shape, ph, pw, cfg)
        b = len(shapes)
        patched = [(t, h // ph, w // pw) for t, h, w in shapes]
        vid_lens = [t * h * w for t, h, w in patched]

        # embed
        pieces = vid.to(device=device, dtype=dtype).split([t * h * w for t, h, w in shapes])
        x_v = torch.cat([patchify(p.reshape(*s, -1), ph, pw).flatten(0, 2) for p, s in zip(pieces, shapes)])
        x_v = self.vid_in.proj(x_v)
        x_t = self.txt_in(txt.to(device=device, dtype=dtype))

        # time embeddings: per sample for text, per sample or per frame for video
        ts = torch.as_tensor(timestep, device=device, dtype=torch.float32).reshape(-1)
        if ts.numel() == 1 and b > 1:
            ts = ts.expand(b)
        if ts.numel() != b:
            raise BadInputError(f"timestep has {ts.numel()} values for {b} samples")
        sample_of_txt = _group_index(txt_lens, device)
        if frame_timestep is None:
            e = self._time_chunks(ts)
            ev = _Emb(e, None if b == 1 else _group_index(vid_lens, device))
            et = _Emb(e, None if b == 1 else sample_of_txt)
        else:
            ft = torch.as_tensor(frame_timestep, device=device, dtype=torch.float32).reshape(-1)
            n_frames = sum(t for t, _, _ in patched)
            if ft.numel() != n_frames:
                raise BadInputError(f"frame_timestep has {ft.numel()} values, the batch has {n_frames} frames")
            e = self._time_chunks(torch.cat([ts, ft]))
            per_frame = [h * w for t, h, w in patched for _ in range(t)]
            ev = _Emb(e, b + _group_index(per_frame, device))
            et = _Emb(e, sample_of_txt)  # e has 1 + frames rows even for one sample

        # RoPE
        if vid_pos is None:
            vid_pos = default_vid_positions(patched, txt_lens, device)
        if txt_pos is None:
            txt_pos = default_txt_positions(txt_lens, device)
        if vid_pos.shape != (sum(vid_lens), 3) or txt_pos.shape != (sum(txt_lens), 3):
            raise BadInputError(
                f"vid_pos/txt_pos must have shapes ({sum(vid_lens)}, 3)/({sum(txt_lens)}, 3), "
                f"got {tuple(vid_pos.shape)}/{tuple(txt_pos.shape)}"
            )
        freqs = rope_frequencies(cfg.rope_axis_dim, ROPE_THETA, device=device)
        rope = _Rope(*rope_cos_sin(vid_pos.to(device), freqs), *rope_cos_sin(txt_pos.to(device), freqs))

        # attention layout
        if attn_mask is not None and len(attn_mask) != b:
            raise BadInputError(f"attn_mask has {len(attn_mask)} entries for {b} samples")
        perm = inv = None
        if b > 1:
            perm = _interleave_perm(vid_lens, txt_lens, device)
            inv = torch.empty_like(perm)
            inv[perm] = torch.arange(perm.numel(), device=device)
        plan = _Plan(vid_lens, txt_lens, self.attention, attn_mask, perm, inv)

        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x_v, x_t = torch.utils.checkpoint.checkpoint(block, x_v, x_t, ev, et, rope, plan, use_reentrant=False)
            else:
                x_v, x_t = block(x_v, x_t, ev, et, rope, plan)

        # output head: RMSNorm (affine) + modulation with the *attn* chunk of E, then the patch projection
        ada = self.vid_out_ada
        y = _modulate_in(self.vid_out_norm(x_v), ev, 0, ada, "out")
        y = self.vid_out.proj(y)
        outs = [unpatchify(p.reshape(*s, -1), ph, pw).flatten(0, 2) for p, s in zip(y.split(vid_lens), patched)]
        return torch.cat(outs)

    def _time_chunks(self, t: Tensor) -> Tensor:
        """(G,) timesteps -> E as (G, D, 2, 3): [d, sub-layer (attn, mlp), shift/scale/gate]."""
        return self.emb_in(t).unflatten(-1, (self.config.vid_dim, 2, 3))


def forward_flops(config: DiTConfig, vid_lens: list[int], txt_lens: list[int]) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward over samples with the given patched-video / text lengths.

    Counts every Linear (patch in/out, text in, blocks) and attention's QK^T and PV; the time MLP and
    elementwise work are left out. The last block skips the text output projection and MLP.
    """
    cfg = config
    d, f = cfg.vid_dim, cfg.mlp_hidden
    _, ph, pw = cfg.patch_size
    nv, nt = sum(vid_lens), sum(txt_lens)
    mlp = (3 if cfg.mlp_type == "swiglu" else 2) * d * f
    total = nv * cfg.vid_in_channels * ph * pw * d + nt * cfg.txt_in_dim * d + nv * d * cfg.vid_out_channels * ph * pw
    inner = cfg.heads * cfg.head_dim
    attn = sum(2 * (a + b) ** 2 * inner for a, b in zip(vid_lens, txt_lens))  # QK^T and PV: n^2 * inner each
    for i in range(cfg.num_layers):
        last = i == cfg.num_layers - 1
        total += (nv + nt) * 3 * d * inner + attn
        total += (nv + (0 if last else nt)) * (inner * d + mlp)
    return 2 * total


def _check_inputs(vid, txt, vid_shape, txt_shape, ph, pw, cfg) -> tuple[list[tuple[int, int, int]], list[int]]:
    shapes = [tuple(int(v) for v in s) for s in vid_shape.reshape(-1, 3).tolist()]
    txt_lens = [int(v) for v in txt_shape.reshape(-1).tolist()]
    if len(shapes) != len(txt_lens):
        raise BadInputError(f"vid_shape has {len(shapes)} samples but txt_shape has {len(txt_lens)}")
    if not shapes:
        raise BadInputError("empty batch")
    for i, (t, h, w) in enumerate(shapes):
        if t < 1 or h % ph or w % pw or h < ph or w < pw:
            raise BadInputError(f"sample {i}: latent shape [T={t}, h={h}, w={w}] does not fit the {ph}x{pw} patch")
    if vid.ndim != 2 or vid.shape[0] != sum(t * h * w for t, h, w in shapes) or vid.shape[1] != cfg.vid_in_channels:
        raise BadInputError(
            f"vid has shape {tuple(vid.shape)}, expected ({sum(t * h * w for t, h, w in shapes)}, "
            f"{cfg.vid_in_channels})"
        )
    if txt.ndim != 2 or txt.shape[0] != sum(txt_lens) or txt.shape[1] != cfg.txt_in_dim:
        raise BadInputError(f"txt has shape {tuple(txt.shape)}, expected ({sum(txt_lens)}, {cfg.txt_in_dim})")
    return shapes, txt_lens


def _group_index(lengths: list[int], device) -> Tensor:
    """[2, 3] -> tensor([0, 0, 1, 1, 1])."""
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))


def _interleave_perm(vid_lens: list[int], txt_lens: list[int], device) -> Tensor:
    """Row indices into cat([all video; all text]) that give [vid_0; txt_0; vid_1; txt_1; ...]."""
    nv = sum(vid_lens)
    idx, vs, ts = [], 0, nv
    for a, b in zip(vid_lens, txt_lens):
        idx.append(torch.arange(vs, vs + a, device=device))
        idx.append(torch.arange(ts, ts + b, device=device))
        vs, ts = vs + a, ts + b
    return torch.cat(idx)


def default_txt_positions(txt_lens: list[int], device=None) -> Tensor:
    """Text token j of each sample -> (j, j, j); (sum L, 3) float32."""
    j = torch.cat([torch.arange(n, device=device, dtype=torch.float32) for n in txt_lens])
    return j[:, None].expand(-1, 3).contiguous()


def default_vid_positions(patched: list[tuple[int, int, int]], txt_lens: list[int], device=None) -> Tensor:
    """Video token (frame f, row r, col c) of sample i -> (L_i + f, r, c); (sum T*h*w, 3) float32 (patched units)."""
    out = []
    for (t, h, w), n in zip(patched, txt_lens):
        grid = torch.meshgrid(
            torch.arange(t, device=device, dtype=torch.float32) + n,
            torch.arange(h, device=device, dtype=torch.float32),
            torch.arange(w, device=device, dtype=torch.float32),
            indexing="ij",
        )
        out.append(torch.stack(grid, dim=-1).reshape(-1, 3))
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# session text


def assemble_session_text(prompt_states: list[list[Tensor]], table: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample, concatenate `[table[k]; S_k]` over its prompts k (seq_concat turn embeddings).

    prompt_states: per sample a list of per-prompt valid-token matrices S_k (n_k, C) (each prompt encoded
    alone; padding already dropped). table: (max_turns, C) turn-embedding rows. Returns txt (sum L, C) in the
    promoted dtype of table and states, and txt_shape (B, 1) long with L = sum_k (n_k + 1).
    The negative prompt is one sample with a single prompt (turn 0).
    """
    rows, c = table.shape
    segments, lens = [], []
    for i, states in enumerate(prompt_states):
        if len(states) > rows:
            raise BadInputError(
                f"session {i} has {len(states)} prompts but the turn-embedding table has {rows} rows: "
                f"at most {rows} turns per session"
            )
        if not states:
            raise BadInputError(f"session {i} has no prompts")
        n = 0
        for k, s in enumerate(states):
            if s.ndim != 2 or s.shape[1] != c:
                raise BadInputError(f"session {i} prompt {k}: text states {tuple(s.shape)}, expected (n, {c})")
            dt = torch.promote_types(table.dtype, s.dtype)
            segments.append(table[k : k + 1].to(dt))
            segments.append(s.to(device=table.device, dtype=dt))
            n += s.shape[0] + 1
        lens.append(n)
    dt = segments[0].dtype
    for s in segments:
        dt = torch.promote_types(dt, s.dtype)
    txt = torch.cat([s.to(dt) for s in segments])
    return txt, torch.tensor(lens, dtype=torch.long, device=table.device)[:, None]


# --------------------------------------------------------------------------------------------
# build and load


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_dit(
    config: DiTConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> VincieTransformer:
    """Build the transformer directly on `device` ("meta" allocates nothing) with parameters in `dtype`.

    RoPE frequency buffers stay fp32.
    """
    with torch.device(device), _default_dtype(dtype if dtype.is_floating_point else torch.float32):
        model = VincieTransformer(config)
    for blk in model.blocks:
        r = blk.attn.rope.rope
        if r.freqs.dtype != torch.float32:
            r.freqs = r.freqs.float()
    return model


class LoadReport(NamedTuple):
    missing: list[str]
    unexpected: list[str]


def _name_list(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def load_dit_weights(model: VincieTransformer, sd: Mapping[str, Tensor], strict: bool = True) -> LoadReport:
    """Load a (released or converted) state_dict into `model`, strictly by default.

    Strips `_flops_wrap_module.` (and `torch.compile`'s `_orig_mod.`) from key names. `rope.rope.freqs`
    buffers may be absent (recomputed); present ones must hold the expected frequencies. Mis-shaped keys
    always fail; missing or unexpected keys fail when `strict`, else they are logged (missing parameters of a
    meta-device model become zeros). A meta-device model is loaded with `assign=True` (no copy; tensors are
    cast to the model's dtype). Raises BadInputError naming the offending keys.
    """
    sd = _strip_prefixes(sd)
    expected = model.state_dict(keep_vars=True)
    freqs_keys = {k for k in expected if k.endswith("rope.rope.freqs")}
    missing = [k for k in expected if k not in sd and k not in freqs_keys]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [
        f"{k} {list(sd[k].shape)} (model {list(expected[k].shape)})"
        for k in sd
        if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if misshaped:
        problems.append("mis-shaped keys: " + _name_list(misshaped))
    if strict and missing:
        problems.append("missing keys: " + _name_list(missing))
    if strict and unexpected:
        problems.append("unexpected keys: " + _name_list(unexpected))
    if not strict and not (set(sd) & set(expected)):
        problems.append("no key matches the model")
    ref = rope_frequencies(model.config.rope_axis_dim, ROPE_THETA)
    for k in sorted(freqs_keys & set(sd)):
        stored = sd[k].detach()
        rtol = 1e-5 if stored.dtype in (torch.float32, torch.float64) else 1e-2  # a bf16/fp16 copy is rounded
        if not misshaped and not torch.allclose(stored.float().cpu(), ref, rtol=rtol, atol=0):
            problems.append(f"{k} does not hold the expected RoPE frequencies for rope_dim {model.config.rope_dim}")
            break
    if problems:
        raise BadInputError("DiT weights do not fit the model: " + "; ".join(problems))
    if missing:
        log.warning("DiT weights: missing keys keep their init (zeros on a meta model): %s", _name_list(missing))
    if unexpected:
        log.warning("DiT weights: ignored unexpected keys: %s", _name_list(unexpected))

    to_load = {k: v for k, v in sd.items() if k in expected and k not in freqs_keys}
    on_meta = any(t.is_meta for t in expected.values())
    if on_meta:
        to_load = {k: v.to(dtype=expected[k].dtype) if v.is_floating_point() else v for k, v in to_load.items()}
        model.load_state_dict(to_load, strict=False, assign=True)
        target = next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))
        for name, p in list(model.named_parameters()):
            if p.is_meta:
                _set_tensor(model, name, nn.Parameter(torch.zeros(p.shape, dtype=p.dtype, device=target)))
    else:
        model.load_state_dict(to_load, strict=False)
    # freqs buffers (checked above) always hold the exact fp32 values
    dev = next(model.parameters()).device
    for blk in model.blocks:
        blk.attn.rope.rope.freqs = rope_frequencies(blk.attn.rope.axis_dim, ROPE_THETA, device=dev)
    return LoadReport(missing, unexpected)


def _set_tensor(model: nn.Module, name: str, value: Tensor) -> None:
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    setattr(mod, attr, value)
