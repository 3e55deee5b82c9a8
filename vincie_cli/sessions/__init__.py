"""Training sessions: build WebDataset shards from annotated clips and other data, and stream them back.

`from vincie_cli.sessions import SessionDataset, Session` (imported lazily: torch loads only when the
dataset is used).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Session", "SessionDataset", "SessionLoader"]


def __getattr__(name: str) -> Any:
    if name == "Session":
        from vincie_cli.sessions.session import Session

        return Session
    if name in ("SessionDataset", "SessionLoader"):
        from vincie_cli.sessions import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'vincie_cli.sessions' has no attribute {name!r}")
