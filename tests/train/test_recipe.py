"""Recipes: every shipped recipe loads and builds its model on the meta device; strict loading; overrides."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import REPO
from vincie_cli.cli import main
from vincie_cli.train.recipe import OptimSection, Recipe, load_recipe, lr_at, recipe_yaml
from vincie_cli.utils.io import UsageError

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
RELEASED_3B_DIT_PARAMS = 3_391_803_456  # the reference's meta-device count of the released DiT


def test_every_recipe_loads_and_builds_on_meta():
    from vincie_cli.model.presets import build_model
    from vincie_cli.train.loop import layout_spec, resolve_model_config

    assert len(RECIPES) >= 5
    counts = {}
    for path in RECIPES:
        r = load_recipe(path)
        model = build_model(resolve_model_config(r), device="meta")
        assert all(p.is_meta for p in model.dit.parameters())
        assert layout_spec(r).kind == r.model.layout
        counts[path.stem] = sum(p.numel() for p in model.dit.parameters())
    assert {"tiny", "mini", "3b", "7b", "sft"} <= set(counts)
    # "3B" is the released DiT, which has 3.39B parameters (13% above its name); 7b is within 10% of 7B
    assert counts["3b"] == counts["sft"] == RELEASED_3B_DIT_PARAMS
    assert abs(counts["7b"] - 7e9) / 7e9 < 0.10
    assert counts["tiny"] < counts["mini"] < 20e6


def test_unknown_key_and_wrong_type_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: tiny\n  layers: 3\n")
    with pytest.raises(UsageError, match=r"bad\.yaml.*model\.layers"):
        load_recipe(bad)
    bad.write_text("optim:\n  lr: fast\n")
    with pytest.raises(UsageError, match=r"optim\.lr: expected a number"):
        load_recipe(bad)
    with pytest.raises(UsageError, match=r"tasks\.roe_prob: expected a probability"):
        load_recipe(REPO / "recipes" / "tiny.yaml", ["tasks.roe_prob=1.5"])
    with pytest.raises(UsageError, match=r"tasks\.degrade_context: expected a probability"):
        load_recipe(REPO / "recipes" / "tiny.yaml", ["tasks.degrade_context=2"])
    with pytest.raises(UsageError, match=r"tasks\.degrade_fade: expected in \[0, 1\]"):
        load_recipe(REPO / "recipes" / "tiny.yaml", ["tasks.degrade_fade=1.5"])
    with pytest.raises(UsageError, match=r"tasks\.degrade_erase: expected in \[0, 1\]"):
        load_recipe(REPO / "recipes" / "tiny.yaml", ["tasks.degrade_erase=-0.1"])
    with pytest.raises(UsageError, match=r"tasks\.self_context: expected a probability"):
        load_recipe(REPO / "recipes" / "tiny.yaml", ["tasks.self_context=-0.1"])
    with pytest.raises(UsageError, match=r"model\.attention: expected one of"):
        load_recipe(REPO / "recipes" / "tiny.yaml", ["model.attention=causal"])


def test_overrides_and_yaml_roundtrip(tmp_path):
    r = load_recipe(REPO / "recipes" / "tiny.yaml", ["optim.lr=3e-4", "data.sources=[a, b]", "model.dit.num_layers=3"])
    assert r.optim.lr == 3e-4 and r.data.sources == ["a", "b"] and r.model.dit == {"num_layers": 3}
    saved = tmp_path / "r.yaml"
    saved.write_text(recipe_yaml(r))
    assert load_recipe(saved) == r


def test_model_overrides_are_checked():
    from vincie_cli.train.loop import resolve_model_config

    r = load_recipe(REPO / "recipes" / "tiny.yaml", ["model.dit.num_layers=3"])
    assert resolve_model_config(r).dit.num_layers == 3
    r = load_recipe(REPO / "recipes" / "tiny.yaml", ["model.dit.depth=3"])
    with pytest.raises(UsageError, match=r"model\.dit.*depth"):
        resolve_model_config(r)


def test_print_config_cli(runner):
    res = runner.invoke(
        main, ["train", str(REPO / "recipes" / "mini.yaml"), "--set", "train.max_steps=7", "--print-config"]
    )
    assert res.exit_code == 0, res.output
    data = yaml.safe_load(res.stdout)
    assert data["train"]["max_steps"] == 7 and data["model"]["preset"] == "mini"
    res = runner.invoke(main, ["train", str(REPO / "recipes" / "tiny.yaml"), "--set", "optim.speed=2"])
    assert res.exit_code == 2 and "optim.speed" in res.stderr
    res = runner.invoke(main, ["train", "no/such/recipe.yaml"])
    assert res.exit_code == 2 and "no/such/recipe.yaml: no such recipe file" in res.stderr


def test_packaged_recipes_load_by_name_from_any_folder(runner, tmp_path, monkeypatch):
    from vincie_cli.train.recipe import PACKAGED_RECIPES, packaged_recipes

    assert set(packaged_recipes()) >= {"tiny", "mini", "3b", "7b", "sft"}
    assert (PACKAGED_RECIPES / "accelerate").is_dir()
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here, as after a pip install
    for name in ("mini", "mini.yaml"):
        res = runner.invoke(main, ["train", name, "--print-config"])
        assert res.exit_code == 0, res.stderr
        assert yaml.safe_load(res.stdout) == yaml.safe_load(recipe_yaml(load_recipe(REPO / "recipes" / "mini.yaml")))
    res = runner.invoke(main, ["train", "huge"])
    assert res.exit_code == 2 and "huge: no such recipe file (packaged recipes, usable by name: 3b, 7b" in res.stderr
    (tmp_path / "mini.yaml").write_text("name: mine\nmodel: {preset: tiny}\n")  # a local file wins over the name
    assert load_recipe("mini.yaml").name == "mine"


def test_lr_schedule():
    o = OptimSection(lr=1.0, warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    assert lr_at(0, o, 110) == pytest.approx(0.1) and lr_at(9, o, 110) == pytest.approx(1.0)
    assert lr_at(60, o, 110) == pytest.approx(0.55)  # halfway through the cosine: (1 + 0.1) / 2
    assert lr_at(110, o, 110) == pytest.approx(0.1) and lr_at(500, o, 110) == pytest.approx(0.1)
    o = OptimSection(lr=2.0, warmup_steps=0, decay="linear", min_lr_ratio=0.0)
    assert [lr_at(s, o, 4) for s in range(5)] == [2.0, 1.5, 1.0, 0.5, 0.0]


def test_recipe_defaults_are_the_paper_probabilities():
    t = Recipe().tasks
    assert (t.roe_prob, t.drop_current_frame, t.drop_current_mask, t.drop_next_mask) == (0.8, 0.2, 0.7, 0.7)
    assert Recipe().train.ema_decay == 0.9998
    json.dumps(yaml.safe_load(recipe_yaml(Recipe())))  # plain data all the way down
