"""Image loading (formats, EXIF, bad files), the preprocessing chain and the output conversion."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vincie_cli.model.images import (
    area_size,
    aspect_crop,
    center_crop,
    load_image,
    postprocess,
    preprocess,
    resize_like_first,
)
from vincie_cli.utils.io import BadInputError, UsageError


def _quadrants(w: int = 40, h: int = 20) -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, white bottom-right."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 255)
    return Image.fromarray(a)


# ---------------------------------------------------------------------------------------------- loading


def test_bad_files_give_clear_errors(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    with pytest.raises(BadInputError, match=r"notes\.png: not an image file"):
        load_image(text)

    good = tmp_path / "good.png"
    _quadrants(200, 200).save(good)
    data = good.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match=r"cut\.png: truncated or corrupt image"):
        load_image(cut)

    with pytest.raises(BadInputError, match=r"missing\.png: no such image file"):
        load_image(tmp_path / "missing.png")

    with pytest.raises(BadInputError, match=r"good\.png: image is 200x200 = 40000 pixels, more than the limit 1000"):
        load_image(good, max_pixels=1000)


def test_too_small_image_is_refused():
    thin = Image.new("RGB", (4000, 10), (10, 20, 30))
    with pytest.raises(BadInputError, match=r"image too small: thin\.png is 4000x10 px; .* it is 5120x13 px; need at"):
        preprocess(thin, name="thin.png")
    with pytest.raises(BadInputError, match="more than the limit"):
        preprocess(thin, max_pixels=100)


def test_exif_orientation_is_applied(tmp_path):
    img = _quadrants(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    img.save(path, quality=98, exif=exif.tobytes())
    out = np.asarray(load_image(path)).astype(int)
    assert out.shape == (40, 20, 3)
    # stored top-left (red) ends up top-right, stored bottom-left (blue) top-left
    assert np.abs(out[5, 15] - (255, 0, 0)).max() < 40
    assert np.abs(out[5, 5] - (0, 0, 255)).max() < 40
    assert np.abs(out[35, 5] - (255, 255, 255)).max() < 40


def test_cmyk_and_16bit_and_palette_and_alpha(tmp_path):
    cmyk = tmp_path / "cmyk.tiff"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk)  # pure red in CMYK
    assert load_image(cmyk).getpixel((3, 3)) == (255, 0, 0)

    grey16 = tmp_path / "grey16.png"
    a = np.full((6, 6), 65535, np.uint16)
    a[0, 0] = 32896  # = 128 * 257
    Image.fromarray(a).save(grey16)
    img = load_image(grey16)
    assert img.mode == "RGB" and img.getpixel((3, 3)) == (255, 255, 255) and img.getpixel((0, 0)) == (128, 128, 128)

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.info["transparency"] = 0
    pal_path = tmp_path / "pal.png"
    pal.save(pal_path, transparency=0)
    img = load_image(pal_path)
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((2, 2)) == (200, 10, 10)

    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(0, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 128)])
    rgba_path = tmp_path / "rgba.png"
    rgba.save(rgba_path)
    img = load_image(rgba_path)
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 0)) == (0, 0, 0)
    assert all(abs(c - 127) <= 1 for c in img.getpixel((2, 0)))

    la_path = tmp_path / "la.png"
    Image.new("LA", (2, 2), (50, 0)).save(la_path)
    assert load_image(la_path).getpixel((1, 1)) == (255, 255, 255)


# ---------------------------------------------------------------------------------------------- preprocessing


def test_preprocess_sizes_and_range():
    img = _quadrants(230, 338)
    x = preprocess(img)
    assert x.shape == (3, 304, 208) and x.dtype == torch.float32  # the release's example sizes
    assert -1.3 < x.min() < -0.9 and 0.9 < x.max() < 1.3  # bicubic overshoot is kept (no clamp)
    square = preprocess(Image.new("RGB", (367, 368), (255, 0, 0)))
    assert square.shape == (3, 256, 256)
    torch.testing.assert_close(square[0], torch.ones(256, 256))
    torch.testing.assert_close(square[1], -torch.ones(256, 256))
    small = preprocess(Image.new("RGB", (50, 40)))  # small images are upsampled to the target area
    assert small.shape[1] * small.shape[2] > 0.8 * 256 * 256


def test_area_size_rounds_half_to_even():
    assert area_size(338, 230, 256) == (310, 211)
    assert area_size(100, 100, 50) == (50, 50)


def test_center_crop_ties_round_to_even():
    x = torch.arange(21.0)[None, :, None].expand(1, 21, 1)
    assert center_crop(x, 16, 1)[0, 0, 0] == 2  # (21-16)/2 = 2.5 -> 2
    y = torch.arange(23.0)[None, :, None].expand(1, 23, 1)
    assert center_crop(y, 16, 1)[0, 0, 0] == 4  # 3.5 -> 4


def test_aspect_crop_modes():
    x = torch.zeros(3, 200, 300)
    assert aspect_crop(x, "keep_ratio").shape == (3, 200, 300)
    assert aspect_crop(x, "1:1").shape == (3, 200, 200)
    assert aspect_crop(x, "16:9").shape == (3, 169, 300)  # rows int(15.625)..int(184.375)
    assert aspect_crop(x, "adaptive").shape == (3, 169, 300)  # 16:9 keeps the most area here
    assert aspect_crop(torch.zeros(3, 300, 300), "adaptive").shape == (3, 300, 300)  # 1:1 wins
    with pytest.raises(UsageError, match="aspect must be"):
        aspect_crop(x, "5:4")
    out = preprocess(_quadrants(300, 200), aspect="9:16")
    assert out.shape[1] > out.shape[2]


def test_resize_like_first_uses_pil_bicubic():
    img = _quadrants(64, 48)
    out = resize_like_first(img, (40, 30))
    assert out.size == (40, 30)
    assert np.array_equal(np.asarray(out), np.asarray(img.resize((40, 30), Image.Resampling.BICUBIC)))
    assert resize_like_first(img, (64, 48)).tobytes() == img.tobytes()


# ---------------------------------------------------------------------------------------------- output


def test_postprocess_bf16_truncation_golden_values():
    values = torch.tensor([-1.5, -1.0, -0.984, 0.0, 0.6, 1.0, 1.5])
    img = values.reshape(1, 1, -1).expand(3, 1, -1).contiguous()
    bf16 = postprocess(img)
    fp32 = postprocess(img, dtype=torch.float32)
    assert bf16.dtype == np.uint8 and bf16.shape == (1, 7, 3)
    assert bf16[0, :, 0].tolist() == [0, 0, 1, 127, 204, 255, 255]
    assert fp32[0, :, 0].tolist() == [0, 0, 2, 127, 204, 255, 255]
    with pytest.raises(BadInputError, match="expected a"):
        postprocess(torch.zeros(4, 2, 2))


def test_png_roundtrip_of_output(tmp_path):
    x = preprocess(_quadrants(64, 64), resolution=64)
    arr = postprocess(x)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(back, arr)
