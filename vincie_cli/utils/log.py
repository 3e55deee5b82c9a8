"""Logging to stderr and progress bars that never touch stdout (stdout carries JSON lines only)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_QUIET = False


def setup_logging(level: str = "info", quiet: bool = False) -> None:
    """Configure the `vincie` logger once, writing to stderr."""
    global _QUIET
    _QUIET = quiet
    logger = logging.getLogger("vincie")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname).1s %(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else getattr(logging, level.upper(), logging.INFO))
    logger.propagate = False


def get_logger(name: str) -> logging.Logger:
    """A child of the `vincie` logger, e.g. get_logger(__name__)."""
    return logging.getLogger("vincie." + name.removeprefix("vincie_cli."))


def progress(items: Iterable[T], total: int | None = None, desc: str = "", **kw: Any) -> Iterator[T]:
    """tqdm on stderr, silent when stderr is not a terminal or with --quiet."""
    from tqdm import tqdm

    disable = _QUIET or not sys.stderr.isatty()
    yield from tqdm(items, total=total, desc=desc, file=sys.stderr, disable=disable, dynamic_ncols=True, **kw)
