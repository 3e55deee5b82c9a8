"""Autoencoders: the released-VAE converter, the pixel-shuffle upsampler, PixelAE, strict loading, interface."""

from __future__ import annotations

import pytest
import torch

from tests.model.fake_release import inflate_vae_state_dict
from vincie_cli.model.vae import (
    PixelAE,
    PixelShuffleUpsample,
    VAEConfig,
    build_vae,
    check_vae_state_dict,
    convert_vae_state_dict,
    load_vae_weights,
)
from vincie_cli.utils.io import BadInputError

SMALL = VAEConfig(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)


def _random_vae(config=SMALL, seed=0):
    torch.manual_seed(seed)
    vae = build_vae(config).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    return vae


def test_pixel_shuffle_layout():
    """Output pixel (2i + x, 2j + y) of channel c comes from upscale row (x * 2 + y) * C + c."""
    c = 3
    up = PixelShuffleUpsample(c)
    with torch.no_grad():
        w = torch.zeros(4 * c, c, 1, 1)
        for xy in range(4):
            for ch in range(c):
                w[xy * c + ch, ch] = xy + 1
        up.upscale_conv.weight.copy_(w)
        up.upscale_conv.bias.zero_()
        up.conv.weight.zero_()
        up.conv.bias.zero_()
        for ch in range(c):
            up.conv.weight[ch, ch, 1, 1] = 1.0  # identity 3x3 conv
    x = torch.randn(2, c, 3, 4)
    y = up(x)
    assert y.shape == (2, c, 6, 8)
    for xx in range(2):
        for yy in range(2):
            assert torch.allclose(y[:, :, xx::2, yy::2], x * (xx * 2 + yy + 1))


def test_released_state_dict_converts_to_module(tmp_path):
    vae = _random_vae()
    sd = vae.state_dict()
    for old in (False, True):
        released = inflate_vae_state_dict(sd, old_attention_names=old)
        assert released["encoder.conv_in.weight"].ndim == 5
        assert released["decoder.up_blocks.0.upsamplers.0.upscale_conv.weight"].shape[0] == 8 * 16  # z_r = 2
        assert released["decoder.up_blocks.2.upsamplers.0.upscale_conv.weight"].shape[0] == 4 * 8  # z_r = 1
        assert any(".query." in k for k in released) == old
        conv = convert_vae_state_dict(released)
        assert set(conv) == set(sd)
        for k, v in sd.items():
            assert conv[k].shape == v.shape, k
            assert torch.allclose(conv[k].float(), v.float(), atol=1e-6), k
    # idempotent on an already converted state_dict
    again = convert_vae_state_dict(sd)
    assert all(torch.equal(again[k], v) for k, v in sd.items())


