"""Input images: the reference chain for the first image, fitting later inputs without distortion, awkward
image files (CMYK, 16-bit, palette, RGBA, EXIF rotation) and size limits."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from tests.edit.conftest import make_image
from vincie_cli.edit.compose import prepare_inputs
from vincie_cli.edit.settings import EditSettings
from vincie_cli.model.images import load_image, preprocess, resize_like_first
from vincie_cli.utils.io import BadInputError

S = EditSettings(resolution=64)


def test_first_image_goes_through_the_reference_chain(tmp_path):
    p = make_image(tmp_path / "a.png", 90, 60)
    prep = prepare_inputs([p], S)
    assert torch.equal(prep.tensors[0], preprocess(load_image(p), 64))
    assert prep.original_size == (90, 60) and prep.frame_size == (64, 48)


@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
def test_later_inputs_take_the_first_frame(tmp_path, fit):
    first = make_image(tmp_path / "wide.png", 96, 64)
    tall = make_image(tmp_path / "tall.png", 30, 90, seed=1)
    prep = prepare_inputs([first, tall], S.updated(fit=fit))
    x = prep.tensors[1]
    assert x.shape == prep.tensors[0].shape
    left_band = x[:, :, :8]
    if fit == "pad":  # letterboxed: grey bands at the sides, the content keeps its aspect ratio
        assert torch.allclose(left_band, torch.zeros_like(left_band))
        content = (x.abs().sum(0) > 1e-6).any(0).nonzero().flatten()
        width, height = int(content.max() - content.min() + 1), x.shape[1]
        assert abs(width / height - 30 / 90) < 0.05
    elif fit == "crop":  # filled: no grey band, the middle of the tall image
        assert left_band.abs().sum() > 1.0
    else:  # the release: PIL-resized to the first image's size, then the same chain (distorted)
        ref = preprocess(resize_like_first(load_image(tall), (96, 64)), 64)
        assert torch.equal(x, ref)


def _save_modes(tmp_path):
    base = make_image(tmp_path / "rgb.png", 60, 40)
    img = Image.open(base)
    img.convert("CMYK").save(tmp_path / "cmyk.jpg")
    img.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    a16 = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "grey16.png")
    img.convert("L").save(tmp_path / "grey8.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    rgba = np.concatenate([np.asarray(img), np.full((40, 60, 1), 255, np.uint8)], -1)
    rgba[:, :20, 3] = 0  # the left third is fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "rotated.jpg", exif=exif)
    return base


def test_awkward_image_files_are_read_correctly(tmp_path):
    base = prepare_inputs([_save_modes(tmp_path)], S).tensors[0]
    for name, tol in (("cmyk.jpg", 0.1), ("palette.png", 0.05), ("alpha.png", 0.4)):
        prep = prepare_inputs([tmp_path / name], S)
        assert prep.frame_size == (64, 48), name
        assert (prep.tensors[0] - base).abs().mean() < tol, name  # the same picture, converted to RGB
    grey = prepare_inputs([tmp_path / "grey16.png"], S).tensors[0]
    grey8 = prepare_inputs([tmp_path / "grey8.png"], S).tensors[0]
    assert torch.equal(grey, grey8)  # 16-bit grey scaled to the same 8-bit values
    alpha = prepare_inputs([tmp_path / "alpha.png"], S).tensors[0]
    assert alpha[:, :, :18].mean() > 0.99  # transparent pixels composited on white
    rotated = prepare_inputs([tmp_path / "rotated.jpg"], S)
    assert rotated.original_size == (40, 60) and rotated.frame_size == (48, 64)  # EXIF orientation applied


def _png_header_only(path, width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    return path


def test_size_limits_and_unreadable_files(tmp_path):
    small = make_image(tmp_path / "small.png", 12, 40)
    with pytest.raises(BadInputError, match=r"small.png: image too small \(12x40 px\); need at least 16 px"):
        prepare_inputs([small], S)
    huge = _png_header_only(tmp_path / "huge.png", 9000, 9000)  # refused from the header, never decoded
    with pytest.raises(BadInputError, match=r"huge.png: image is 9000x9000 = 81000000 pixels, more than the limit"):
        prepare_inputs([huge], S)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(BadInputError, match="notes.txt: not an image file"):
        prepare_inputs([tmp_path / "notes.txt"], S)
    broken = tmp_path / "broken.png"
    broken.write_bytes((tmp_path / "small.png").read_bytes()[:60])
    with pytest.raises(BadInputError, match="broken.png: truncated or corrupt"):
        prepare_inputs([broken], S)
    with pytest.raises(BadInputError, match="missing.png: no such image file"):
        prepare_inputs([tmp_path / "missing.png"], S)
