"""Image autoencoders with one interface: the released KL VAE (`VincieVAE`) and a lossless `PixelAE`.

Interface (both classes):
- `encode(images (B, 3, H, W) in [-1, 1], sample=False, generator=None) -> latents (B, h, w, C)`: scaled
  (`(z - shift) * scale`), channels-last, the layout the transformer takes. Posterior mean by default;
  `sample=True` draws z = mean + std * n with an explicit `torch.Generator` (never the global RNG).
- `encode_moments(images) -> (mean, logvar)`, unscaled (B, C, h, w); logvar clamped to [-30, 20].
- `decode(latents (B, h, w, C)) -> images (B, 3, H, W)`; `decode_raw(z (B, C, h, w))` takes unscaled latents.
- `latent_channels`, `spatial_factor`, `device`, `dtype`.

The release's VAE is a causal 3-D ("inflated") SD3-style VAE applied one frame at a time. For one frame every
temporal kernel sees three copies of the same frame, so it equals a 2-D conv whose kernel is the sum over
time. The encoder is then exactly diffusers' `AutoencoderKL` encoder; the decoder is too, except that each
upsampler is the release's "pixel shuffle" op (`PixelShuffleUpsample`). `convert_vae_state_dict` turns the
released 5-D `vae.pth` state_dict (new or old attention key names) into this module's state_dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from vincie_cli.utils.io import BadInputError

RELEASE_SCALING_FACTOR = 0.9152
RELEASE_SHIFT_FACTOR = 0.0
LOGVAR_RANGE = (-30.0, 20.0)
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@dataclass
class VAEConfig:
    """Autoencoder hyper-parameters; defaults are the released VINCIE VAE (16 channels, x8).

    kind "kl": diffusers-style KL VAE (block_out_channels ... act_fn); spatial factor 2^(len(blocks) - 1).
    kind "pixel": lossless space-to-depth by `factor` (latent_channels = 3 * factor^2), no weights.
    """

    kind: str = "kl"
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = field(default=(128, 256, 512, 512))
    layers_per_block: int = 2
    latent_channels: int = 16
    norm_num_groups: int = 32
    act_fn: str = "silu"
    mid_block_attention: bool = True
    scaling_factor: float = RELEASE_SCALING_FACTOR
    shift_factor: float = RELEASE_SHIFT_FACTOR
    factor: int = 8

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        problems = []
        if self.kind not in ("kl", "pixel"):
            problems.append(f"kind must be 'kl' or 'pixel', got {self.kind!r}")
        elif self.kind == "kl":
            n = len(self.block_out_channels)
            if n < 1 or any(c < 1 for c in self.block_out_channels):
                problems.append(f"block_out_channels must be positive, got {list(self.block_out_channels)}")
            elif self.factor != 2 ** (n - 1):
                problems.append(f"factor {self.factor} != 2^(len(block_out_channels) - 1) = {2 ** (n - 1)}")
            bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
            if bad:
                problems.append(f"norm_num_groups {self.norm_num_groups} does not divide channels {bad}")
            if self.layers_per_block < 1:
                problems.append(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        else:
            if self.factor < 1:
                problems.append(f"factor must be >= 1, got {self.factor}")
            elif self.latent_channels != self.in_channels * self.factor**2:
                problems.append(
                    f"a pixel autoencoder with factor {self.factor} has {self.in_channels * self.factor**2} "
                    f"latent channels, got {self.latent_channels}"
                )
            if self.in_channels != self.out_channels:
                problems.append("a pixel autoencoder needs in_channels == out_channels")
        if self.scaling_factor == 0:
            problems.append("scaling_factor must not be 0")
        if problems:
            raise BadInputError("invalid VAE config: " + "; ".join(problems))

    @property
    def spatial_factor(self) -> int:
        return self.factor

    @classmethod
    def pixel(cls, factor: int, channels: int = 3, scaling_factor: float = 1.0) -> VAEConfig:
        return cls(
            kind="pixel",
            in_channels=channels,
            out_channels=channels,
            block_out_channels=(),
            latent_channels=channels * factor**2,
            scaling_factor=scaling_factor,
            shift_factor=0.0,
            factor=factor,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VAEConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise BadInputError(f"unknown VAE config keys: {', '.join(unknown)}")
        return cls(**dict(d))

    @classmethod
    def from_official(
        cls,
        args: Mapping[str, Any],
        scaling_factor: float = RELEASE_SCALING_FACTOR,
        shift_factor: float = RELEASE_SHIFT_FACTOR,
    ) -> VAEConfig:
        """From the release's `VideoAutoencoderKLWrapper` constructor arguments (its VAE YAML)."""
        bad = []
        for key in ("use_quant_conv", "use_post_quant_conv"):
            if args.get(key, False):
                bad.append(f"{key}=True")
        for key in ("down_block_types", "up_block_types"):
            kinds = set(args.get(key, ()))
            if kinds - {"DownEncoderBlock3D", "UpDecoderBlock3D", "DownEncoderBlock2D", "UpDecoderBlock2D"}:
                bad.append(f"{key}={sorted(kinds)}")
        if bad:
            raise BadInputError("unsupported VAE configuration: " + ", ".join(bad))
        blocks = tuple(int(c) for c in args.get("block_out_channels", (128, 256, 512, 512)))
        return cls(
            kind="kl",
            in_channels=int(args.get("in_channels", 3)),
            out_channels=int(args.get("out_channels", 3)),
            block_out_channels=blocks,
            layers_per_block=int(args.get("layers_per_block", 2)),
            latent_channels=int(args.get("latent_channels", 16)),
            norm_num_groups=int(args.get("norm_num_groups", 32)),
            act_fn=str(args.get("act_fn", "silu")),
            mid_block_attention=bool(args.get("mid_block_add_attention", True)),
            scaling_factor=float(scaling_factor),
            shift_factor=float(shift_factor or 0.0),
            factor=2 ** (len(blocks) - 1),
        )

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], norm_num_groups: int = 32) -> VAEConfig:
        """Derive a KL config from key names and shapes (released or converted). GroupNorm's group count is not
        visible in the weights: it is `norm_num_groups` (32 in the release)."""

        def shape(key: str) -> tuple[int, ...]:
            if key not in sd:
                raise BadInputError(f"not a VINCIE VAE state_dict: key {key!r} is missing")
            return tuple(sd[key].shape)

        blocks = []
        while f"encoder.down_blocks.{len(blocks)}.resnets.0.conv1.weight" in sd:
            blocks.append(shape(f"encoder.down_blocks.{len(blocks)}.resnets.0.conv1.weight")[0])
        if not blocks:
            raise BadInputError(
                "not a VINCIE VAE state_dict: key 'encoder.down_blocks.0.resnets.0.conv1.weight' is missing"
            )
        layers = 0
        while f"encoder.down_blocks.0.resnets.{layers}.conv1.weight" in sd:
            layers += 1
        enc_out = shape("encoder.conv_out.weight")[0]
        latent = shape("decoder.conv_in.weight")[1]
        if enc_out != 2 * latent:
            raise BadInputError(f"encoder.conv_out.weight has {enc_out} rows, expected 2 x {latent} latent channels")
        return cls(
            kind="kl",
            in_channels=shape("encoder.conv_in.weight")[1],
            out_channels=shape("decoder.conv_out.weight")[0],
            block_out_channels=tuple(blocks),
            layers_per_block=layers,
            latent_channels=latent,
            norm_num_groups=norm_num_groups,
            mid_block_attention="encoder.mid_block.attentions.0.group_norm.weight" in sd,
            factor=2 ** (len(blocks) - 1),
        )


