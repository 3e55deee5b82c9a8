import dataclasses
import json

import numpy as np
import pytest
import torch

from vincie_cli.segment.grounded_sam2 import (
    GroundedSam2Backend,
    GroundedSam2Options,
    Sam2Preprocess,
    box_iou,
    cxcywh_to_xyxy,
    nms,
    sam2_postprocess,
    sam2_preprocess,
    sam2_scale_boxes,
)


def test_sam2_preprocess_documented_steps():
    """Resize to S x S (bilinear, align_corners=False), round to 8 bits, /255, ImageNet mean/std."""
    prep = Sam2Preprocess(size=4)
    img = np.zeros((2, 2, 3), np.uint8)
    img[:, 1] = 255  # columns: 0, 255
    px = sam2_preprocess([img], prep)
    assert px.shape == (1, 3, 4, 4) and px.dtype == torch.float32
    # upsampling 2 -> 4 samples the source at -0.25, 0.25, 0.75, 1.25 -> 0, 63.75, 191.25, 255 -> rounded
    levels = torch.tensor([0.0, 64.0, 191.0, 255.0]) / 255.0
    for c, (m, s) in enumerate(zip(prep.mean, prep.std)):
        torch.testing.assert_close(px[0, c], ((levels - m) / s).expand(4, 4), rtol=0, atol=1e-6)
    # a constant image is exactly normalised whatever the resize
    const = np.full((37, 53, 3), (10, 128, 250), np.uint8)
    px = sam2_preprocess([const], Sam2Preprocess(size=16))
    for c, v in enumerate((10, 128, 250)):
        torch.testing.assert_close(px[0, c], torch.full((16, 16), (v / 255 - prep.mean[c]) / prep.std[c]))


def test_sam2_preprocess_downscale_is_antialiased():
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, ::2] = 255  # one-pixel stripes: antialiased downscaling averages them to mid grey
    px = sam2_preprocess([img], Sam2Preprocess(size=8, mean=(0, 0, 0), std=(1, 1, 1)))
    inner = px[..., 1:-1]  # the filter is renormalised at the borders
    assert torch.allclose(inner, torch.full_like(inner, 127.5 / 255), atol=1 / 255)
    assert (px - 127.5 / 255).abs().max() < 6 / 255


def test_sam2_boxes_and_postprocess():
    boxes = np.array([[10, 20, 30, 40]], np.float32)
    np.testing.assert_allclose(sam2_scale_boxes(boxes, (80, 40), 128), [[32, 32, 96, 64]])
    logits = torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]])
    m = sam2_postprocess(logits, (4, 4))
    expected = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(m[0], expected)


def test_sam2_preprocess_config_from_checkpoint(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"size": {"height": 64, "width": 64}, "image_mean": [0.5] * 3, "image_std": [0.25] * 3})
    )
    prep = Sam2Preprocess.from_pretrained(tmp_path, 1024)
    assert (prep.size, prep.mean, prep.std) == (64, (0.5,) * 3, (0.25,) * 3)
    assert Sam2Preprocess.from_pretrained(tmp_path / "none", 512).size == 512


def test_box_utils():
    xyxy = cxcywh_to_xyxy(np.array([[0.5, 0.5, 0.5, 0.5], [0.9, 0.9, 0.4, 0.4]]), (100, 200))
    np.testing.assert_allclose(xyxy, [[50, 25, 150, 75], [140, 70, 200, 100]])
    a = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    assert box_iou(a[:1], a[1:2])[0, 0] == pytest.approx(81 / 100)
    assert nms(a, np.array([0.5, 0.9, 0.1]), 0.7) == [1, 2]
    assert nms(a, np.array([0.5, 0.9, 0.1]), 0.9) == [1, 0, 2]


def test_prompt_token_spans(tiny_backend):
    ids, spans = tiny_backend.build_prompt(["A red circle", "big dog."])
    tok = tiny_backend.tokenizer
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids[spans[0][0] : spans[0][1]] == tok("a red circle", add_special_tokens=False)["input_ids"]
    assert ids[spans[1][0] : spans[1][1]] == tok("big dog", add_special_tokens=False)["input_ids"]
    assert ids[spans[0][1]] == ids[spans[1][1]] == 1012  # "." ends every phrase (GroundingDINO's delimiter)
    # max_text_len is 16: a query that no longer fits gets an empty span instead of a truncated one
    ids, spans = tiny_backend.build_prompt(["a red circle"] * 5)
    assert len(ids) <= 16 and spans[-1] == (0, 0) and spans[0] != (0, 0)


def _images(n, seed=0, hw=(96, 128)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(n)]


def test_detect_and_segment_end_to_end(tiny_backend):
    imgs = _images(3) + [_images(1, 1, (64, 80))[0]]
    queries = [["a red circle"], ["big dog", "a blue square"], [], ["a star"]]
    res = tiny_backend(imgs, queries)
    assert len(res) == 4 and res[2] == []
    n = 0
    for img, q, dets in zip(imgs, queries, res):
        assert len(dets) <= len(q) * tiny_backend.options.max_per_query
        for d in dets:
            n += 1
            assert d.query in q
            h, w = img.shape[:2]
            assert 0 <= d.box[0] < d.box[2] <= w and 0 <= d.box[1] < d.box[3] <= h
            assert d.score > tiny_backend.options.text_threshold
            assert d.mask.dtype == bool and d.mask.shape == (h, w)
    assert n > 0, "random tiny weights give confident logits: something must be detected"


@pytest.fixture
def with_options(tiny_backend):
    """Run the shared tiny backend with other options (restored afterwards)."""
    saved = tiny_backend.options

    def use(**kw):
        tiny_backend.options = dataclasses.replace(saved, **kw)
        return tiny_backend

    yield use
    tiny_backend.options = saved


def test_batching_does_not_change_results(with_options):
    imgs = _images(4, seed=3)
    queries = [["a red circle"], ["a blue box"], ["a big cat"], ["a green star"]]
    a = with_options(batch_size=1)(imgs, queries)
    b = with_options(batch_size=4)(imgs, queries)
    assert any(a), "nothing detected: the comparison would be empty"
    for da, db in zip(a, b):
        assert [d.query for d in da] == [d.query for d in db]
        for x, y in zip(da, db):
            np.testing.assert_allclose(x.box, y.box, atol=0.05)
            assert (x.mask != y.mask).mean() < 0.01


def test_thresholds_filter_everything(with_options):
    assert with_options(box_threshold=1.0)(_images(2), [["a red circle"], ["a dog"]]) == [[], []]
    assert with_options(text_threshold=1.0)(_images(2), [["a red circle"], ["a dog"]]) == [[], []]


def test_missing_model_is_a_clear_error(tmp_path):
    from vincie_cli.utils.io import VincieError

    with pytest.raises(VincieError, match="cannot load the segmentation models"):
        GroundedSam2Backend(GroundedSam2Options(detector=str(tmp_path / "nope"), segmenter=str(tmp_path / "nope")))
