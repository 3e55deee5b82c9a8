"""Annotation backends behind one interface (`base.Backend`): openai, transformers, oracle."""

from __future__ import annotations

from vincie_cli.annotate.backends.base import Backend, FatalBackendError, PairRequest, Reply

BACKENDS = ("openai", "transformers", "oracle")

__all__ = ["BACKENDS", "Backend", "FatalBackendError", "PairRequest", "Reply"]
