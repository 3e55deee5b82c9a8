"""`vincie eval`: MSE-Bench with any OpenAI-compatible judge, MagicBrush metrics per turn, the synthetic
benchmark, and comparisons of several runs. Library code is imported inside the commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from vincie_cli.cli._common import EXIT_PARTIAL, device_option, emit, handle_errors
from vincie_cli.utils.io import UsageError


def _gen_settings(pairs: tuple[str, ...], seed: int, device: str) -> dict[str, Any]:
    """--gen-set KEY=VALUE pairs (values parsed as JSON when they are JSON) plus seed and device."""
    from vincie_cli.edit.settings import parse_setting_pairs

    return {"seed": seed, "device": device, **parse_setting_pairs(pairs)}


def _source(model: str | None, results: str | None) -> None:
    if (model is None) == (results is None):
        raise UsageError("pass exactly one of --model (generate, then score) or --results DIR (score existing images)")


def generation_options(fn: Any) -> Any:
    fn = click.option(
        "--gen-set",
        "gen_set",
        multiple=True,
        metavar="KEY=VALUE",
        help="A setting passed to `vincie edit`'s batch mode when generating (repeatable), e.g. steps=50.",
    )(fn)
    fn = click.option("--seed", type=int, default=0, show_default=True, help="Generation seed.")(fn)
    fn = device_option(fn)
    fn = click.option(
        "--results",
        type=click.Path(path_type=str),
        default=None,
        help="Score existing images: a folder with <session id>/turn{k}.png (what `vincie edit` writes).",
    )(fn)
    fn = click.option(
        "--model", default=None, help="Generate with this model (folder, hub id, or `mini`: the packaged one); score."
    )(fn)
    fn = click.option(
        "--name", default=None, help="Run name in reports and comparisons [default: the out folder's name]."
    )(fn)
    fn = click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path), help="Run folder.")(fn)
    return fn


@click.group("eval")
def eval_group() -> None:
    """Score models turn by turn: MSE-Bench (VLM judge), MagicBrush (L1, L2, CLIP-I, CLIP-T, DINO), the
    synthetic benchmark; compare runs.

    Every run writes report.json, report.md and report.png into its --out folder.
    """


# --------------------------------------------------------------------------------------------
# mse-bench


@eval_group.command(
    "mse-bench",
    epilog="""\b
Examples:
  vincie eval mse-bench --results runs/3b/images --benchmark data/MSE-Bench -o runs/3b/mse \\
      --judge-model gpt-4o
  vincie eval mse-bench --model ckpt/vincie-3b -o runs/3b/mse --base-url http://localhost:8000/v1 \\
      --judge-model Qwen/Qwen2.5-VL-72B-Instruct --api-key-env VLLM_KEY --concurrency 32
  vincie eval mse-bench --results mse-results-vincie_7b.parquet -o runs/7b --judge-prompt-file official.txt
