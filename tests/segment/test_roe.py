import numpy as np
import pytest

from tests.sessions.helpers import annotation, change
from vincie_cli.records import normalize_annotation
from vincie_cli.segment.roe import (
    Detection,
    box_of,
    entity_queries,
    fuse,
    planned_rule,
)
from vincie_cli.utils.io import BadInputError
from vincie_cli.utils.masks import decode_mask_png, encode_mask_png, load_mask, save_mask

H, W = 12, 16


def _mask(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _ann(**kw):
    return normalize_annotation(annotation("Edit the scene.", **kw))


def test_queries_split_by_change_kind():
    ann = _ann(
        changes=[
            change("a red circle", "move"),
            change("a blue square", "appear", "o2"),
            change("a green star", "disappear", "o3"),
            change("A Red Circle", "attribute"),
        ]
    )
    src, dst = entity_queries(ann)
    assert src == ["a red circle", "a green star"]  # appearing entities are not in the source frame
    assert dst == ["a red circle", "a blue square"]  # disappearing ones are not in the target frame


def test_query_description_falls_back_to_caption_by_id():
    ann = _ann(
        changes=[{"id": "obj7", "description": "", "change": "move", "detail": ""}],
        objects=[{"id": "obj7", "description": "a yellow triangle"}],
    )
    assert entity_queries(ann) == (["a yellow triangle"], ["a yellow triangle"])


def test_rule_priority():
    assert planned_rule(_ann(changes=[change("x")], global_change="it gets dark", camera="pan-left")) == "global"
    assert planned_rule(_ann(changes=[change("x")], camera="pan-left")) == "entities"
    assert planned_rule(_ann(camera="dolly-in")) == "camera"
    assert planned_rule(_ann()) == "none"


def test_entities_fuse_union_per_frame():
    ann = _ann(changes=[change("a", "move"), change("b", "appear", "o2"), change("c", "disappear", "o3")])
    a_src, a_dst = _mask(0, 4, 0, 4), _mask(0, 4, 8, 12)
    b_dst = _mask(8, 12, 0, 4)
    c_src = _mask(6, 8, 6, 8)
    res = fuse(
        ann,
        [Detection("a", [0, 0, 4, 4], 0.9, a_src), Detection("c", [6, 6, 8, 8], 0.8, c_src)],
        [Detection("a", [8, 0, 12, 4], 0.9, a_dst), Detection("b", [0, 8, 4, 12], 0.7, b_dst)],
        (H, W),
        (H, W),
    )
    assert res.rule == "entities"
    np.testing.assert_array_equal(res.src, a_src | c_src)
    np.testing.assert_array_equal(res.dst, a_dst | b_dst)
    assert res.src.sum() == 16 + 4 and res.dst.sum() == 32


def test_nothing_detected_is_none_and_global_is_full_frame():
    ann = _ann(changes=[change("a")])
    res = fuse(ann, [], [], (H, W), (H, W))
    assert res.rule == "none" and res.src is None and res.dst is None
    res = fuse(_ann(global_change="snow falls"), [], [], (H, W), (H + 2, W))
    assert res.rule == "global" and res.src.all() and res.dst.shape == (H + 2, W) and res.dst.all()
    res = fuse(_ann(camera="orbit"), [], [], (H, W), (H, W))
    assert res.rule == "camera" and res.src is None and res.dst is None


def test_one_sided_detection_keeps_entities_rule():
    ann = _ann(changes=[change("b", "appear")])
    res = fuse(ann, [], [Detection("b", [0, 0, 2, 2], 0.5, _mask(0, 2, 0, 2))], (H, W), (H, W))
    assert res.rule == "entities" and not res.src.any() and res.dst.sum() == 4


def test_mask_of_wrong_size_is_rejected():
    with pytest.raises(ValueError, match="does not match"):
        fuse(
            _ann(changes=[change("a")]), [Detection("a", [0, 0, 1, 1], 1.0, np.ones((3, 3), bool))], [], (H, W), (H, W)
        )


def test_mask_png_roundtrip_is_one_bit(tmp_path):
    from PIL import Image

    m = _mask(2, 9, 3, 11)
    save_mask(tmp_path / "m.png", m)
    assert Image.open(tmp_path / "m.png").mode == "1"
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png", (H, W)), m)
    np.testing.assert_array_equal(decode_mask_png(encode_mask_png(m)), m)
    with pytest.raises(BadInputError, match=r"m.png: mask is 16x12, the frame is 8x8"):
        load_mask(tmp_path / "m.png", (8, 8))
    with pytest.raises(BadInputError, match="not found"):
        load_mask(tmp_path / "nope.png")
    assert box_of(m) == [3.0, 2.0, 11.0, 9.0]
    assert box_of(np.zeros((2, 2), bool)) is None
