"""GPU benchmark of the VINCIE-3B transformer (random weights): bf16 forward speed vs the card's matmul rate.

Measures, on one CUDA device:
1. the card's dense bf16 matmul rate (TFLOP/s) on large square matmuls;
2. bf16 forward time of the 3B architecture at turn 5 of a session (6 frames + 5 prompts of text), at
   256² and 512² pixel area, with the achieved TFLOP/s (matmul + attention FLOPs of `forward_flops`)
   as a fraction of (1);
3. the bf16-vs-fp32 forward difference (max_abs, rel_l2) of the same random model at 256².

    python benchmarks/gpu_bench.py                # on a CUDA machine
    python benchmarks/gpu_bench.py --tiny         # same code path on CPU with a tiny config, in seconds
    python benchmarks/gpu_bench.py --json out.json --skip-fp32
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vincie_cli.model.dit import DiTConfig, VincieTransformer, build_dit, forward_flops  # noqa: E402
from vincie_cli.model.layers import flash_attn_available, rope_frequencies  # noqa: E402

TINY = DiTConfig(
    vid_dim=64, txt_in_dim=48, heads=2, head_dim=32, num_layers=3, mm_layers=1, mlp_hidden=256, rope_dim=32
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_tflops(device: torch.device, n: int, repeats: int) -> float:
    """Dense bf16 (n x n) @ (n x n) rate in TFLOP/s (8 chained matmuls per timed call)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)

    def run():
        for _ in range(8):
            torch.mm(a, b)

    return 8 * 2 * n**3 / timed(run, device, repeats, warmup=2) / 1e12


def random_model(cfg: DiTConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> VincieTransformer:
    """Build on meta, materialise on `device`, fill with seeded random weights of realistic scale."""
    model = build_dit(cfg, device="meta", dtype=dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embedding" not in name:  # Linear: N(0, 1/fan_in)
                p.copy_(torch.randn(p.shape, generator=g, device=device) * p.shape[1] ** -0.5)
            elif name.endswith(("_scale", ".weight")) and p.ndim == 1:  # norm weights, ada scales
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g, device=device))
            else:
                p.copy_(torch.randn(p.shape, generator=g, device=device) * (0.02 if p.ndim == 1 else 1.0))
        for blk in model.blocks:
            blk.attn.rope.rope.freqs = rope_frequencies(blk.attn.rope.axis_dim, device=device)
    return model.eval()


def session_inputs(cfg: DiTConfig, latent: int, frames: int, text: int, device, dtype, seed: int = 1):
    g = torch.Generator(device=device).manual_seed(seed)
    vid = torch.randn(frames * latent * latent, cfg.vid_in_channels, device=device, generator=g).to(dtype)
    txt = torch.randn(text, cfg.txt_in_dim, device=device, generator=g).to(dtype)
    return (
        vid, txt,
        torch.tensor([[frames, latent, latent]], device=device), torch.tensor([[text]], device=device),
        torch.tensor([998.3], device=device),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny config on CPU (a smoke run of the same code)")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--text", type=int, default=150, help="text tokens of the session (5 prompts x ~30)")
    p.add_argument("--areas", default="256,512", help="pixel-area sides to measure")
    p.add_argument("--skip-fp32", action="store_true", help="skip the bf16-vs-fp32 comparison")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device; use --tiny for a CPU smoke run")
    cfg = TINY if args.tiny else DiTConfig()
    areas = [32, 64] if args.tiny else [int(a) for a in args.areas.split(",")]
    text = 20 if args.tiny else args.text
    torch.backends.cuda.matmul.allow_tf32 = False

    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    result["flash_attn"] = flash_attn_available()
    result["matmul_tflops"] = matmul_tflops(device, 256 if args.tiny else 8192, args.repeats)
    print(f"device: {result['device']}  flash-attn: {result['flash_attn']}")
    print(f"bf16 matmul rate: {result['matmul_tflops']:.1f} TFLOP/s")

    model = random_model(cfg, device, torch.bfloat16)
    model.attention = "bf16"
    rows = []
    for area in areas:
        latent = area // 8
        inputs = session_inputs(cfg, latent, args.frames, text, device, torch.bfloat16)
        vid_tokens = args.frames * (latent // 2) ** 2
        flops = forward_flops(cfg, [vid_tokens], [text])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            sec = timed(lambda inputs=inputs: model(*inputs), device, args.repeats)
        tflops = flops / sec / 1e12
        row = {
            "area": area, "tokens": vid_tokens + text, "ms": sec * 1e3, "tflop": flops / 1e12, "tflops": tflops,
            "fraction_of_matmul": tflops / result["matmul_tflops"],
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan,
        }  # fmt: skip
        rows.append(row)
    result["bf16_forward"] = rows
    print("| area | tokens | forward ms | TFLOP | TFLOP/s | of matmul rate | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['area']}² | {r['tokens']} | {r['ms']:.1f} | {r['tflop']:.2f} | {r['tflops']:.1f} | "
            f"{100 * r['fraction_of_matmul']:.0f}% | {r['peak_mem_gib']:.1f} |"
        )

    if not args.skip_fp32:
        latent = areas[0] // 8
        x16 = session_inputs(cfg, latent, args.frames, text, device, torch.bfloat16)
        with torch.no_grad():
            out16 = model(*x16).double()
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model32 = random_model(cfg, device, torch.float32)  # same seed: same weights before rounding
        x32 = session_inputs(cfg, latent, args.frames, text, device, torch.float32)
        diffs = {}
        for mode in ("fp32", "bf16"):
            model32.attention = mode
            with torch.no_grad():
                out32 = model32(*x32).double()
            if mode == "fp32":
                ref = out32
            d = out16 - ref if mode == "fp32" else out32 - ref
            name = "bf16 model vs fp32" if mode == "fp32" else "fp32 model + bf16 attention vs fp32"
            diffs[name] = {"max_abs": d.abs().max().item(), "rel_l2": (d.norm() / ref.norm()).item()}
        result["bf16_vs_fp32"] = diffs
        for name, d in diffs.items():
            print(f"{name} ({areas[0]}²): max_abs {d['max_abs']:.3g}, rel_l2 {d['rel_l2']:.3g}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
