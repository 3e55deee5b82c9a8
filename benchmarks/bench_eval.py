"""Throughput of `vincie eval` on this machine.

1. MagicBrush metrics: turns per second for L1 + L2 + CLIP-I + CLIP-T + DINO with the real architectures
   (CLIP ViT-B/32 and DINO ViT-S/16 built from their configs with random weights: same compute as the
   released weights, no download), on 512x512 images like MagicBrush's, and the implied time for the
   1,053 turns of the test split.
2. MSE-Bench judging overhead: judgements per second against a local OpenAI-compatible server that answers
   at once, so the number is what our side costs (image encoding, requests, parsing, cache writes); a real
   judge is slower by its own latency divided by --concurrency.

    python benchmarks/bench_eval.py                 # both
    python benchmarks/bench_eval.py --only judge --sessions 100 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bench_metrics(n_pairs: int, batch_size: int, threads: int | None) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, ViTConfig, ViTModel
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from vincie_cli.eval.magicbrush import MBSession, MBTurn, collect_pairs, score_pairs
    from vincie_cli.eval.metrics import METRICS, FeatureExtractor

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig()).eval()  # the defaults are ViT-B/32 (224 px, patch 32) + the 512-wide text tower
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    dino_cfg = ViTConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=224,
        patch_size=16,
    )
    dino = ViTModel(dino_cfg, add_pooling_layer=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        sessions = []
        for i in range(n_pairs):
            d = root / "gt" / str(i)
            d.mkdir(parents=True)
            for name in ("in", "out"):
                Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(d / f"{name}.png")
            (root / "res" / str(i)).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(
                root / "res" / str(i) / "turn1.png"
            )
            caption = "a photo of a dog sitting on a red sofa next to a window"
            sessions.append(MBSession(str(i), [MBTurn(1, d / "in.png", d / "out.png", "x", "out.png", caption)]))
        pairs, _ = collect_pairs(sessions, root / "res", ["iterative"], False)
        fx = FeatureExtractor((clip, tok), dino, "cpu", batch_size)
        score_pairs(pairs[:batch_size], list(METRICS), fx, batch_size)  # warm-up
        t0 = time.perf_counter()
        score_pairs(pairs, list(METRICS), fx, batch_size)
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        score_pairs(pairs, ["l1", "l2"], None, batch_size)
        dt_px = time.perf_counter() - t0
    return {
        "bench": "magicbrush_metrics",
        "pairs": n_pairs,
        "image": "512x512",
        "threads": torch.get_num_threads(),
        "pairs_per_s_all_metrics": round(n_pairs / dt, 2),
        "pairs_per_s_l1_l2_only": round(n_pairs / dt_px, 2),
        "test_split_1053_turns_s": round(1053 / (n_pairs / dt), 1),
    }


def bench_judge(n_sessions: int, turns: int, concurrency: int) -> dict:
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from tests.fakes.openai_server import FakeOpenAI
    from vincie_cli.eval import msebench
    from vincie_cli.eval.judge import JudgeConfig

    rng = np.random.default_rng(0)

    def png() -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    answer = {"content": json.dumps({"reason": "fine", "prompt_following": 9, "consistency": 9})}
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(handler=lambda body: answer) as srv:
        root = Path(tmp)
        table = {
            "image": [{"bytes": png(), "path": None} for _ in range(n_sessions)],
            "index": list(range(n_sessions)),
            "context": [[f"edit {k}" for k in range(turns)] for _ in range(n_sessions)],
        }
        pq.write_table(pa.table(table), root / "bench.parquet")
        for i in range(n_sessions):
            for k in range(1, turns + 1):
                (root / "res" / str(i)).mkdir(parents=True, exist_ok=True)
                (root / "res" / str(i) / f"turn{k}.png").write_bytes(png())
        sessions = msebench.load_benchmark(str(root / "bench.parquet"))
        judge = JudgeConfig(base_url=srv.base_url, model="bench")
        prompt = msebench.load_judge_prompt(None)
        t0 = time.perf_counter()
        report = msebench.run_msebench(sessions, root / "res", root / "run", judge, prompt, concurrency=concurrency)
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        msebench.run_msebench(sessions, root / "res", root / "run", judge, prompt, concurrency=concurrency)
        dt_cached = time.perf_counter() - t0
    n = report["summary"]["judgements_asked"]
    return {
        "bench": "msebench_judging_overhead",
        "sessions": n_sessions,
        "turns": turns,
        "concurrency": concurrency,
        "image": "256x256",
        "judgements": n,
        "judgements_per_s": round(n / dt, 1),
        "resume_all_cached_s": round(dt_cached, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["metrics", "judge"], default=None)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    if args.only in (None, "metrics"):
        print(json.dumps(bench_metrics(args.pairs, args.batch_size, args.threads)), flush=True)
    if args.only in (None, "judge"):
        print(json.dumps(bench_judge(args.sessions, args.turns, args.concurrency)), flush=True)


if __name__ == "__main__":
    main()
