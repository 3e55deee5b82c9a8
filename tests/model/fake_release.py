"""Tiny stand-ins for the released VINCIE files, written the way the release writes them.

- `write_tiktoken`: a `qwen.tiktoken` with all 256 bytes plus a few merges.
- `qwen_v1_state_dict` / `write_qwen_v1_folder`: a random QWen v1 ("llm14b") checkpoint with QWen v1 key names
  and a QWen v1 config.json (safetensors, sharded safetensors with an index, or a .bin pickle).
- `inflate_vae_state_dict`: a `VincieVAE` state_dict turned into the released 5-D form (temporal taps that sum
  to the 2-D kernel, upscale_conv rows for the temporal slot z = 1, optionally the old attention names).
- `write_release`: a whole release folder (dit.pth, vae.pth, llm14b/).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vincie_cli.model.dit import DiTConfig, build_dit
from vincie_cli.model.vae import VAEConfig, build_vae

MERGES = (b"he", b"ll", b"llo", b"hello", b" w", b"or", b"ld", b" world", b"ed", b" the", b"at")

QWEN_TINY = {"hidden": 32, "layers": 2, "heads": 4, "intermediate": 96, "vocab": 512}

RELEASE_VAE = VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=32)


def write_tiktoken(path: Path, merges: tuple[bytes, ...] = MERGES) -> dict[bytes, int]:
    ranks = {bytes([b]): b for b in range(256)}
    for m in merges:
        ranks[m] = len(ranks)
    path.write_text("".join(f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in ranks.items()))
    return ranks


def qwen_v1_config(hidden: int, layers: int, heads: int, intermediate: int, vocab: int) -> dict:
    return {
        "architectures": ["QWenLMHeadModel"],
        "model_type": "qwen",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "kv_channels": hidden // heads,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "layer_norm_epsilon": 1e-6,
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        "seq_length": 2048,
        "no_bias": True,
        "use_dynamic_ntk": True,
        "use_logn_attn": True,
        "bf16": True,
        "auto_map": {"AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
    }


def qwen_v1_state_dict(hidden: int, layers: int, heads: int, intermediate: int, vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.2):
        return torch.randn(*shape, generator=g) * std

    half = intermediate // 2
    sd = {"transformer.wte.weight": r(vocab, hidden, std=1.0)}
    for i in range(layers):
        p = f"transformer.h.{i}."
        sd[p + "ln_1.weight"] = 1 + r(hidden, std=0.1)
        sd[p + "attn.c_attn.weight"] = r(3 * hidden, hidden)
        sd[p + "attn.c_attn.bias"] = r(3 * hidden)
        sd[p + "attn.c_proj.weight"] = r(hidden, hidden)
        sd[p + "ln_2.weight"] = 1 + r(hidden, std=0.1)
        sd[p + "mlp.w1.weight"] = r(half, hidden)
        sd[p + "mlp.w2.weight"] = r(half, hidden)
        sd[p + "mlp.c_proj.weight"] = r(hidden, half)
    sd["transformer.ln_f.weight"] = 1 + r(hidden, std=0.1)
    sd["lm_head.weight"] = r(vocab, hidden)
    return sd


def write_qwen_v1_folder(folder: Path, fmt: str = "safetensors", seed: int = 0, **dims) -> dict:
    """fmt: 'safetensors' (one file), 'sharded' (two safetensors + index), 'bin' (pytorch_model.bin)."""
    d = {**QWEN_TINY, **dims}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(qwen_v1_config(**d)))
    write_tiktoken(folder / "qwen.tiktoken")
    sd = qwen_v1_state_dict(**d, seed=seed)
    if fmt == "safetensors":
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif fmt == "sharded":
        keys = list(sd)
        parts = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
        weight_map = {}
        for i, part in enumerate(parts, 1):
            name = f"model-{i:05d}-of-00002.safetensors"
            save_file({k: sd[k] for k in part}, str(folder / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    elif fmt == "bin":
        torch.save(sd, folder / "pytorch_model.bin")
    else:
        raise ValueError(fmt)
    return sd


def inflate_vae_state_dict(sd: dict, old_attention_names: bool = False, seed: int = 0) -> dict:
    """A converted (2-D) VAE state_dict -> the released 5-D layout whose conversion gives `sd` back."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    n_up = sum(1 for k in sd if k.endswith("upscale_conv.weight"))
    for k, v in sd.items():
        if k.endswith("upscale_conv.weight") or k.endswith("upscale_conv.bias"):
            block = int(k.split("up_blocks.")[1].split(".")[0])
            z_r = 2 if block < min(2, n_up - 1) else 1  # the release: the first two upsamplers are temporal
            c = v.shape[0] // 4
            if z_r == 2:  # rows (x, y, z, c): add random rows for z = 1
                parts = v.reshape(4, 1, c, *v.shape[1:])
                extra = torch.randn(parts.shape, generator=g)
                v = torch.cat([parts, extra], dim=1).reshape(8 * c, *v.shape[1:])
            if v.ndim == 4:
                v = v[:, :, None]
        elif v.ndim == 4:
            kt = 1 if v.shape[-1] == 1 or "down_blocks.0.downsamplers" in k else 3
            if kt == 1:
                v = v[:, :, None]
            else:
                a = torch.randn(v.shape, generator=g) * 0.1
                b = torch.randn(v.shape, generator=g) * 0.1
                v = torch.stack([a, v - a - b, b], dim=2)
        if old_attention_names and ".attentions.0." in k:
            for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
                k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        out[k] = v
    return out


def tiny_dit_config(txt_in_dim: int = 32) -> DiTConfig:
    return DiTConfig(
        vid_dim=32, txt_in_dim=txt_in_dim, heads=2, head_dim=16, num_layers=2, mm_layers=1, mlp_hidden=64, rope_dim=14
    )


def write_release(
    folder: Path,
    vae_config: VAEConfig = RELEASE_VAE,
    old_attention_names: bool = False,
    qwen_fmt: str = "safetensors",
    flops_prefix: bool = True,
    seed: int = 0,
) -> dict:
    """A whole tiny release folder. Returns the pieces: DiT state_dict, the 2-D VAE state_dict, QWen v1 sd."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dit = build_dit(tiny_dit_config(QWEN_TINY["hidden"]))
    dit_sd = {k: v.clone() for k, v in dit.state_dict().items()}
    saved = {
        (f"_flops_wrap_module.{k}" if flops_prefix and k.startswith("blocks.") else k): v for k, v in dit_sd.items()
    }
    torch.save(saved, folder / "dit.pth")
    vae = build_vae(vae_config)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    vae_sd = {k: v.clone() for k, v in vae.state_dict().items()}
    torch.save(inflate_vae_state_dict(vae_sd, old_attention_names, seed), folder / "vae.pth")
    qwen_sd = write_qwen_v1_folder(folder / "llm14b", fmt=qwen_fmt, seed=seed)
    return {"dit": dit_sd, "vae": vae_sd, "qwen": qwen_sd}
