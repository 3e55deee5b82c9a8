"""`vincie annotate`: videos -> clips -> sampled frames -> transition annotations by a VLM."""

from __future__ import annotations

import sys

import click

from vincie_cli.cli._common import EXIT_PARTIAL, emit, handle_errors, keep_going_option, seed_option, shard_option

EPILOG = """\b
Examples:
  # a vLLM / SGLang server (or any OpenAI-compatible API) on 4 shards of a video folder
  vincie annotate videos/ --out-dir data/ann --base-url http://127.0.0.1:8000/v1 \\
      --model Qwen/Qwen2.5-VL-72B-Instruct --concurrency 32 --shard 0/4 --keep-going
  # a local Qwen2.5-VL on one GPU, a manifest with captions
  vincie annotate clips.jsonl --out-dir data/ann --backend transformers \\
      --model ./Qwen2.5-VL-7B-Instruct --device cuda --dtype bfloat16 --batch-size 8
  # synthetic videos annotated from their ground truth
  vincie annotate 'synth/*.mp4' --out-dir data/ann --backend oracle --sampling interval --interval 1
"""


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated numbers, e.g. 0.2,0.7,1.0") from None
    if not values:
        raise click.BadParameter("expected at least one temperature")
    return values


@click.command("annotate", epilog=EPILOG)
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out-dir", "-o", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--backend",
    type=click.Choice(["openai", "transformers", "oracle"]),
    default="openai",
    show_default=True,
    help="Who writes the annotations: an OpenAI-compatible server, a local transformers VLM, or the synthetic oracle.",
)
@click.option(
    "--model", default="", help="Model name on the server (openai) or a local folder / hub id (transformers)."
)
@click.option(
    "--base-url",
    default="http://127.0.0.1:8000/v1",
    show_default=True,
    envvar="VINCIE_VLM_BASE_URL",
    help="Chat-completions endpoint root (openai backend); also $VINCIE_VLM_BASE_URL.",
)
@click.option(
    "--api-key-env",
    default=None,
    help="Name of the environment variable holding the API key [default: OPENAI_API_KEY, optional]. "
    "When given, the variable must be set.",
)
@click.option("--concurrency", type=int, default=8, show_default=True, help="Parallel requests (openai).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds per request (openai).")
@click.option("--max-retries", type=int, default=5, show_default=True, help="Retries on 429/5xx/timeouts (openai).")
@click.option(
    "--backoff",
    type=float,
    default=1.0,
    show_default=True,
    help="First retry delay (s), doubled per retry, jittered, at most 60 s; Retry-After wins.",
)
@click.option("--json-mode", is_flag=True, help="Ask the server for a JSON object (response_format json_object).")
@click.option("--max-tokens", type=int, default=1024, show_default=True, help="Longest reply, in tokens.")
@click.option("--device", default="auto", show_default=True, help="Torch device (transformers).")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="Weights dtype (transformers); auto: bfloat16 on CUDA, float32 on CPU.",
)
@click.option("--batch-size", type=int, default=4, show_default=True, help="Pairs per forward pass (transformers).")
@click.option("--image-size", type=int, default=512, show_default=True, help="Longest side of images sent to the VLM.")
@click.option(
    "--max-attempts", type=int, default=3, show_default=True, help="Replies per pair before it fails (invalid JSON...)."
)
@click.option(
    "--temperatures",
    default="0.2,0.7,1.0",
    show_default=True,
    help="Sampling temperature of attempt 1, 2, ... (the last repeats).",
)
@click.option(
    "--cuts",
    type=click.Choice(["auto", "scenedetect", "none"]),
    default="auto",
    show_default=True,
    help="Shot-cut detection: PySceneDetect when installed (auto), required, or off.",
)
@click.option("--cut-threshold", type=float, default=27.0, show_default=True, help="PySceneDetect content threshold.")
@click.option("--min-clip", type=float, default=1.0, show_default=True, help="Shortest clip kept (seconds).")
@click.option("--max-clip", type=float, default=30.0, show_default=True, help="Longer shots are split (seconds).")
@click.option(
    "--scan-fps", type=float, default=10.0, show_default=True, help="Analysis rate for cuts, black, frozen; 0: all."
)
@click.option("--skip-black/--no-skip-black", default=True, show_default=True, help="Drop black spans.")
@click.option("--skip-frozen/--no-skip-frozen", default=True, show_default=True, help="Drop frozen (still) spans.")
@click.option(
    "--frozen-min", type=float, default=2.0, show_default=True, help="Seconds a still picture must last to be dropped."
)
@click.option(
    "--crop-borders/--no-crop-borders", default=True, show_default=True, help="Crop black borders (letterbox)."
)
@click.option(
    "--sampling",
    type=click.Choice(["hybrid", "interval", "fixed"]),
    default="hybrid",
    show_default=True,
    help="Every --interval s, --num-frames spread over the clip, or a per-clip mix of both.",
)
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between frames (interval mode).")
@click.option("--num-frames", default="2-6", show_default=True, help="N or LO-HI frames per clip (fixed mode, 2..6).")
@click.option("--fixed-prob", type=float, default=0.5, show_default=True, help="Hybrid: share of clips sampled fixed.")
@click.option("--max-frames", type=int, default=20, show_default=True, help="Most frames per session (2..20).")
@click.option(
    "--min-change",
    type=float,
    default=0.5,
    show_default=True,
    help="% of the picture that must change between adjacent frames (else the later is dropped).",
)
@click.option("--frame-format", type=click.Choice(["png", "jpeg"]), default="png", show_default=True)
@click.option(
    "--frame-size", type=int, default=0, show_default=True, help="Longest side of saved frames; 0: as decoded."
)
@click.option(
    "--decoder",
    type=click.Choice(["auto", "decord", "pyav"]),
    default="auto",
    show_default=True,
    help="auto: decord where it is reliable, else PyAV.",
)
@click.option("--workers", type=int, default=2, show_default=True, help="Videos decoded in parallel.")
@shard_option
@keep_going_option
@seed_option(0)
@handle_errors
def annotate(inputs: tuple[str, ...], out_dir: str, backend: str, model: str, **opts) -> None:
    """Sample frames from videos and have a VLM annotate what changes between adjacent frames.

    INPUT is a video file, a folder, a glob pattern, or a manifest (.txt/.jsonl, one path or
    {"path", "caption"} per line; '-' reads it from stdin). Each clip gets a folder of frames and
    a record in OUT_DIR/annotations.jsonl (printed on stdout too); failures go to
    OUT_DIR/failures.jsonl. Re-running continues where a run stopped.
    """
    from pathlib import Path

    from vincie_cli.annotate.inputs import collect_inputs
    from vincie_cli.annotate.runner import AnnotateConfig, Runner
    from vincie_cli.utils.io import parse_shard
    from vincie_cli.video.clips import ClipConfig
    from vincie_cli.video.sampling import SamplingConfig, parse_frame_range

    clip_cfg = ClipConfig(
        cuts=opts["cuts"],
        cut_threshold=opts["cut_threshold"],
        min_duration=opts["min_clip"],
        max_duration=opts["max_clip"],
        scan_fps=opts["scan_fps"],
        skip_black=opts["skip_black"],
        skip_frozen=opts["skip_frozen"],
        frozen_min=opts["frozen_min"],
        crop_borders=opts["crop_borders"],
    )
    sampling = SamplingConfig(
        mode=opts["sampling"],
        interval=opts["interval"],
        num_frames=parse_frame_range(opts["num_frames"]),
        fixed_prob=opts["fixed_prob"],
        max_frames=opts["max_frames"],
        min_change=opts["min_change"],
        seed=opts["seed"],
    )
    cfg = AnnotateConfig(
        out_dir=Path(out_dir),
        clips=clip_cfg,
        sampling=sampling,
        decoder=opts["decoder"],
        frame_format=opts["frame_format"],
        frame_size=opts["frame_size"],
        max_attempts=opts["max_attempts"],
        temperatures=_floats(opts["temperatures"]),
        shard=parse_shard(opts["shard"]),
        keep_going=opts["keep_going"],
        workers=opts["workers"],
        seed=opts["seed"],
    )
    videos, problems = collect_inputs(list(inputs))
    engine = make_backend(backend, model, opts)
    summary = Runner(cfg, engine, emit=emit).run(videos, problems)
    if summary["failures"]:
        sys.exit(EXIT_PARTIAL)


def make_backend(name: str, model: str, opts: dict):
    """The backend object for --backend NAME (imports its heavy dependencies only now)."""
    if name == "openai":
        from vincie_cli.annotate.backends.openai import OpenAIBackend

        return OpenAIBackend(
            base_url=opts["base_url"],
            model=model,
            api_key_env=opts["api_key_env"] or "OPENAI_API_KEY",
            require_key=opts["api_key_env"] is not None,
            concurrency=opts["concurrency"],
            timeout=opts["timeout"],
            max_retries=opts["max_retries"],
            backoff=opts["backoff"],
            max_tokens=opts["max_tokens"],
            json_mode=opts["json_mode"],
            image_size=opts["image_size"],
        )
    if name == "transformers":
        from vincie_cli.annotate.backends.transformers import TransformersBackend

        return TransformersBackend(
            model=model,
            device=opts["device"],
            dtype=opts["dtype"],
            batch_size=opts["batch_size"],
            max_tokens=opts["max_tokens"],
            image_size=opts["image_size"],
        )
    from vincie_cli.annotate.backends.oracle import OracleBackend

    return OracleBackend(seed=opts["seed"])
