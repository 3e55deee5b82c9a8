"""AdamW with decoupled weight decay on matrices only, the learning-rate schedule, and flat optimizer state.

Weight decay applies to 2-D+ weights; biases, norm weights, adaLN offsets, the turn-embedding table and
other 1-D parameters get none. The schedule (`recipe.lr_at`) is applied by setting each group's lr before
every step, so resuming needs only the step number. `flatten_state` / `unflatten_state` turn
`optimizer.state_dict()` into named tensors (safetensors) plus JSON, so no pickle is ever loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for n, p in named if p.ndim >= 2 and "prompt_id_embedding" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "prompt_id_embedding" not in n)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(named: list[tuple[str, nn.Parameter]], optim) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters `named` with the recipe's `optim` section (fused on CUDA)."""
    fused = bool(named) and named[0][1].is_cuda
    return torch.optim.AdamW(
        param_groups(named, optim.weight_decay),
        lr=optim.lr,
        betas=tuple(optim.betas),
        eps=optim.eps,
        fused=fused or None,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def flatten_state(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """`optimizer.state_dict()` -> ({"optim/<param id>/<key>": tensor}, JSON-able rest)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in state["state"].items():
        for key, val in st.items():
            if isinstance(val, Tensor):
                tensors[f"optim/{pid}/{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = val
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_state(tensors: dict[str, Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[Any, dict[str, Any]] = {}
    for name, t in tensors.items():
        if not name.startswith("optim/"):
            continue
        _, pid, key = name.split("/", 2)
        state.setdefault(_pid(pid), {})[key] = t
    for pid, vals in rest.get("scalars", {}).items():
        state.setdefault(_pid(pid), {}).update(vals)
    groups = []
    for g in rest["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _pid(text: str) -> Any:
    return int(text) if text.isdigit() else text
