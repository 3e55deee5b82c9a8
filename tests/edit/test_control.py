"""Change masks: drag transforms (exact pixels), mask files (both accepted sizes, alpha, wrong size)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vincie_cli.edit.control import binarize, drag_mask, load_mask, mask_image, mask_png
from vincie_cli.edit.settings import Drag
from vincie_cli.utils.io import BadInputError


def _box(h=20, w=30, top=4, left=6, bh=5, bw=8):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[top : top + bh, left : left + bw] = True
    return m


def test_drag_translates_exactly():
    m = _box()
    out = drag_mask(m, Drag(5, 3))
    assert torch.equal(out, _box(top=7, left=11))
    assert torch.equal(drag_mask(m, Drag(0, 0)), m)


def test_drag_off_the_frame_clips():
    out = drag_mask(_box(), Drag(25, 0))  # box columns 31..38 fall outside a 30-wide frame
    assert out.sum() == 0
    out = drag_mask(_box(), Drag(20, 0))  # columns 26..33: 4 of 8 columns stay
    assert out.sum() == 5 * 4 and out[4:9, 26:].all()


def test_drag_scales_and_rotates_about_the_centroid():
    m = _box(h=40, w=40, top=16, left=14, bh=8, bw=12)  # centroid (19.5, 19.5)
    big = drag_mask(m, Drag(0, 0, 2.0))
    ys, xs = torch.nonzero(big, as_tuple=True)
    assert abs(ys.float().mean() - 19.5) < 0.6 and abs(xs.float().mean() - 19.5) < 0.6
    assert 3.5 < big.sum() / m.sum() < 4.5  # area scales by SCALE²
    rot = drag_mask(m, Drag(0, 0, 1.0, 90))  # a wide box becomes a tall one
    ys, xs = torch.nonzero(rot, as_tuple=True)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (12, 8)
    # counter-clockwise on screen: a marker right of the centre moves above it
    marker = torch.zeros(40, 40, dtype=torch.bool)
    marker[19:21, 19:21] = True
    marker[19:21, 30] = True
    turned = drag_mask(marker, Drag(0, 0, 1.0, 90))
    ys, xs = torch.nonzero(turned, as_tuple=True)
    far = ys < 16  # the marker, 7 px right of the centroid (19.5, 23), lands 7 px above it, not below
    assert far.sum() == 2 * 2 and set(xs[far].tolist()) <= {23, 24} and ys.max() < 25


def test_drag_of_an_empty_mask_is_a_clear_error():
    with pytest.raises(BadInputError, match="predicted current mask is empty"):
        drag_mask(torch.zeros(8, 8, dtype=torch.bool), Drag(1, 1))


def test_mask_image_and_png_round_trip():
    m = _box()
    x = mask_image(m)
    assert x.shape == (3, 20, 30) and set(x.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(binarize(x), m)
    png = mask_png(m)
    assert png.shape == (20, 30, 3) and png.dtype == np.uint8 and png[5, 7].tolist() == [255, 255, 255]


def test_load_mask_accepts_frame_and_original_sizes(tmp_path):
    a = np.zeros((48, 64), np.uint8)
    a[10:30, 20:40] = 255
    Image.fromarray(a).save(tmp_path / "orig.png")
    Image.fromarray(a[:48, :64]).resize((32, 24), Image.Resampling.NEAREST).save(tmp_path / "frame.png")
    m = load_mask(tmp_path / "frame.png", frame_size=(32, 24), original_size=(64, 48), resolution=32)
    assert m.shape == (24, 32) and m[5:15, 10:20].all() and not m[0].any()
    # the original size goes through the first image's chain: 64x48 at area 32² -> 37x28 -> crop 32x16
    m2 = load_mask(tmp_path / "orig.png", frame_size=(32, 16), original_size=(64, 48), resolution=32)
    assert m2.shape == (16, 32) and m2[0:10, 11:20].all() and not m2[:, :9].any() and not m2[13:].any()
    with pytest.raises(BadInputError, match=r"mask is 64x48 px; expected 32x32 .* or 100x80"):
        load_mask(tmp_path / "orig.png", frame_size=(32, 32), original_size=(100, 80), resolution=32)


def test_load_mask_transparent_areas_are_black(tmp_path):
    a = np.zeros((24, 32, 4), np.uint8)
    a[..., :3] = 255
    a[:12, :, 3] = 255  # top half opaque white, bottom half transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "alpha.png")
    m = load_mask(tmp_path / "alpha.png", frame_size=(32, 24), original_size=(64, 48), resolution=32)
    assert m[:12].all() and not m[12:].any()
