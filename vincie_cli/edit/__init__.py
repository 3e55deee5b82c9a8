"""Multi-turn in-context editing: sessions, chain-of-editing and mask / drag control, composition, story.

Public API (imported lazily, so `import vincie_cli.edit` stays light):
- `EditSettings` (settings.py): every option, reference defaults;
- `EditSession` (session.py): create / open (resume, branch) / run turns, session.json;
- `run_sessions(model, sessions, out_dir, settings)` (batch.py): many sessions, resumable, data-parallel;
- `default_model_path()`, `load_model()` (models.py); `story_outputs()` (story.py).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EditSettings": "settings",
    "TurnControl": "settings",
    "EditSession": "session",
    "read_session": "session",
    "replay": "session",
    "run_sessions": "batch",
    "read_manifest": "batch",
    "default_model_path": "models",
    "load_model": "models",
    "is_synthetic_world_scene": "models",
    "story_outputs": "story",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"vincie_cli.edit.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'vincie_cli.edit' has no attribute {name!r}")
