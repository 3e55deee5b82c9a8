import dataclasses
import math

import numpy as np
import pytest

from tests.synth.helpers import obj, replace_obj, scene
from vincie_cli.synth.render import render_state
from vincie_cli.synth.scorer import (
    TurnJudge,
    connected_components,
    detect_objects,
    mask_iou,
    min_object_area,
    psnr,
    ssim,
)
from vincie_cli.synth.world import Background

PREV = scene(
    obj("obj1", "circle", "red", "medium", 0.3, 0.3),
    obj("obj2", "square", "blue", "medium", 0.72, 0.3, outline="black"),
    obj("obj3", "triangle", "green", "large", 0.5, 0.7, pattern="striped"),
)
SIZES = [(64, 64), (256, 256)]


def run(size, new, kind, ids, produced_state=None, produced_img=None, prev=PREV):
    judge = TurnJudge(size)
    prev_img = render_state(prev, size)
    expected = render_state(new, size)
    if produced_img is None:
        produced_img = render_state(produced_state if produced_state is not None else new, size)
    ok, decisions, extra, bg_ok, _, _ = judge.turn(
        prev, new, {"kind": kind, "objects": ids}, prev_img, produced_img, expected
    )
    return ok, {d.id: d for d in decisions}, extra, bg_ok


@pytest.mark.parametrize("size", SIZES)
def test_move_decisions(size):
    new = replace_obj(PREV, "obj1", position=(0.3, 0.62))  # down by 0.32
    ok, dec, extra, bg = run(size, new, "move", ["obj1"])
    assert ok and not extra and bg
    assert dec["obj1"].role == "edited" and dec["obj1"].position_error == 0 and dec["obj1"].size_ratio == 1
    assert dec["obj2"].role == "kept" and dec["obj2"].ok
    # not moved at all
    ok, dec, _, _ = run(size, new, "move", ["obj1"], produced_state=PREV)
    assert not ok and not dec["obj1"].ok and "direction" in dec["obj1"].reason
    assert dec["obj1"].position_error == pytest.approx(0.32, abs=0.02)
    # moved the wrong way
    ok, dec, _, _ = run(size, new, "move", ["obj1"], produced_state=replace_obj(PREV, "obj1", position=(0.6, 0.3)))
    assert not ok and "direction" in dec["obj1"].reason
    # the right way, a bit shorter: fine (an instruction does not say exactly how far)
    ok, dec, _, _ = run(size, new, "move", ["obj1"], produced_state=replace_obj(PREV, "obj1", position=(0.32, 0.55)))
    assert ok, dec["obj1"]
    # the right way, far too little
    ok, dec, _, _ = run(size, new, "move", ["obj1"], produced_state=replace_obj(PREV, "obj1", position=(0.3, 0.36)))
    assert not ok and "distance" in dec["obj1"].reason
    # the right move, but another object moved too
    also = replace_obj(new, "obj2", position=(0.72, 0.45))
    ok, dec, _, _ = run(size, new, "move", ["obj1"], produced_state=also)
    assert not ok and dec["obj1"].ok and not dec["obj2"].ok and dec["obj2"].reason == "wrong pos"
    assert dec["obj2"].position_error == pytest.approx(0.15, abs=0.02)


@pytest.mark.parametrize("size", SIZES)
def test_add_remove_recolour_decisions(size):
    star = obj("obj4", "star", "pink", "small", 0.8, 0.8, z=5)
    added = dataclasses.replace(PREV, objects=PREV.objects + (star,))
    assert run(size, added, "add", ["obj4"])[0]
    ok, dec, _, _ = run(size, added, "add", ["obj4"], produced_state=PREV)
    assert not ok and dec["obj4"].role == "added" and not dec["obj4"].found
    near = dataclasses.replace(PREV, objects=PREV.objects + (dataclasses.replace(star, position=(0.75, 0.84)),))
    assert run(size, added, "add", ["obj4"], produced_state=near)[0]
    far = dataclasses.replace(PREV, objects=PREV.objects + (dataclasses.replace(star, position=(0.2, 0.85)),))
    ok, dec, _, _ = run(size, added, "add", ["obj4"], produced_state=far)
    assert not ok and "pos" in dec["obj4"].reason
    big = dataclasses.replace(PREV, objects=PREV.objects + (obj("obj4", "star", "pink", "large", 0.8, 0.8),))
    ok, dec, _, _ = run(size, added, "add", ["obj4"], produced_state=big)
    assert not ok and "size" in dec["obj4"].reason and dec["obj4"].size_ratio > 2
    yellow = dataclasses.replace(PREV, objects=PREV.objects + (obj("obj4", "star", "yellow", "small", 0.8, 0.8),))
    ok, dec, extra, _ = run(size, added, "add", ["obj4"], produced_state=yellow)
    assert not ok and extra == ["yellow"] and not dec["obj4"].found

    removed = dataclasses.replace(PREV, objects=PREV.objects[1:])
    assert run(size, removed, "remove", ["obj1"])[0]
    ok, dec, _, _ = run(size, removed, "remove", ["obj1"], produced_state=PREV)
    assert not ok and dec["obj1"].role == "removed" and dec["obj1"].found and dec["obj1"].reason == "still there"

    recoloured = replace_obj(PREV, "obj3", colour="yellow")
    assert run(size, recoloured, "recolour", ["obj3"])[0]
    ok, dec, extra, _ = run(size, recoloured, "recolour", ["obj3"], produced_state=PREV)
    assert not ok and extra == ["green"] and not dec["obj3"].found
    ok, dec, extra, _ = run(
        size, recoloured, "recolour", ["obj3"], produced_state=replace_obj(PREV, "obj3", colour="purple")
    )
    assert not ok and extra == ["purple"]


