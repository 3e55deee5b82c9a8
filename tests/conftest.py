"""Shared test fixtures. No network: hub access is switched off before anything imports transformers."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VINCIE_CACHE", __import__("tempfile").mkdtemp(prefix="vincie-cache-"))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_script(relpath: str | Path):
    """Import a script of the repository that is not a package module (benchmarks/*.py, tools/*.py); relpath
    is relative to the repository root (an absolute path is taken as it is)."""
    import importlib.util
    import sys

    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the script runs
    spec.loader.exec_module(mod)
    return mod


def parity_dir() -> Path:
    """The parity fixture set: $VINCIE_PARITY_DIR, else ../shared/parity next to the repository."""
    env = os.environ.get("VINCIE_PARITY_DIR")
    return Path(env) if env else REPO.parent / "shared" / "parity"


@pytest.fixture(scope="session")
def parity() -> Path:
    """Path of the parity fixtures; skips (saying why) when the directory is missing."""
    d = parity_dir()
    if not (d / "manifest.json").is_file() and not d.is_dir():
        pytest.skip(f"parity fixtures not found at {d} (set VINCIE_PARITY_DIR)")
    return d


@pytest.fixture
def runner():
    """A click CliRunner with stdout and stderr kept apart."""
    from click.testing import CliRunner

    return CliRunner()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run fastest on one thread, and two threads crawl when the machine is busy."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