def test_loaded_release_vae_reproduces_the_original():
    vae = _random_vae()
    other = build_vae(SMALL).eval()
    load_vae_weights(other, inflate_vae_state_dict(vae.state_dict(), old_attention_names=True))
    x = torch.rand(1, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(other.encode(x), vae.encode(x), atol=1e-5)
        z = torch.randn(1, 4, 5, 16)
        assert torch.allclose(other.decode(z), vae.decode(z), atol=1e-5)


def test_strict_loading_names_keys():
    vae = _random_vae()
    sd = dict(vae.state_dict())
    sd.pop("decoder.conv_in.bias")
    sd["encoder.extra.weight"] = torch.zeros(1)
    sd["encoder.conv_out.weight"] = torch.zeros(32, 8, 3, 3)
    with pytest.raises(BadInputError) as e:
        check_vae_state_dict(build_vae(SMALL, device="meta"), sd, "vae.pth")
    msg = str(e.value)
    assert msg.startswith("vae.pth do not fit the VAE")
    assert "missing keys: decoder.conv_in.bias" in msg
    assert "unexpected keys: encoder.extra.weight" in msg
    assert "mis-shaped keys: encoder.conv_out.weight [32, 8, 3, 3] (model [32, 16, 3, 3])" in msg


def test_config_from_state_dict_and_meta_loading():
    vae = _random_vae()
    derived = VAEConfig.from_state_dict(vae.state_dict(), norm_num_groups=4)
    assert derived == SMALL
    assert VAEConfig.from_state_dict(inflate_vae_state_dict(vae.state_dict()), norm_num_groups=4) == SMALL
    with pytest.raises(BadInputError, match="norm_num_groups 32 does not divide"):
        VAEConfig.from_state_dict(vae.state_dict())
    meta = build_vae(SMALL, device="meta", dtype=torch.bfloat16)
    load_vae_weights(meta, vae.state_dict())
    assert meta.dtype == torch.bfloat16 and meta.device.type == "cpu"
    assert torch.equal(meta.encoder.conv_in.weight, vae.encoder.conv_in.weight.bfloat16())
    full = build_vae(VAEConfig(), device="meta")
    assert full.spatial_factor == 8 and full.latent_channels == 16


def test_kl_interface_mean_and_sampling():
    vae = _random_vae()
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        mean, logvar = vae.encode_moments(x)
        assert mean.shape == logvar.shape == (2, 16, 2, 3)
        assert logvar.min() >= -30 and logvar.max() <= 20
        lat = vae.encode(x)
        assert lat.shape == (2, 2, 3, 16)
        assert torch.allclose(lat, (mean * 0.9152).permute(0, 2, 3, 1))
        assert torch.equal(vae.encode(x), lat)  # the mean is deterministic
        with pytest.raises(ValueError, match="explicit torch.Generator"):
            vae.encode(x, sample=True)
        s1 = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        s2 = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        assert torch.equal(s1, s2) and not torch.allclose(s1, lat)
        expected_std = (torch.exp(0.5 * logvar) * 0.9152).permute(0, 2, 3, 1)
        assert ((s1 - lat).abs() <= expected_std * 6 + 1e-6).all()
        img = vae.decode(lat)
        assert img.shape == (2, 3, 16, 24)
        assert torch.allclose(img, vae.decode_raw(mean), atol=1e-5)
    with pytest.raises(BadInputError, match="not a positive multiple of the autoencoder factor 8"):
        vae.encode(torch.zeros(1, 3, 20, 16))
    with pytest.raises(BadInputError, match="latents must be"):
        vae.decode(torch.zeros(1, 2, 2, 4))


def test_pixel_autoencoder_is_lossless_with_documented_layout():
    cfg = VAEConfig.pixel(factor=4)
    assert cfg.latent_channels == 48
    ae = build_vae(cfg)
    assert isinstance(ae, PixelAE) and ae.spatial_factor == 4 and not list(ae.parameters())
    x = torch.rand(2, 3, 8, 12) * 2 - 1
    lat = ae.encode(x)
    assert lat.shape == (2, 2, 3, 48)
    # latent channel (dy * f + dx) * 3 + c holds pixel (4i + dy, 4j + dx) of colour c
    assert lat[1, 1, 2, (2 * 4 + 3) * 3 + 1] == x[1, 1, 4 + 2, 8 + 3]
    assert torch.equal(ae.decode(lat), x)
    mean, logvar = ae.encode_moments(x)
    assert torch.equal(mean.permute(0, 2, 3, 1), lat) and (logvar == -30).all()
    scaled = build_vae(VAEConfig.pixel(factor=2, scaling_factor=2.0))
    assert torch.equal(scaled.encode(x), build_vae(VAEConfig.pixel(factor=2)).encode(x) * 2)
    assert torch.allclose(scaled.decode(scaled.encode(x)), x)
    with pytest.raises(BadInputError, match="factor 4"):
        ae.encode(torch.zeros(1, 3, 10, 8))
    with pytest.raises(BadInputError, match="has no weights"):
        load_vae_weights(ae, {"x": torch.zeros(1)})
    with pytest.raises(BadInputError, match="48 latent channels"):
        VAEConfig(kind="pixel", factor=4, latent_channels=16, block_out_channels=())
