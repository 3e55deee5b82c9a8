"""Exponential moving average of the trainable DiT parameters (kept in fp32 beside them).

decay_n = min(decay, (1 + n) / (10 + n)) with warm-up (n = updates so far), else `decay`. The EMA weights
are what a checkpoint's `dit.safetensors` holds (edit and eval load them by default).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class EMA:
    """EMA of `params` (name -> parameter); `update()` after every optimizer step."""

    def __init__(self, params: dict[str, nn.Parameter], decay: float, warmup: bool = True) -> None:
        self.params = params
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow = {k: p.detach().float().clone() for k, p in params.items()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        names = list(self.params)
        torch._foreach_lerp_([self.shadow[k] for k in names], [self.params[k].detach().float() for k in names], 1 - d)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily put the EMA weights into the model (e.g. for validation)."""
        backup = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.shadow[k].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(backup[k])

    def state(self) -> dict[str, Tensor]:
        return self.shadow

    def load(self, shadow: dict[str, Tensor], updates: int) -> None:
        missing = sorted(set(self.shadow) - set(shadow))
        if missing:
            raise KeyError(f"EMA state lacks {missing[:5]}")
        for k, old in self.shadow.items():
            new = shadow[k].detach().float().to(old.device).clone()
            if hasattr(old, "device_mesh"):  # a sharded (FSDP2) parameter: shard the full tensor alike
                from torch.distributed.tensor import distribute_tensor

                new = distribute_tensor(new, old.device_mesh, old.placements)
            self.shadow[k] = new
        self.updates = int(updates)