# --------------------------------------------------------------------------------------------
# modules


class PixelShuffleUpsample(nn.Module):
    """The release's decoder upsampler for a single frame: 1x1 conv C -> 4C, depth-to-space, 3x3 conv.

    Output channel (x * 2 + y) * C + c of `upscale_conv` goes to pixel (2i + x, 2j + y) of channel c.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.upscale_conv = nn.Conv2d(channels, 4 * channels, kernel_size=1)
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        b, c, h, w = x.shape
        y = self.upscale_conv(x).reshape(b, 2, 2, c, h, w)
        y = y.permute(0, 3, 4, 1, 5, 2).reshape(b, c, 2 * h, 2 * w)
        return self.conv(y)


class _AutoencoderBase(nn.Module):
    config: VAEConfig

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_factor

    def _check_images(self, images: Tensor) -> None:
        f = self.spatial_factor
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise BadInputError(f"images must be (B, {self.config.in_channels}, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % f or w % f or h < f or w < f:
            raise BadInputError(f"image size {h}x{w} is not a positive multiple of the autoencoder factor {f}")

    def _check_latents(self, latents: Tensor) -> None:
        if latents.ndim != 4 or latents.shape[-1] != self.latent_channels:
            raise BadInputError(f"latents must be (B, h, w, {self.latent_channels}), got {tuple(latents.shape)}")

    def encode(self, images: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latents (B, H/f, W/f, C), channels-last, in the model dtype."""
        mean, logvar = self.encode_moments(images)
        z = mean
        if sample:
            if generator is None:
                raise ValueError("sampling the posterior needs an explicit torch.Generator (generator=...)")
            noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=torch.float32)
            z = mean + torch.exp(0.5 * logvar) * noise.to(device=mean.device, dtype=mean.dtype)
        z = (z - self.config.shift_factor) * self.config.scaling_factor
        return z.permute(0, 2, 3, 1).contiguous()

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled channels-last latents (B, h, w, C) -> images (B, 3, h*f, w*f), roughly in [-1, 1]."""
        self._check_latents(latents)
        z = latents.permute(0, 3, 1, 2) / self.config.scaling_factor + self.config.shift_factor
        return self.decode_raw(z.contiguous())

    def encode_moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def decode_raw(self, z: Tensor) -> Tensor:
        raise NotImplementedError


class VincieVAE(_AutoencoderBase):
    """The released VAE for single images: diffusers' AutoencoderKL encoder and decoder (no quant convs), with
    `PixelShuffleUpsample` in place of each decoder upsampler. State-dict keys are `encoder.*` / `decoder.*`."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        from diffusers.models.autoencoders.vae import Decoder, Encoder

        if config.kind != "kl":
            raise BadInputError(f"VincieVAE needs a 'kl' config, got kind {config.kind!r}")
        self.config = config
        n = len(config.block_out_channels)
        self.encoder = Encoder(
            in_channels=config.in_channels,
            out_channels=config.latent_channels,
            down_block_types=("DownEncoderBlock2D",) * n,
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            act_fn=config.act_fn,
            double_z=True,
            mid_block_add_attention=config.mid_block_attention,
        )
        self.decoder = Decoder(
            in_channels=config.latent_channels,
            out_channels=config.out_channels,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            act_fn=config.act_fn,
            mid_block_add_attention=config.mid_block_attention,
        )
        for block in self.decoder.up_blocks:
            if block.upsamplers is not None:
                channels = block.upsamplers[0].channels
                block.upsamplers[0] = PixelShuffleUpsample(channels)

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    def encode_moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) -> posterior (mean, logvar), each (B, C, H/8, W/8), unscaled; logvar clamped."""
        self._check_images(images)
        h = self.encoder(images.to(device=self.device, dtype=self.dtype))
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode_raw(self, z: Tensor) -> Tensor:
        """Unscaled latents (B, C, h, w) -> images (B, 3, 8h, 8w)."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise BadInputError(f"latents must be (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        return self.decoder(z.to(device=self.device, dtype=self.dtype))


class PixelAE(_AutoencoderBase):
    """Lossless "pixel space" autoencoder: space-to-depth by `factor`, no weights.

    Latent channel (dy * f + dx) * 3 + c holds pixel (f*i + dy, f*j + dx) of colour c. `encode` is exact and
    deterministic (the posterior is a point mass; logvar reads as the clamp floor -30), `decode` inverts it.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        if config.kind != "pixel":
            raise BadInputError(f"PixelAE needs a 'pixel' config, got kind {config.kind!r}")
        self.config = config
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # carries device and dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    def encode_moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        self._check_images(images)
        f = self.spatial_factor
        x = images.to(device=self.device, dtype=self.dtype)
        b, c, h, w = x.shape
        mean = x.reshape(b, c, h // f, f, w // f, f).permute(0, 3, 5, 1, 2, 4).reshape(b, f * f * c, h // f, w // f)
        return mean, torch.full_like(mean, LOGVAR_RANGE[0])

    def encode(self, images: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        mean, _ = self.encode_moments(images)  # exact: sampling would only add exp(-15)-sized noise
        z = (mean - self.config.shift_factor) * self.config.scaling_factor
        return z.permute(0, 2, 3, 1).contiguous()

    def decode_raw(self, z: Tensor) -> Tensor:
        f, c = self.spatial_factor, self.config.out_channels
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise BadInputError(f"latents must be (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        z = z.to(device=self.device, dtype=self.dtype)
        b, _, h, w = z.shape
        return z.reshape(b, f, f, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, c, h * f, w * f)


Autoencoder = VincieVAE | PixelAE


def build_vae(config: VAEConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Autoencoder:
    """Build the autoencoder for `config` on `device` ("meta" allocates nothing) in `dtype`."""
    with torch.device(device):
        model = VincieVAE(config) if config.kind == "kl" else PixelAE(config)
    return model.to(dtype=dtype)


# --------------------------------------------------------------------------------------------
# released state_dict -> this module


def convert_vae_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Released 5-D `vae.pth` state_dict -> `VincieVAE` state_dict (fp32 where summed).

    - every 5-D conv weight W (out, in, kt, kh, kw) becomes W.sum(dim=2) (causal padding of a single frame
      repeats it, so the temporal taps add up);
    - old attention names `query/key/value/proj_attn` become `to_q/to_k/to_v/to_out.0` (conv-shaped
      (C, C, 1, 1) weights are flattened to (C, C));
    - each decoder `upscale_conv` (C * 4 * z_r output channels in (x, y, z, c) order) keeps the 4C rows of
      z = 0, the only temporal slot a single frame keeps.
    Idempotent: an already converted state_dict comes back unchanged. Works on meta tensors (shapes only).
    """
    return dict(convert_vae_tensor(key, sd) for key in sd)


def convert_vae_tensor(key: str, sd: Mapping[str, Tensor]) -> tuple[str, Tensor]:
    """One entry of `convert_vae_state_dict`: (new name, converted tensor) for `sd[key]`."""
    value = sd[key]
    parts = key.split(".")
    if len(parts) >= 3 and parts[-3] == "0" and "attentions" in parts and parts[-2] in _OLD_ATTENTION_NAMES:
        parts[-2] = _OLD_ATTENTION_NAMES[parts[-2]]
        if value.ndim > 2:
            value = value.reshape(value.shape[0], -1)
    name = ".".join(parts)
    if value.ndim == 5:
        value = value.float().sum(dim=2)
    if name.endswith(("upscale_conv.weight", "upscale_conv.bias")):
        weight_key = key[: key.rindex(".")] + ".weight"
        if weight_key not in sd:
            raise BadInputError(f"{key}: no matching {weight_key}")
        rows, c = sd[weight_key].shape[0], sd[weight_key].shape[1]
        if rows % (4 * c):
            raise BadInputError(f"{weight_key}: {rows} output channels is not a multiple of 4 x {c} input channels")
        z_r = rows // (4 * c)
        idx = torch.tensor([(xy * z_r) * c + ch for xy in range(4) for ch in range(c)], device=value.device)
        value = value.index_select(0, idx)
    return name, value


def _name_list(names: list[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def check_vae_state_dict(model: nn.Module, sd: Mapping[str, Tensor], source: str = "VAE weights") -> None:
    """Raise BadInputError naming missing, unexpected and mis-shaped keys (sd already converted)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [
        f"{k} {list(sd[k].shape)} (model {list(expected[k].shape)})"
        for k in sd
        if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + _name_list(missing))
    if unexpected:
        problems.append("unexpected keys: " + _name_list(unexpected))
    if misshaped:
        problems.append("mis-shaped keys: " + _name_list(misshaped))
    if problems:
        raise BadInputError(f"{source} do not fit the VAE: " + "; ".join(problems))


def load_vae_weights(model: Autoencoder, sd: Mapping[str, Tensor], source: str = "VAE weights") -> None:
    """Convert (if released) and load strictly; tensors are cast to the model's dtype (assign on meta)."""
    if isinstance(model, PixelAE):
        if sd:
            raise BadInputError(f"{source}: a pixel autoencoder has no weights, got {len(sd)} tensors")
        return
    sd = convert_vae_state_dict(sd)
    check_vae_state_dict(model, sd, source)
    dtype = model.dtype
    on_meta = model.device.type == "meta"
    sd = {k: v.to(dtype=dtype) if v.is_floating_point() else v for k, v in sd.items()}
    if on_meta:
        model.load_state_dict(sd, strict=True, assign=True)
    else:
        model.load_state_dict(sd, strict=True)
