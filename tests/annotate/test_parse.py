from __future__ import annotations

import json

import pytest

from tests.annotate.helpers import BROKEN, as_json, in_prose, valid_annotation
from vincie_cli.annotate.parse import ParseError, extract_json, parse_annotation, repair_json
from vincie_cli.annotate.prompt import build_messages, instruction_text, prompt_sha
from vincie_cli.records import ANNOTATION_KEYS, CAMERA_MOTIONS, CHANGE_KINDS, PROMPT_VERSION


def test_plain_fenced_and_prose_replies():
    want = parse_annotation(as_json())
    assert want["summary_change"] == "Move the red circle to the left."
    assert want["object_change"][0]["change"] == "move"
    assert parse_annotation(in_prose()) == want
    assert parse_annotation('<think>maybe {"a": 1} or not</think>\n' + as_json()) == want
    # a small object in the prose before the real one does not win
    assert parse_annotation('I will use keys like {"x": 1}. ' + as_json()) == want


def test_safe_repairs():
    ann = valid_annotation()
    text = json.dumps(ann, indent=1)
    trailing = text.replace('the left."\n}', 'the left.",\n}').replace('"detail": ""\n }', '"detail": "",\n }')
    assert trailing.count(",\n") == text.count(",\n") + 2
    assert parse_annotation(trailing)["summary_change"] == ann["summary_change"]
    single = text.replace('"', "'").replace("the left", "the left, it's fast")
    assert parse_annotation(single)["object_change"][0]["detail"] == "moves to the left, it's fast"
    assert repair_json('{"a": True, "b": None, "c": "True, None",}') == '{"a": true, "b": null, "c": "True, None"}'


def test_ambiguous_single_quotes_are_not_guessed():
    with pytest.raises(ParseError):
        extract_json("{'a': 'it's', 'b\": 1}")


def test_broken_cut_off_and_empty_replies_give_reasons():
    with pytest.raises(ParseError, match="invalid JSON"):
        parse_annotation(BROKEN + "}")
    with pytest.raises(ParseError, match="cut off"):
        parse_annotation(as_json()[:-40])
    with pytest.raises(ParseError, match="empty reply"):
        parse_annotation("   ")
    with pytest.raises(ParseError, match="no JSON object"):
        parse_annotation("I cannot see any images.")


def test_schema_violations_are_parse_errors():
    ann = valid_annotation()
    del ann["global_change"]
    with pytest.raises(ParseError, match="missing keys: global_change"):
        parse_annotation(json.dumps(ann))
    with pytest.raises(ParseError, match="summary_change"):
        parse_annotation(json.dumps(valid_annotation(summary="  ")))
    with pytest.raises(ParseError, match="unknown camera motion 'spin'"):
        parse_annotation(json.dumps(valid_annotation(motion="spin")))


def test_camera_synonyms_and_wrappers():
    assert parse_annotation(as_json(motion="Zoom In"))["camera_change"]["motion"] == "dolly-in"
    assert parse_annotation(as_json(motion="pan_left"))["camera_change"]["motion"] == "pan-left"
    ann = valid_annotation()
    ann["camera_change"] = "tilt up"
    assert parse_annotation(json.dumps(ann))["camera_change"] == {"motion": "tilt-up", "detail": ""}
    wrapped = json.dumps({"annotation": valid_annotation()})
    assert parse_annotation(wrapped)["summary_change"] == ann["summary_change"]
    assert parse_annotation(json.dumps([valid_annotation()]))["summary_change"] == ann["summary_change"]


def test_prompt_names_every_key_and_vocabulary():
    text = instruction_text("a dog plays", retry_reason="invalid JSON")
    for word in (*ANNOTATION_KEYS, *CAMERA_MOTIONS, *CHANGE_KINDS, "char1", "obj1", "a dog plays", "invalid JSON"):
        assert word in text
    assert "a dog plays" not in instruction_text()
    msgs = build_messages()
    assert [m["role"] for m in msgs] == ["system", "user"]
    images = [p["index"] for p in msgs[1]["content"] if p["type"] == "image"]
    assert images == [0, 1]
    assert len(prompt_sha()) == 16 and PROMPT_VERSION == "v1"
