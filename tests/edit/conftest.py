"""Fixtures for the editing tests: a tiny random-weight model saved to disk (loaded through the real loading
code), test images, and fast settings (few steps, tiny resolution)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


def make_image(path, width: int = 64, height: int = 48, seed: int = 0, mode: str = "RGB"):
    """A smooth gradient with a bright square (so resizes and masks have structure); saved in `mode`."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    a = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 7.0 + seed)], -1) * 200
    a += rng.rand(height, width, 3) * 30
    s = min(width, height) // 3
    a[height // 4 : height // 4 + s, width // 3 : width // 3 + s] = (250, 240, 30)
    img = Image.fromarray(a.clip(0, 255).astype(np.uint8), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """These tests move tiny tensors: one intra-op thread is faster than two, and on a busy 2-core machine
    a second thread waiting for a descheduled core slows every op down by orders of magnitude."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The `tiny` preset with seeded random weights, saved as our model folder."""
    from vincie_cli.model.presets import build_model

    d = tmp_path_factory.mktemp("models") / "tiny"
    build_model("tiny", seed=0).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def model(model_dir):
    """The tiny model loaded once through `load_model` (fp32 DiT, bf16 VAE: the default precisions)."""
    from vincie_cli.edit.models import load_model
    from vincie_cli.edit.settings import EditSettings

    return load_model(str(model_dir), EditSettings(device="cpu"))


@pytest.fixture
def settings():
    """Fast settings: 3 steps, 64² area (8x8 latents for the tiny x8 VAE)."""
    from vincie_cli.edit.settings import EditSettings

    return EditSettings(steps=3, resolution=64, device="cpu")


@pytest.fixture
def image(tmp_path):
    return make_image(tmp_path / "input.png")


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
