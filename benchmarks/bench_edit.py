"""Benchmark of `vincie edit`: seconds per turn and peak memory for each speed / memory option.

CPU section (default): the `tiny` model (random weights) runs a five-turn session per option, each option in
its own process so its peak resident memory is its own. Options: the reference settings, --roundtrip png,
--batched-cfg, --compile, --precision bf16, --chain current,next, --context 1, and the text cache switched
off (every round re-encodes its prompts, as the reference does).

GPU section (--gpu): the 3B architecture with random weights (DiT and VAE as released; a width-5120 byte
text encoder stands in for QWen-14B, whose cost is paid once per prompt) runs five-turn sessions at 256² and
512² area through the real `EditSession` on CUDA; it reports the transformer (sampling) time per turn, the
session total, and the achieved TFLOP/s as a fraction of the card's measured bf16 matmul rate.

    python benchmarks/bench_edit.py                    # CPU, tiny model, every option
    python benchmarks/bench_edit.py --gpu              # CUDA, 3B architecture, 256² and 512²
    python benchmarks/bench_edit.py --gpu --tiny       # the GPU code path with the tiny model (CPU, seconds)
    python benchmarks/bench_edit.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

PROMPTS = [
    "add a red hat to the person",
    "make it snow",
    "turn the sky purple at sunset",
    "put a small dog next to the bench",
    "change the season to autumn",
]

CPU_OPTIONS = {
    "reference": {},
    "roundtrip-png": {"roundtrip": "png"},
    "batched-cfg": {"batched_cfg": True},
    "compile": {"compile": True},
    "bf16": {"precision": "bf16"},
    "chain-current-next": {"chain": "current,next"},
    "context-1": {"context": 1},
    "no-text-cache": {},
}

GPU_MODES = {
    "fp32 two-pass (reference)": {"precision": "fp32", "attention": "bf16"},
    "bf16 two-pass": {"precision": "bf16"},
    "bf16 batched-cfg": {"precision": "bf16", "batched_cfg": True},
    "bf16 batched-cfg compile": {"precision": "bf16", "batched_cfg": True, "compile": True},
}


def test_image(path: Path, width: int = 320, height: int = 240) -> Path:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    a = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 9.0)], -1) * 255
    Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(path)
    return path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_cpu_option(
    name: str, steps: int, resolution: int, turns: int, model_dir: Path, repeats: int = 3, threads: int = 1
) -> dict:
    """One option in this process: `repeats` sessions of `turns` turns (the fastest counts, which is the
    least disturbed by other work on a shared machine); seconds per turn and peak RSS."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    from vincie_cli.edit.models import load_model
    from vincie_cli.edit.session import EditSession
    from vincie_cli.edit.settings import EditSettings

    torch.manual_seed(0)
    settings = EditSettings.from_dict({"steps": steps, "resolution": resolution, "device": "cpu", **CPU_OPTIONS[name]})
    model = load_model(str(model_dir), settings)
    encodes = [0]
    inner = model.text_encoder.encode

    def counting_encode(prompts):
        encodes[0] += len(prompts)
        return inner(prompts)

    model.text_encoder.encode = counting_encode
    if name == "no-text-cache":  # the reference: every round encodes its prompts again
        session_text = model.session_text

        def uncached(prompts):
            model.clear_text_cache()
            return session_text(prompts)

        model.session_text = uncached
    rss_loaded = peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        image = test_image(Path(tmp) / "in.png")
        # warm-up (kernels, allocator; a compiled model compiles here): one short session, not timed
        EditSession.create(model, [image], Path(tmp) / "warm", settings.updated(steps=2)).run(PROMPTS[:2])
        best = None
        for i in range(repeats):
            model.clear_text_cache()  # every session encodes its own prompts
            encodes[0] = 0
            sess = EditSession.create(model, [image], Path(tmp) / f"s{i}", settings)
            t0 = time.perf_counter()
            recs = sess.run(PROMPTS[:turns])
            total = time.perf_counter() - t0
            if best is None or total < best[0]:
                best = (total, recs, encodes[0])
    total, recs, n_encodes = best
    return {
        "option": name,
        "turns": turns,
        "steps": steps,
        "resolution": resolution,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "seconds_per_turn": total / turns,
        "turn_seconds": [r["seconds"]["total"] for r in recs],
        "transformer_seconds": sum(r["seconds"]["sampling"] for r in recs),
        "dit_calls": sum(r["dit_calls"] for r in recs),
        "text_encodes": n_encodes,
        "peak_rss_mib": peak_rss_mib(),
        "rss_after_load_mib": rss_loaded,
    }


def cpu_section(args) -> list[dict]:
    from vincie_cli.model.presets import build_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny"
        build_model("tiny", seed=0).save_pretrained(model_dir)
        for name in args.options:
            if args.in_process:
                row = run_cpu_option(
                    name, args.steps, args.resolution, args.turns, model_dir, args.repeats, args.threads
                )
            else:
                cmd = [sys.executable, __file__, "--one", name, "--model-dir", str(model_dir), "--steps",
                       str(args.steps), "--resolution", str(args.resolution), "--turns", str(args.turns),
                       "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{name:20s} {row['seconds_per_turn']:7.3f} s/turn  transformer {row['transformer_seconds']:7.2f} s  "
                f"DiT calls {row['dit_calls']:4d}  text encodes {row['text_encodes']:3d}  "
                f"peak RSS {row['peak_rss_mib']:7.0f} MiB",
                flush=True,
            )
    return rows


# --------------------------------------------------------------------------------------------
# GPU section


