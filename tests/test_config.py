from dataclasses import dataclass, field
from typing import Literal

import pytest

from vincie_cli.config import apply_overrides, from_dict, load_yaml, to_dict
from vincie_cli.utils.io import UsageError


@dataclass
class Inner:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    optim: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    path: str | None = None


def test_from_dict_roundtrip_and_coercion():
    cfg = from_dict(Outer, {"steps": 5, "optim": {"lr": 1, "betas": [0.8, 0.9]}, "tags": ["a"]})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, msg",
    [
        ({"stepz": 1}, "unknown key stepz"),
        ({"optim": {"lrr": 1}}, "unknown key optim.lrr"),
        ({"steps": "ten"}, "steps: expected a whole number"),
        ({"steps": 1.5}, "steps: expected a whole number"),
        ({"mode": "c"}, "mode: expected one of"),
        ({"optim": {"betas": [1]}}, "optim.betas: expected 2 items"),
        ({"path": 3}, "path: expected"),
    ],
)
def test_from_dict_errors_name_the_key(data, msg):
    with pytest.raises(UsageError, match=msg):
        from_dict(Outer, data)


def test_overrides_parse_yaml_values():
    out = apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=3e-4", "steps=7", "tags=[a, b]", "new.key=true"])
    assert out == {"optim": {"lr": 3e-4}, "steps": 7, "tags": ["a", "b"], "new": {"key": True}}
    with pytest.raises(UsageError, match="expected key=value"):
        apply_overrides({}, ["nokey"])


def test_load_yaml_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(UsageError, match="mapping at the top level"):
        load_yaml(lst)