""",
)
@generation_options
@click.option(
    "--benchmark",
    default="leigangqu/MSE-Bench",
    show_default=True,
    help="MSE-Bench: a local parquet file or folder, or the hub dataset id (needs network).",
)
@click.option("--base-url", default="https://api.openai.com/v1", show_default=True, help="OpenAI-compatible endpoint.")
@click.option("--judge-model", default="gpt-4o", show_default=True, help="Judge model name (the paper used GPT-4o).")
@click.option(
    "--api-key-env",
    default="OPENAI_API_KEY",
    show_default=True,
    help="Environment variable holding the API key (never logged or written); unset sends no key.",
)
@click.option("--threshold", type=int, default=6, show_default=True, help="A turn passes when both scores are > this.")
@click.option("--concurrency", type=int, default=8, show_default=True, help="Sessions judged at the same time.")
@click.option(
    "--judge-prompt-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Use this judge instruction instead of ours ({num_prompts}, {num_images}, {editing_prompt} placeholders); "
    "a copy of the official one is recognised and reported as official.",
)
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds per judge request.")
@click.option(
    "--retries", type=int, default=6, show_default=True, help="HTTP attempts per request (429, 5xx, timeouts)."
)
@click.option(
    "--reply-retries", type=int, default=3, show_default=True, help="Asks per judgement when replies are unusable."
)
@click.option("--temperature", type=float, default=None, help="Judge sampling temperature [default: the server's].")
@click.option("--max-tokens", type=int, default=None, help="Judge reply token limit [default: the server's].")
@click.option("--limit", type=int, default=None, help="Only the first N sessions (averages then divide by N).")
@click.option("--allow-missing", is_flag=True, help="Count missing result images as failed turns instead of stopping.")
@handle_errors
def mse_bench(
    out: Path,
    name: str | None,
    model: str | None,
    results: str | None,
    device: str,
    seed: int,
    gen_set: tuple[str, ...],
    benchmark: str,
    base_url: str,
    judge_model: str,
    api_key_env: str,
    threshold: int,
    concurrency: int,
    judge_prompt_file: Path | None,
    timeout: float,
    retries: int,
    reply_retries: int,
    temperature: float | None,
    max_tokens: int | None,
    limit: int | None,
    allow_missing: bool,
) -> None:
    """MSE-Bench: judge five-turn sessions with a VLM; per-turn success rate and scores."""
    from vincie_cli.eval import msebench
    from vincie_cli.eval.generate import generate
    from vincie_cli.eval.judge import JudgeConfig
    from vincie_cli.eval.report import finalize, write_report
    from vincie_cli.utils.io import DirLock
    from vincie_cli.utils.log import get_logger

    log = get_logger("cli.eval")
    _source(model, results)
    if retries < 1 or reply_retries < 1:
        raise UsageError("--retries and --reply-retries must be at least 1")
    prompt = msebench.load_judge_prompt(judge_prompt_file)
    api_key = os.environ.get(api_key_env) or None
    if api_key is None:
        log.warning("environment variable %s is not set; the judge requests carry no API key", api_key_env)
    judge = JudgeConfig(
        base_url=base_url,
        model=judge_model,
        api_key=api_key,
        timeout=timeout,
        max_attempts=retries,
        reply_attempts=reply_retries,
        temperature=temperature,
        max_tokens=max_tokens,
    )
    with DirLock(out, "-eval"):
        sessions = msebench.load_benchmark(benchmark, limit=limit)
        if model is not None:
            sources = msebench.write_sources(sessions, out / "sources")
            res_dir = generate(
                model,
                msebench.generation_sessions(sessions, sources),
                out / "generated",
                _gen_settings(gen_set, seed, device),
            )
        else:
            res_dir = Path(results)  # type: ignore[arg-type]
            if res_dir.is_file():
                res_dir = msebench.extract_results_parquet(res_dir, sessions, out / "results")

        def on_judgement(j: msebench.TurnJudgement) -> None:
            emit(
                {
                    "type": "judgement",
                    "session": j.session,
                    "turn": j.turn,
                    "status": j.status,
                    "prompt_following": j.prompt_following,
                    "consistency": j.consistency,
                    "passed": j.passed(threshold),
                    "cached": j.cached,
                    **({"error": j.error} if j.error else {}),
                }
            )

        report = msebench.run_msebench(
            sessions, res_dir, out, judge, prompt, threshold, concurrency, allow_missing, on_judgement=on_judgement
        )
        report["config"]["benchmark"] = benchmark
        report["config"]["model"] = model
        report = finalize(report, name or out.resolve().name)
        paths = write_report(out, report)
    emit(
        {"type": "eval_report", "benchmark": "mse-bench", "name": report["name"], **paths, "summary": report["summary"]}
    )
    if report["summary"]["judge_failures"]:
        click.echo(
            f"warning: {report['summary']['judge_failures']} judgement(s) failed and count as not passed; "
            f"re-run the same command to ask them again",
            err=True,
        )
        sys.exit(EXIT_PARTIAL)


# --------------------------------------------------------------------------------------------
# compare


@eval_group.command(
    "compare",
    epilog="""\b