@pytest.mark.parametrize("size", SIZES)
def test_resize_rotate_background_decisions(size):
    bigger = replace_obj(PREV, "obj1", size="large")
    assert run(size, bigger, "resize", ["obj1"])[0]
    ok, dec, _, _ = run(size, bigger, "resize", ["obj1"], produced_state=PREV)
    assert not ok and "resize" in dec["obj1"].reason
    ok, dec, _, _ = run(size, bigger, "resize", ["obj1"], produced_state=replace_obj(PREV, "obj1", size="small"))
    assert not ok and "resize" in dec["obj1"].reason

    rotated = replace_obj(PREV, "obj2", rotation=45.0)
    ok, dec, _, _ = run(size, rotated, "rotate", ["obj2"])
    assert ok and dec["obj2"].detected_shape == "square" and dec["obj2"].detected_rotation == pytest.approx(45.0, abs=8)
    ok, dec, _, _ = run(size, rotated, "rotate", ["obj2"], produced_state=PREV)
    assert not ok and dec["obj2"].reason == "wrong shape"

    new_bg = dataclasses.replace(PREV, background=Background("solid", "white"))
    ok, dec, extra, bg_ok = run(size, new_bg, "background", [])
    assert ok and bg_ok
    ok, dec, extra, bg_ok = run(size, new_bg, "background", [], produced_state=PREV)
    assert not ok and not bg_ok and all(d.ok for d in dec.values()) and not extra


def test_shape_change_duplicates_and_noise():
    size = (256, 256)
    squashed = replace_obj(PREV, "obj1", shape="square")
    ok, dec, _, _ = run(size, PREV, "none", [], produced_state=squashed)
    assert not ok and dec["obj1"].reason == "wrong shape" and dec["obj1"].detected_shape == "square"
    twin = dataclasses.replace(PREV, objects=PREV.objects + (obj("obj9", "circle", "red", "medium", 0.8, 0.75),))
    ok, _, extra, _ = run(size, PREV, "none", [], produced_state=twin)
    assert not ok and extra == ["red"]
    # mild noise (like a decoder or a good model) does not change any decision
    rng = np.random.default_rng(0)
    noisy = np.clip(render_state(PREV, size) + rng.normal(0, 4, (256, 256, 3)), 0, 255).astype(np.uint8)
    ok, dec, extra, bg = run(size, PREV, "none", [], produced_img=noisy)
    assert ok, [d.reason for d in dec.values()]


def test_detection_measures_objects():
    size = (256, 256)
    found = detect_objects(render_state(PREV, size), min_object_area(size))
    assert set(found) == {"red", "blue", "green"}
    red = found["red"][0]
    assert red.centroid == pytest.approx((0.3 * 256, 0.3 * 256), abs=0.5)
    assert red.area == pytest.approx(math.pi * (0.11 * 256) ** 2, rel=0.02)
    assert not detect_objects(np.full((64, 64, 3), 128, np.uint8), 5)


def test_connected_components():
    m = np.zeros((12, 12), bool)
    m[1:3, 1:3] = True  # blob 1
    m[3, 3] = True  # touches blob 1 only diagonally: separate under 4-connectivity
    # a spiral, which needs many propagation steps
    m[5, 2:11] = True
    m[5:11, 10] = True
    m[10, 4:11] = True
    m[7:11, 4] = True
    m[7, 4:8] = True
    lab, n = connected_components(m)
    assert n == 3
    assert len(np.unique(lab[5:11, :][m[5:11, :]])) == 1
    assert lab[3, 3] != lab[1, 1] and (lab > 0).sum() == m.sum()
    assert connected_components(np.zeros((4, 4), bool))[1] == 0


def test_image_metrics():
    a = np.zeros((32, 32, 3), np.uint8)
    assert psnr(a, a) == 100.0 and ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, a + 10) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)
    img = render_state(PREV, (64, 64))
    rng = np.random.default_rng(1)
    noisy = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    assert 0.0 < ssim(img, noisy) < 0.9
    assert ssim(img, noisy) < ssim(img, np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8))
    x = np.zeros((8, 8), bool)
    y = x.copy()
    x[:4] = True
    y[2:6] = True
    assert mask_iou(x, y) == pytest.approx(1 / 3)
    assert mask_iou(None, None) == 1.0 and mask_iou(None, y) == 0.0 and mask_iou(np.zeros((8, 8), bool), None) == 1.0
