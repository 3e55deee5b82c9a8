"""Training throughput: the real loop on CPU (tiny, mini), and one 3B-architecture training step on a GPU.

    python benchmarks/bench_train.py cpu --recipe tiny --steps 30
    python benchmarks/bench_train.py cpu --recipe mini --steps 10 --threads 2
    python benchmarks/bench_train.py gpu --tokens 16384                  # 3B DiT, random weights, one GPU
    python benchmarks/bench_train.py gpu --tiny --steps 2                # the same code on the tiny DiT (CPU ok)

`cpu` runs `train.loop` (composition, preprocessing, VAE and text encoding, packing, forward, backward,
AdamW, EMA) on in-memory synthetic-world sessions at the recipe's resolution and reports steps/s,
tokens/s and sessions/s. `gpu` times the transformer's training step alone (fwd + bwd + AdamW) on packed
block-causal sessions built by `model.layouts` (random latents and text states), with activation
checkpointing and bf16 autocast, and reports tokens/s, MFU (model FLOPs counting only the attention pairs
the mask allows) and peak memory. Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def synth_sessions(n: int, size: int, turns: int):
    from vincie_cli.sessions.session import Session
    from vincie_cli.synth.benchmark import make_session

    out = []
    for seed in range(n):
        b = make_session(seed, size, turns)
        out.append(
            Session(
                key=f"s{seed}",
                frames=[b.start_image] + [t.image for t in b.turns],
                texts=b.instructions,
                cameras=["static"] * turns,
                src_masks=[t.roe.src for t in b.turns],
                dst_masks=[t.roe.dst for t in b.turns],
                roe_rules=["entities"] * turns,
                meta={},
            )
        )
    return out


def bench_cpu(args: argparse.Namespace) -> dict:
    import torch

    from vincie_cli.train import loop as L
    from vincie_cli.train.recipe import load_recipe

    sets = [
        f"train.max_steps={args.steps + args.warmup + 1}",
        "train.checkpoint_every=1000000",
        "log.tensorboard=false",
        "eval.every=0",
        *([f"train.threads={args.threads}"] if args.threads else []),
        *([f"train.tokens_per_batch={args.tokens}"] if args.tokens else []),
        *args.set,
    ]
    r = load_recipe(args.recipe, sets)  # a packaged recipe's name or a YAML path
    size = r.data.resolution
    sessions = synth_sessions(args.sessions, size, r.data.max_turns)
    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        state = L.setup(r, out_dir=out, sessions=sessions)
        for _ in range(args.warmup):
            L.train_step(state)
        t0 = time.perf_counter()
        ms = [L.train_step(state) for _ in range(args.steps)]
        dt = time.perf_counter() - t0
        state.lock.release()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "type": "bench",
        "bench": "train_cpu",
        "recipe": args.recipe,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "steps_per_s": args.steps / dt,
        "ms_per_step": 1000 * dt / args.steps,
        "tokens_per_step": sum(m["tokens"] for m in ms) / len(ms),
        "tokens_per_s": sum(m["tokens"] for m in ms) / dt,
        "sessions_per_s": sum(m["sessions"] for m in ms) / dt,
        "params_M": sum(p.numel() for p in state.trainable.values()) / 1e6,
        "loss_first": ms[0]["loss"],
        "loss_last": ms[-1]["loss"],
    }


def gpu_batch(config, tokens: int, frame_hw: tuple[int, int], turns: int, text_len: int, device, seed: int = 0):
    """Packed block-causal sessions (turns with both masks) up to `tokens`, random latents and text states."""
    import torch

    from vincie_cli.model.layouts import LayoutSpec, pack_samples, training_samples

    spec = LayoutSpec("paper", "block_causal", "interleaved")
    g = torch.Generator().manual_seed(seed)
    h, w = frame_hw
    c = config.vid_out_channels
    n_frames = 1 + 3 * turns  # I0, then (M_src, M_dst, I_k+1) per turn
    tasks = ["csp", "nsp", "nip"] * turns
    samples, states, owners = [], [], []
    used = 0
    while True:
        lat = [torch.randn(h, w, c, generator=g) for _ in range(n_frames)]
        st = [torch.randn(text_len, config.txt_in_dim, generator=g) for _ in range(n_frames - 1)]
        lens = [text_len + 1] * (n_frames - 1)
        times = {j: float(torch.rand((), generator=g)) * 1000 for j in range(1, n_frames)}
        new = training_samples(spec, lat, [False] * n_frames, list(range(1, n_frames)), tasks, lens, times, g,
                               tuple(config.patch_size[1:]), {})  # fmt: skip
        size = sum(s.num_tokens for s in new)
        if samples and used + size > tokens:
            break
        samples += new
        owners += [len(states)] * len(new)
        states.append([s.to(device) for s in st])
        used += size
    backend = "flex" if device.type == "cuda" else "dense"
    return pack_samples(samples, states, owners, spec, device, backend)


def bench_gpu(args: argparse.Namespace) -> dict:
    import torch

    from vincie_cli.model.dit import DiTConfig, build_dit
    from vincie_cli.model.layouts import run_dit
    from vincie_cli.model.presets import get_preset
    from vincie_cli.train.loop import PEAK_TFLOPS, batch_flops

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = get_preset("tiny").dit if args.tiny else DiTConfig()
    torch.manual_seed(0)
    dit = build_dit(config, device=device, dtype=torch.float32)
    dit.gradient_checkpointing = not args.no_checkpointing
    dit.attention = "bf16" if device.type == "cuda" else "fp32"
    dit.train()
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-5, fused=device.type == "cuda" or None)
    hw = (args.res // 8, args.res // 8)  # latent size of a res x res frame (VAE x8)
    packed = gpu_batch(config, args.tokens, hw, args.turns, args.text_len, device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> float:
        with amp:
            out = run_dit(dit, packed)
        loss = (out[packed.loss_rows].float() - packed.target).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    flops = 3 * batch_flops(config, packed)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((tf for k, tf in PEAK_TFLOPS.items() if k in name), None)
    return {
        "type": "bench",
        "bench": "train_step_gpu",
        "device": name,
        "model": "tiny" if args.tiny else "3b",
        "params_B": sum(p.numel() for p in dit.parameters()) / 1e9,
        "tokens": packed.num_tokens,
        "samples": len(packed.vid_lens),
        "seconds_per_step": dt,
        "tokens_per_s": packed.num_tokens / dt,
        "tflops_per_s": flops / dt / 1e12,
        "mfu": flops / dt / (peak * 1e12) if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "activation_checkpointing": dit.gradient_checkpointing,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("cpu", help="the real training loop on in-memory synthetic sessions")
    c.add_argument("--recipe", default="tiny")
    c.add_argument("--steps", type=int, default=20)
    c.add_argument("--warmup", type=int, default=3)
    c.add_argument("--sessions", type=int, default=16)
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--tokens", type=int, default=None, help="train.tokens_per_batch")
    c.add_argument("--set", action="append", default=[], help="recipe override key=value")
    g = sub.add_parser("gpu", help="one 3B-architecture DiT training step (random weights)")
    g.add_argument("--tiny", action="store_true", help="the tiny DiT instead (runs anywhere)")
    g.add_argument("--tokens", type=int, default=16384, help="packed tokens per step")
    g.add_argument("--res", type=int, default=256, help="frame side in pixels")
    g.add_argument("--turns", type=int, default=3)
    g.add_argument("--text-len", type=int, default=40, help="text tokens per step")
    g.add_argument("--steps", type=int, default=5)
    g.add_argument("--warmup", type=int, default=2)
    g.add_argument("--no-checkpointing", action="store_true")
    args = ap.parse_args()
    rec = bench_cpu(args) if args.mode == "cpu" else bench_gpu(args)
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