def bench_model_config(tiny: bool):
    from vincie_cli.model.dit import DiTConfig
    from vincie_cli.model.presets import ModelConfig, get_preset
    from vincie_cli.model.text import TextEncoderConfig
    from vincie_cli.model.vae import VAEConfig

    if tiny:
        return get_preset("tiny")
    text = TextEncoderConfig(kind="byte", dim=5120, max_length=150, layers=0, dtype="bf16")
    return ModelConfig("3b-random", DiTConfig(), VAEConfig(), text)


def session_flops(model, recs: list[dict], steps: int) -> list[float]:
    """Matmul FLOPs of each turn's sampling: `steps` guided evaluations, each a positive and a negative forward
    (batched or not, the work is the same), with the turn's exact video and text lengths."""
    from vincie_cli.model.dit import forward_flops

    cfg = model.dit.config
    _, ph, pw = cfg.patch_size
    f = model.vae.spatial_factor
    out = []
    for r in recs:
        w, h = r["size"]
        vid = (r["context_frames"] + 1) * (h // f // ph) * (w // f // pw)
        pos = int(model.session_text(r["texts"])[1].sum())
        neg = int(model.negative_text(r["negative_prompt"])[1].sum())
        out.append(steps * (forward_flops(cfg, [vid], [pos]) + forward_flops(cfg, [vid], [neg])))
    return out


def gpu_section(args) -> dict:
    import torch

    from benchmarks.gpu_bench import matmul_tflops
    from vincie_cli.edit.session import EditSession
    from vincie_cli.edit.settings import EditSettings
    from vincie_cli.model.presets import build_model

    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA (use --tiny for a CPU smoke run)")
    config = bench_model_config(args.tiny)
    areas = args.areas or ([32, 64] if args.tiny else [256, 512])
    steps = 3 if args.tiny else args.steps
    rate = matmul_tflops(device, 256 if args.tiny else 8192, 2 if args.tiny else 10)
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}: "
          f"bf16 matmul {rate:.1f} TFLOP/s", flush=True)  # fmt: skip
    results = {"device": device.type, "matmul_tflops": rate, "runs": []}
    model = None
    with tempfile.TemporaryDirectory() as tmp:
        image = test_image(Path(tmp) / "in.png", 640, 640)
        for area in areas:
            for mode, opts in GPU_MODES.items():
                if mode.startswith("fp32") and area not in args.fp32_areas and not args.tiny:
                    continue
                if mode.endswith("compile") and args.tiny:
                    continue
                dtype = torch.float32 if opts["precision"] == "fp32" else torch.bfloat16
                if model is None or model.dit.dtype != dtype:
                    model = None
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    model = build_model(config, device=device, dtype=dtype, seed=0)
                s = EditSettings.from_dict({"steps": steps, "resolution": area, "device": str(device), **opts})
                model.dit.attention = s.attention
                out = Path(tmp) / f"{area}-{len(results['runs'])}"
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                recs = EditSession.create(model, [image], out, s).run(PROMPTS[: args.turns])
                if s.compile:  # the first session paid for compilation: measure a second one
                    recs = EditSession.create(model, [image], Path(str(out) + "-again"), s).run(PROMPTS[: args.turns])
                frame = tuple(recs[0]["size"])
                flops = session_flops(model, recs, steps)
                sampling = [r["seconds"]["sampling"] for r in recs]
                row = {
                    "area": area,
                    "mode": mode,
                    "frame": list(frame),
                    "turn_transformer_s": sampling,
                    "session_transformer_s": sum(sampling),
                    "session_total_s": sum(r["seconds"]["total"] for r in recs),
                    "last_turn_tflops": flops[-1] / sampling[-1] / 1e12,
                    "last_turn_fraction_of_matmul": flops[-1] / sampling[-1] / 1e12 / rate,
                    "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                }
                results["runs"].append(row)
                print(
                    f"{area}² {mode:28s} session transformer {row['session_transformer_s']:7.2f} s  "
                    f"(turns {' '.join(f'{x:.2f}' for x in sampling)})  "
                    f"last turn: {row['last_turn_tflops']:.1f} TFLOP/s "
                    f"= {100 * row['last_turn_fraction_of_matmul']:.0f}% of matmul rate",
                    flush=True,
                )
    return results


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="the GPU section (3B architecture on CUDA)")
    p.add_argument("--tiny", action="store_true", help="with --gpu: the tiny model on the CPU (smoke run)")
    p.add_argument("--options", nargs="*", default=list(CPU_OPTIONS), choices=list(CPU_OPTIONS))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--areas", type=int, nargs="*", default=None, help="GPU: pixel areas [256 512; tiny: 32 64]")
    p.add_argument("--fp32-areas", type=int, nargs="*", default=[256], help="areas that also run the fp32 reference")
    p.add_argument("--repeats", type=int, default=3, help="CPU: sessions per option; the fastest counts")
    p.add_argument("--threads", type=int, default=1, help="CPU: torch threads (1 is steadiest on a shared box)")
    p.add_argument("--in-process", action="store_true", help="CPU options in this process (no per-option RSS)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        row = run_cpu_option(
            args.one, args.steps, args.resolution, args.turns, args.model_dir, args.repeats, args.threads
        )
        print(json.dumps(row))
        return row
    if args.gpu:
        result = gpu_section(args)
    else:
        rows = cpu_section(args)
        ref = next((r for r in rows if r["option"] == "reference"), None)
        result = {"device": "cpu", "rows": rows}
        if ref:
            result["speedup"] = {
                r["option"]: ref["seconds_per_turn"] / r["seconds_per_turn"] for r in rows if r["seconds_per_turn"] > 0
            }
            print("relative to reference: " + ", ".join(f"{k} x{v:.2f}" for k, v in result["speedup"].items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
