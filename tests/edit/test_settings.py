"""EditSettings: reference defaults, dict / string coercion (eval's --gen-set), clear errors."""

from __future__ import annotations

import pytest

from vincie_cli.edit.settings import Drag, EditSettings, TurnControl, parse_chain, parse_drag, parse_setting_pairs
from vincie_cli.utils.io import UsageError


def test_defaults_are_the_reference():
    s = EditSettings()
    assert (s.steps, s.shift, s.guidance, s.rescale, s.partial) == (50, 12.0, 7.5, 0.0, 1.0)
    assert (s.resolution, s.aspect, s.seed, s.template, s.camera_prefix) == (256, "keep_ratio", 1, True, "")
    assert (s.precision, s.attention, s.vae_precision, s.noise_device) == ("fp32", "bf16", "bf16", "device")
    assert s.chain == () and s.context is None and s.roundtrip == "latent" and not s.batched_cfg


def test_from_dict_coerces_strings_and_round_trips():
    s = EditSettings.from_dict({"steps": "20", "guidance": "5", "batched_cfg": "true", "chain": "next,current"})
    assert s.steps == 20 and s.guidance == 5.0 and s.batched_cfg is True and s.chain == ("current", "next")
    assert EditSettings.from_dict(s.to_dict()) == s
    base = EditSettings(seed=7)
    assert EditSettings.from_dict({"steps": 4}, base=base).seed == 7


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"stepz": 3}, "unknown edit setting.*stepz"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"steps": 2.5}, "whole number"),
        ({"roundtrip": "jpeg"}, "roundtrip must be one of latent, png"),
        ({"partial": 1.5}, r"partial must be in \[0, 1\]"),
        ({"chain": "previous"}, "unknown step"),
        ({"compile": "maybe"}, "true or false"),
        ({"context": -1}, "context must be >= 0"),
    ],
)
def test_bad_settings_are_named(bad, message):
    with pytest.raises(UsageError, match=message):
        EditSettings.from_dict(bad)


def test_session_conflicts_name_the_fixed_settings():
    a, b = EditSettings(resolution=256), EditSettings(resolution=512, steps=3)
    assert b.session_conflicts(a) == ["resolution 256 -> 512"]
    assert EditSettings(steps=3).session_conflicts(a) == []


def test_chain_and_drag_parsing():
    assert parse_chain(None) == () and parse_chain("") == () and parse_chain(["next"]) == ("next",)
    assert parse_drag("10,-4") == Drag(10, -4) and parse_drag([1, 2, 1.5, 30]) == Drag(1, 2, 1.5, 30)
    for bad in ("1", "a,b", "1,2,3,4,5", "1,2,0"):
        with pytest.raises(UsageError, match="--drag"):
            parse_drag(bad)
    with pytest.raises(UsageError, match="--mask and --drag"):
        TurnControl(mask="m.png", drag=Drag(1, 1))


def test_model_recommended_settings_fill_only_what_the_user_left_unset():
    from types import SimpleNamespace

    from vincie_cli.edit.models import with_model_defaults
    from vincie_cli.edit.settings import EditSettings

    model = SimpleNamespace(config=SimpleNamespace(sampling={"steps": 20, "shift": 3.0, "resolution": 64}))
    s = with_model_defaults(EditSettings(steps=7), {"steps"}, model)
    assert (s.steps, s.shift, s.resolution, s.guidance) == (7, 3.0, 64, 7.5)
    plain = SimpleNamespace(config=SimpleNamespace(sampling=None))
    assert with_model_defaults(EditSettings(), set(), plain) == EditSettings()


def test_parse_setting_pairs_reads_json_values_and_names_a_bad_pair():
    pairs = ["steps=1", "shift=3.5", "keep_outside=true", "chain=current,next", " seed =7", "note=a=b"]
    got = parse_setting_pairs(pairs)
    assert got == {"steps": 1, "shift": 3.5, "keep_outside": True, "chain": "current,next", "seed": 7, "note": "a=b"}
    assert parse_setting_pairs(["steps=1", "steps=2"]) == {"steps": 2}  # the last one wins
    for bad in ("steps", "=3"):
        with pytest.raises(UsageError, match=f"--gen-set {bad!r}: expected KEY=VALUE"):
            parse_setting_pairs(["steps=1", bad])
