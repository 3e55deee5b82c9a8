"""Fixtures for the training tests: one small set of synthetic-session shards per test session."""

from __future__ import annotations

import pytest

from tests.train.helpers import build_shards, synth_session

REPO_RECIPES = __import__("tests.conftest", fromlist=["REPO"]).REPO / "recipes"


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """Shard folder of 6 synthetic 3-turn sessions at 32x32 (train split)."""
    return build_shards(tmp_path_factory.mktemp("train-shards"), list(range(6)))


@pytest.fixture(scope="session")
def sessions():
    return [synth_session(i) for i in range(6)]


@pytest.fixture
def tiny_recipe():
    return REPO_RECIPES / "tiny.yaml"
