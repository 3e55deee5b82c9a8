"""LoRA adapters on the DiT through peft, and merged weights for saving a plain model folder.

Adapters go on the linear layers named in `model.lora.targets` inside the transformer blocks
(attention: `proj_qkv`, `proj_out`; MLP: `proj_in`, `proj_in_gate`, `proj_out`). Only adapter weights
train; checkpoints store the merged weights (so `vincie edit` loads a plain model) and the adapters
themselves (to resume).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

ADAPTER = "default"


def target_regex(targets: list[str]) -> str:
    names = "|".join(re.escape(t) for t in targets)
    return rf"blocks\.\d+\.(attn\.({names})\.(vid|txt|all)|mlp\.(vid|txt|all)\.({names}))"


def inject_lora(dit: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str]) -> list[str]:
    """Add adapters in place; freeze everything else. Returns the adapter parameter names."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_regex(targets))
    inject_adapter_in_model(cfg, dit, adapter_name=ADAPTER)
    names = []
    for n, p in dit.named_parameters():
        p.requires_grad_(".lora_" in n)
        if ".lora_" in n:
            names.append(n)
    if not names:
        raise ValueError(f"no module matches model.lora.targets {targets}")
    return names


def has_lora(dit: nn.Module) -> bool:
    return any(".lora_" in n for n, _ in dit.named_parameters())


@torch.no_grad()
def merged_state_dict(dit: nn.Module) -> dict[str, Tensor]:
    """The DiT's state_dict with every adapter merged into its base weight, under the plain key names."""
    from peft.tuners.lora import LoraLayer

    sd = {}
    for k, v in dit.state_dict().items():
        if ".lora_" in k:
            continue
        sd[k.replace(".base_layer.", ".")] = v.detach().clone()
    for name, mod in dit.named_modules():
        if isinstance(mod, LoraLayer) and ADAPTER in mod.lora_A:
            key = f"{name}.weight"
            sd[key] = sd[key] + mod.get_delta_weight(ADAPTER).to(sd[key].dtype)
    return sd
