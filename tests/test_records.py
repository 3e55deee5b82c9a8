import pytest

from vincie_cli.records import (
    ANNOTATION_KEYS,
    changed_entities,
    normalize_annotation,
    rebase_clip,
    validate_clip,
)
from vincie_cli.utils.io import BadInputError


def _ann(**kw):
    base = {
        "frame1_caption": {"caption": "a red circle", "objects": [{"id": "obj1", "description": "a red circle"}]},
        "frame2_caption": "a red circle on the left",
        "character_change": [],
        "object_change": [{"id": "obj1", "description": "a red circle", "change": "move", "detail": "left"}],
        "global_change": "",
        "camera_change": {"motion": "Pan Left", "detail": "slow"},
        "other_change": None,
        "summary_change": " Move the red circle to the left. ",
    }
    base.update(kw)
    return base


def test_normalize_annotation_canonical_form():
    a = normalize_annotation(_ann())
    assert tuple(a) == ANNOTATION_KEYS
    assert a["frame2_caption"] == {"caption": "a red circle on the left", "characters": [], "objects": []}
    assert a["camera_change"]["motion"] == "pan-left"
    assert a["other_change"] == ""
    assert a["summary_change"] == "Move the red circle to the left."
    assert changed_entities(a)[0]["change"] == "move"


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({"summary_change": ""}, "summary_change must be a non-empty string"),
        ({"camera_change": {"motion": "barrel-roll"}}, "unknown camera motion"),
        ({"object_change": 5}, "expected a list"),
    ],
)
def test_normalize_annotation_rejects(bad, msg):
    with pytest.raises(BadInputError, match=msg):
        normalize_annotation(_ann(**bad), where="clip0/t0")


def test_missing_keys_named():
    a = _ann()
    del a["camera_change"]
    with pytest.raises(BadInputError, match="missing keys: camera_change"):
        normalize_annotation(a)


def test_validate_and_rebase_clip(tmp_path):
    rec = {
        "clip_id": "c",
        "frames": [{"index": 0, "path": "clips/c/0.png"}, {"index": 1, "path": "clips/c/1.png"}],
        "transitions": [{"src": 0, "dst": 1, "annotation": {}, "roe": {"src_mask": "m/0.png", "dst_mask": None}}],
    }
    validate_clip(rec)
    out = rebase_clip(rec, tmp_path / "ann", tmp_path / "seg")
    assert out["frames"][0]["path"] == "../ann/clips/c/0.png"
    assert out["transitions"][0]["roe"]["src_mask"] == "../ann/m/0.png"
    bad = dict(rec, transitions=[{"src": 0, "dst": 5, "annotation": {}}])
    with pytest.raises(BadInputError, match="does not exist"):
        validate_clip(bad)