Examples:
  vincie eval compare runs/3b/mse runs/7b/mse -o runs/compare-mse
  vincie eval compare runs/*/magicbrush/report.json -o runs/compare-mb
""",
)
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o", "--out", "out", required=True, type=click.Path(path_type=Path), help="Folder for compare.{json,md,png}."
)
@handle_errors
def compare_cmd(runs: tuple[Path, ...], out: Path) -> None:
    """Put several runs (folders or report.json files) in one table and one plot.

    Synthetic runs with their scores.jsonl are also paired turn by turn with the first of their benchmark
    (the turns only one run passed, and a sign test on them)."""
    from vincie_cli.eval.compare import compare

    result = compare(list(runs), out)
    emit({"type": "eval_compare", **result})


# --------------------------------------------------------------------------------------------
# magicbrush


def _metric_list(spec: str) -> list[str]:
    names = [m.strip().lower().replace("-", "_") for m in spec.split(",") if m.strip()]
    known = ("l1", "l2", "clip_i", "clip_t", "dino")
    bad = [m for m in names if m not in known]
    if bad or not names:
        raise UsageError(f"--metrics {spec!r}: choose from l1, l2, clip-i, clip-t, dino")
    return names


@eval_group.command(
    "magicbrush",
    epilog="""\b
Examples:
  vincie eval magicbrush --data MagicBrush/test --results runs/3b/mb -o runs/3b/magicbrush
  vincie eval magicbrush --data mb/data --split dev --model ckpt/vincie-3b --mode both -o runs/3b/mb-dev \\
      --clip-model models/clip-vit-base-patch32 --dino-model models/dino-vits16
  vincie eval magicbrush --data MagicBrush/test --results out/ --metrics l1,l2 -o runs/quick
""",
)
@generation_options
@click.option(
    "--data",
    required=True,
    help="MagicBrush: the test folder (edit_sessions.json + images/), the dev split parquet (file or folder), "
    "or osunlp/MagicBrush (needs network).",
)
@click.option("--split", default="dev", show_default=True, help="Which parquet split to read from a folder or the hub.")
@click.option(
    "--captions",
    type=click.Path(path_type=Path),
    default=None,
    help="Local descriptions for CLIP-T ({img_id: {'<img_id>-output1.png': caption}}) [default: the test folder's].",
)
@click.option(
    "--mode",
    type=click.Choice(["iterative", "independent", "both"]),
    default="iterative",
    show_default=True,
    help="iterative: turn k edits the model's turn k-1 output; independent: it edits the ground-truth input.",
)
@click.option("--metrics", default="l1,l2,clip-i,clip-t,dino", show_default=True, help="Metrics to compute.")
@click.option("--clip-model", default="openai/clip-vit-base-patch32", show_default=True, help="CLIP: hub id or folder.")
@click.option("--dino-model", default="facebook/dino-vits16", show_default=True, help="DINO ViT: hub id or folder.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Images per metric forward.")
@click.option("--limit", type=int, default=None, help="Only the first N sessions (sorted by id).")
@click.option("--allow-missing", is_flag=True, help="Score the turns that exist instead of stopping at missing images.")
@handle_errors
def magicbrush_cmd(
    out: Path,
    name: str | None,
    model: str | None,
    results: str | None,
    device: str,
    seed: int,
    gen_set: tuple[str, ...],
    data: str,
    split: str,
    captions: Path | None,
    mode: str,
    metrics: str,
    clip_model: str,
    dino_model: str,
    batch_size: int,
    limit: int | None,
    allow_missing: bool,
) -> None:
    """MagicBrush multi-turn: L1, L2, CLIP-I, CLIP-T and DINO per turn."""
    from vincie_cli.cli._common import resolve_device
    from vincie_cli.eval import magicbrush
    from vincie_cli.eval import metrics as mx
    from vincie_cli.eval.generate import generate
    from vincie_cli.eval.report import finalize, write_report
    from vincie_cli.utils.io import DirLock

    _source(model, results)
    names = _metric_list(metrics)
    modes = ["iterative", "independent"] if mode == "both" else [mode]
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    with DirLock(out, "-eval"):
        sessions = magicbrush.load_magicbrush(data, out, split=split, captions=captions, limit=limit)
        dev = resolve_device(device)
        if model is not None:
            res_dir = generate(
                model,
                magicbrush.generation_sessions(sessions, modes),
                out / "generated",
                _gen_settings(gen_set, seed, device),
            )
        else:
            res_dir = Path(results)  # type: ignore[arg-type]
        clip = mx.load_clip(clip_model, dev) if {"clip_i", "clip_t"} & set(names) else None
        dino = mx.load_dino(dino_model, dev) if "dino" in names else None
        features = mx.FeatureExtractor(clip, dino, dev, batch_size) if (clip or dino) else None
        report = magicbrush.run_magicbrush(sessions, res_dir, out, modes, names, features, allow_missing, batch_size)
        report["config"].update(
            {
                "data": data,
                "split": split,
                "model": model,
                "clip_model": clip_model if clip else None,
                "dino_model": dino_model if dino else None,
            }
        )
        report = finalize(report, name or out.resolve().name)
        paths = write_report(out, report)
    emit(
        {
            "type": "eval_report",
            "benchmark": "magicbrush",
            "name": report["name"],
            **paths,
            "summary": report["summary"],
        }
    )


# --------------------------------------------------------------------------------------------
# synthetic


@eval_group.command(
    "synthetic",
    epilog="""\b
Examples:
  vincie eval synthetic --model runs/mini/final --sessions 100 --size 128 -o runs/mini/synth
  vincie eval synthetic --model runs/mini/final --benchmark bench/ --no-context -o runs/mini/synth-chained
  vincie eval synthetic --benchmark bench/ --results bench/images -o runs/oracle   # exact frames: 100%
""",
)
@generation_options
@click.option(
    "--benchmark", default=None, help="A saved held-out benchmark folder [default: make one in OUT/benchmark]."
)
@click.option("--sessions", type=int, default=50, show_default=True, help="Sessions to make when no --benchmark.")
@click.option("--size", type=int, default=128, show_default=True, help="Frame size to make when no --benchmark.")
@click.option("--turns", type=int, default=5, show_default=True, help="Turns per session to make when no --benchmark.")
@click.option("--seed-offset", type=int, default=0, show_default=True, help="First held-out seed offset to make.")
@click.option(
    "--no-context", is_flag=True, help="Generate each turn from the previous output only, without session history."
)
@click.option(
    "--chain", default=None, metavar="current,next", help="Chain-of-editing masks to predict (passed to edit)."
)
@click.option(
    "--swap-instructions",
    is_flag=True,
    help="Control: generate each session with another session's instructions, scored against its own frames "
    "(a model that reads its instructions scores lower).",
)
@click.option(
    "--true-masks",
    is_flag=True,
    help="Mask control: give every turn the benchmark's true current and next change masks instead of "
    "predicting them (where the edit goes is given; the model only has to make it).",
)
@click.option(
    "--true-history",
    is_flag=True,
    help="Control: make every turn from the benchmark's exact earlier frames instead of the model's own outputs "
    "(turn k scores the turn-k edit alone, without the errors of the turns before it); with --results, score "
    "images made that way.",
)
@click.option("--limit", type=int, default=None, help="Only the first N sessions.")
@click.option("--allow-missing", is_flag=True, help="Count missing result images as failed turns instead of stopping.")
@handle_errors
def synthetic_cmd(
    out: Path,
    name: str | None,
    model: str | None,
    results: str | None,
    device: str,
    seed: int,
    gen_set: tuple[str, ...],
    benchmark: str | None,
    sessions: int,
    size: int,
    turns: int,
    seed_offset: int,
    no_context: bool,
    chain: str | None,
    swap_instructions: bool,
    true_masks: bool,
    true_history: bool,
    limit: int | None,
    allow_missing: bool,
) -> None:
    """The synthetic world's held-out benchmark, scored objectively per turn (no judge needed)."""
    from vincie_cli.eval import synthetic
    from vincie_cli.eval.generate import generate
    from vincie_cli.eval.report import finalize, write_report
    from vincie_cli.utils.io import DirLock

    _source(model, results)
    if chain is not None:
        parts = [p.strip() for p in chain.split(",") if p.strip()]
        if not parts or any(p not in ("current", "next") for p in parts):
            raise UsageError(f"--chain {chain!r}: expected current, next or current,next")
    if model is None and (no_context or chain or swap_instructions or true_masks):
        raise UsageError(
            "--no-context, --chain, --swap-instructions and --true-masks shape generation; they need --model"
        )
    if chain and true_masks:
        raise UsageError("--chain predicts the change masks that --true-masks gives; pass one of them")
    with DirLock(out, "-eval"):
        items, folder = synthetic.load_or_make(benchmark, out, sessions, size, turns, seed_offset, limit)
        if model is not None:
            settings = _gen_settings(gen_set, seed, device)
            # generate at the benchmark's frame size (area resolution), unless --gen-set says otherwise
            w, h = items[0].size
            settings.setdefault("resolution", int(round((w * h) ** 0.5)))
            if chain:
                settings["chain"] = chain
            sessions_in = synthetic.generation_sessions(items, folder, swap_instructions, true_masks)
            frames = synthetic.true_frames(items, folder) if true_history else None
            res_dir = generate(model, sessions_in, out / "generated", settings, no_context, frames)
        else:
            res_dir = Path(results)  # type: ignore[arg-type]
        report = synthetic.run_synthetic(items, res_dir, out, allow_missing, exact_inputs=true_history)
        report["config"].update(
            {
                "benchmark": str(folder), "model": model, "no_context": no_context, "chain": chain,
                "swap_instructions": swap_instructions, "true_masks": true_masks, "true_history": true_history,
                "generation": settings if model is not None else None,  # --gen-set words, seed, device
            }
        )  # fmt: skip
        report = finalize(report, name or out.resolve().name)
        paths = write_report(out, report)
    emit(
        {"type": "eval_report", "benchmark": "synthetic", "name": report["name"], **paths, "summary": report["summary"]}
    )
