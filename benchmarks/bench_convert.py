"""Conversion time and peak RAM of `vincie convert` on a large release folder with random weights.

Writes a release-layout folder: `dit.pth` (a DiT config built on the meta device, random fp32 weights; by
default ~1.2B parameters), `vae.pth` (the released VAE architecture with 5-D weights) and `llm14b/` (a scaled
QWen v1 in safetensors shards + a byte-level `qwen.tiktoken`). Then converts it in a child process and
reports the child's wall time and peak RSS (`ru_maxrss`), next to the RSS of a child that only imports the
same libraries. Usage:

    .venv/bin/python benchmarks/bench_convert.py                 # ~1.2B DiT (about 4.9 GB fp32 on disk)
    .venv/bin/python benchmarks/bench_convert.py --dim 2560 --layers 32 --mm-layers 10   # the 3B release shape
    .venv/bin/python benchmarks/bench_convert.py --tiny          # seconds; checks the script runs
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _mib(kib: int) -> float:
    return kib / 1024.0


def write_release(root: Path, args: argparse.Namespace) -> dict:
    """A release-layout folder with random weights; returns sizes and parameter counts."""
    import torch
    from safetensors.torch import save_file

    from vincie_cli.model.dit import DiTConfig, build_dit
    from vincie_cli.model.presets import swiglu_hidden
    from vincie_cli.model.vae import VAEConfig, build_vae

    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    qwen_hidden = args.qwen_hidden
    cfg = DiTConfig(
        vid_dim=args.dim,
        heads=args.dim // 128 if args.dim >= 128 else 2,
        head_dim=128 if args.dim >= 128 else args.dim // 2,
        num_layers=args.layers,
        mm_layers=args.mm_layers,
        mlp_hidden=swiglu_hidden(args.dim),
        txt_in_dim=qwen_hidden,
        rope_dim=128 if args.dim >= 128 else args.dim // 2,
    )
    meta = build_dit(cfg, device="meta")
    sd = {}
    for k, v in meta.state_dict().items():
        if k.endswith("rope.rope.freqs"):
            continue  # the release may leave the buffers out; they are recomputed
        sd[k] = torch.randn(v.shape, generator=g) * 0.02
    dit_params = sum(v.numel() for v in sd.values())
    torch.save(sd, root / "dit.pth")
    del sd

    vae_cfg = VAEConfig() if not args.tiny else VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1)
    vae_sd = {}
    n_up = len(vae_cfg.block_out_channels) - 1
    for k, v in build_vae(vae_cfg, device="meta").state_dict().items():
        shape = list(v.shape)
        if "upscale_conv" in k:
            block = int(k.split("up_blocks.")[1].split(".")[0])
            z_r = 2 if block < min(2, n_up - 1) else 1
            shape[0] *= z_r
        if len(shape) == 4:
            kt = 3 if shape[-1] == 3 and "down_blocks.0.downsamplers" not in k else 1
            shape = shape[:2] + [kt] + shape[2:]
        vae_sd[k] = (torch.randn(shape, generator=g) * 0.02).bfloat16()
    vae_params = sum(v.numel() for v in vae_sd.values())
    torch.save(vae_sd, root / "vae.pth")
    del vae_sd

    llm = root / "llm14b"
    llm.mkdir(exist_ok=True)
    layers, vocab = args.qwen_layers, 256 + 208
    inter = 2 * swiglu_hidden(qwen_hidden)
    (llm / "config.json").write_text(
        json.dumps(
            {
                "model_type": "qwen",
                "hidden_size": qwen_hidden,
                "num_hidden_layers": layers,
                "num_attention_heads": max(1, qwen_hidden // 128),
                "kv_channels": min(128, qwen_hidden),
                "intermediate_size": inter,
                "vocab_size": vocab,
                "layer_norm_epsilon": 1e-6,
                "rotary_emb_base": 10000,
                "rotary_pct": 1.0,
                "seq_length": 2048,
            }
        )
    )
    (llm / "qwen.tiktoken").write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    weight_map, llm_params = {}, 0
    for i in range(layers + 1):
        shard = {}
        if i == 0:
            shard["transformer.wte.weight"] = torch.randn(vocab, qwen_hidden, generator=g)
            shard["transformer.ln_f.weight"] = torch.ones(qwen_hidden)
        if i < layers:
            p = f"transformer.h.{i}."
            shard[p + "ln_1.weight"] = torch.ones(qwen_hidden)
            shard[p + "ln_2.weight"] = torch.ones(qwen_hidden)
            shard[p + "attn.c_attn.weight"] = torch.randn(3 * qwen_hidden, qwen_hidden, generator=g) * 0.02
            shard[p + "attn.c_attn.bias"] = torch.zeros(3 * qwen_hidden)
            shard[p + "attn.c_proj.weight"] = torch.randn(qwen_hidden, qwen_hidden, generator=g) * 0.02
            for name, shape in (
                ("w1", (inter // 2, qwen_hidden)),
                ("w2", (inter // 2, qwen_hidden)),
                ("c_proj", (qwen_hidden, inter // 2)),
            ):
                shard[p + f"mlp.{name}.weight"] = torch.randn(shape, generator=g) * 0.02
        shard = {k: v.bfloat16() for k, v in shard.items()}
        if not shard:
            continue
        name = f"model-{i + 1:05d}-of-{layers + 1:05d}.safetensors"
        save_file(shard, str(llm / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        llm_params += sum(v.numel() for v in shard.values())
    (llm / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return {
        "dit_config": cfg.to_dict(),
        "params": {"dit": dit_params, "vae": vae_params, "llm": llm_params},
        "bytes": {
            "dit.pth": (root / "dit.pth").stat().st_size,
            "vae.pth": (root / "vae.pth").stat().st_size,
            "llm14b": sum(f.stat().st_size for f in llm.iterdir()),
        },
    }


CHILD_IMPORTS = (
    "import torch, tiktoken, safetensors; from diffusers.models.autoencoders.vae import Decoder, Encoder; "
    "from transformers import Qwen2Config, Qwen2Model; import vincie_cli.model.convert"
)


def child_convert(release: str, out: str, dtype: str) -> None:
    """Runs in the child: convert, then print wall time and own peak RSS as JSON."""
    import torch  # noqa: F401

    from vincie_cli.model.convert import convert_release
    from vincie_cli.model.weights import dtype_from_name

    t0 = time.perf_counter()
    summary = convert_release(release, out, dtype=dtype_from_name(dtype))
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_kib": rss, "sha256": summary["sha256"]}))


def child_imports() -> None:
    exec(CHILD_IMPORTS)
    print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def _run_child(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"child failed ({res.returncode}): {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=2048, help="DiT width (default 2048 -> ~1.2B parameters with 20 layers)")
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--mm-layers", type=int, default=6)
    ap.add_argument("--qwen-hidden", type=int, default=1024, help="width of the stand-in QWen text encoder")
    ap.add_argument("--qwen-layers", type=int, default=8)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--tiny", action="store_true", help="small sizes (seconds); for smoke tests")
    ap.add_argument("--workdir", default=None, help="where to write the release and output (default: a temp dir)")
    ap.add_argument("--child-write", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--child-convert", nargs=3, metavar=("RELEASE", "OUT", "DTYPE"), help=argparse.SUPPRESS)
    ap.add_argument("--child-imports", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tiny:
        args.dim, args.layers, args.mm_layers, args.qwen_hidden, args.qwen_layers = 64, 2, 1, 64, 2
    if args.child_write:
        print(json.dumps(write_release(Path(args.child_write), args)))
        return {}
    if args.child_convert:
        child_convert(*args.child_convert)
        return {}
    if args.child_imports:
        child_imports()
        return {}

    # Every step runs in its own child and this process never imports torch: a forked child starts with
    # its parent's peak RSS in ru_maxrss, so a big parent would hide the child's own peak.
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_"))
    sizes = [f"--dim={args.dim}", f"--layers={args.layers}", f"--mm-layers={args.mm_layers}"]
    sizes += [f"--qwen-hidden={args.qwen_hidden}", f"--qwen-layers={args.qwen_layers}"] + ["--tiny"] * args.tiny
    try:
        t0 = time.perf_counter()
        info = _run_child([*sizes, "--child-write", str(work / "release")])
        write_s = time.perf_counter() - t0
        base = _run_child(["--child-imports"])
        conv = _run_child(["--child-convert", str(work / "release"), str(work / "out"), args.dtype])
        out_bytes = sum(f.stat().st_size for f in (work / "out").rglob("*") if f.is_file())
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    total_in = sum(info["bytes"].values())
    result = {
        **info,
        "write_release_s": round(write_s, 2),
        "convert_s": round(conv["seconds"], 2),
        "convert_peak_rss_mib": round(_mib(conv["peak_rss_kib"]), 1),
        "imports_only_rss_mib": round(_mib(base["peak_rss_kib"]), 1),
        "input_mib": round(total_in / 2**20, 1),
        "output_mib": round(out_bytes / 2**20, 1),
        "largest_input_mib": round(max(info["bytes"].values()) / 2**20, 1),
        "dtype": args.dtype,
    }
    p, r = info["params"], result
    print(
        f"DiT {p['dit'] / 1e9:.3f}B params ({info['bytes']['dit.pth'] / 2**30:.2f} GiB), VAE {p['vae'] / 1e6:.1f}M, "
        f"text {p['llm'] / 1e6:.1f}M; input {r['input_mib']:.0f} MiB -> output {r['output_mib']:.0f} MiB ({args.dtype})"
    )
    print(
        f"convert: {r['convert_s']:.1f} s, peak RSS {r['convert_peak_rss_mib']:.0f} MiB (imports alone "
        f"{r['imports_only_rss_mib']:.0f} MiB; largest input file {r['largest_input_mib']:.0f} MiB)"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
