"""`vincie build-sessions`: pack annotated clips (and other editing data) into training session shards."""

from __future__ import annotations

import click

from vincie_cli.cli._common import (
    EXIT_PARTIAL,
    device_option,
    emit,
    handle_errors,
    keep_going_option,
    resolve_device,
    shard_option,
)

EPILOG = """
\b
Examples:
  vincie build-sessions runs/seg --out-dir runs/sessions --image-format png --val-fraction 0.05
  vincie build-sessions data/vincie10m/*.parquet --out-dir shards/v10m --max-resolution 512 --shard 3/16
  vincie build-sessions data/omniedit.parquet --out-dir shards/sft --cache-model ckpt/ --cache-resolution 256
  accelerate launch -m vincie_cli build-sessions --cache-only --cache-model ckpt/ --out-dir shards/sft
"""


@click.command("build-sessions", epilog=EPILOG)
@click.argument("inputs", nargs=-1)
@click.option("--out-dir", "-o", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--input-format",
    type=click.Choice(["auto", "video", "vincie10m", "pairwise"]),
    default="auto",
    show_default=True,
    help="video: annotate/segment records; vincie10m: the released parquet; pairwise: editing pairs.",
)
@click.option("--image-format", type=click.Choice(["jpg", "png", "webp"]), default="jpg", show_default=True)
@click.option("--quality", type=int, default=95, show_default=True, help="jpg/webp quality (webp 100 = lossless).")
@click.option("--max-resolution", type=int, default=None, help="Shrink frames so the longer side is at most this.")
@click.option("--shard-size-mb", type=float, default=256.0, show_default=True, help="Target shard size.")
@click.option("--val-fraction", type=float, default=0.01, show_default=True, help="Clips held out (by id hash).")
@click.option("--min-turns", type=int, default=1, show_default=True, help="Drop sessions with fewer turns.")
@click.option("--no-dedup", is_flag=True, help="Keep sessions whose frames repeat an earlier one (ids stay unique).")
@click.option("--limit", type=int, default=None, help="Build at most this many sessions (this run).")
@click.option("--cache-model", default=None, help="Also cache VAE latents + text embeddings with this checkpoint.")
@click.option("--cache-resolution", type=int, default=256, show_default=True, help="Image resolution of the cache.")
@click.option(
    "--cache-text",
    type=click.Choice(["camera", "plain"]),
    default="camera",
    show_default=True,
    help="Cache the turn texts with the camera tag prepended, or as they are.",
)
@click.option("--cache-batch-size", type=int, default=16, show_default=True, help="Frames per VAE batch.")
@click.option("--cache-only", is_flag=True, help="Only (re)compute the cache of existing shards in OUT_DIR.")
@device_option
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="bfloat16", show_default=True)
@shard_option
@keep_going_option
@handle_errors
def build_sessions(
    inputs: tuple[str, ...],
    out_dir: str,
    input_format: str,
    image_format: str,
    quality: int,
    max_resolution: int | None,
    shard_size_mb: float,
    val_fraction: float,
    min_turns: int,
    no_dedup: bool,
    limit: int | None,
    cache_model: str | None,
    cache_resolution: int,
    cache_text: str,
    cache_batch_size: int,
    cache_only: bool,
    device: str,
    dtype: str,
    shard: str | None,
    keep_going: bool,
) -> None:
    """Write training sessions as WebDataset tar shards with index.json and stats.json.

    INPUTS are segments/annotations JSON-lines files (or folders holding them), VINCIE-10M parquet
    files, or pairwise editing data (parquet, or JSON lines with image paths). Sessions are split
    into train/val by clip-id hash and de-duplicated; re-running resumes without rewriting finished
    shards. Read them with vincie_cli.sessions.SessionDataset.
    """
    import sys

    from vincie_cli.sessions.build import BuildOptions, SessionBuilder
    from vincie_cli.utils.io import UsageError, parse_shard

    shard_spec = parse_shard(shard)
    summary = None
    if cache_only and not cache_model:
        raise UsageError("--cache-only needs --cache-model")
    if not inputs and not cache_only:
        raise UsageError("give INPUTS (or --cache-only to cache the shards already in --out-dir)")
    if not cache_only:
        opts = BuildOptions(
            image_format=image_format,
            quality=quality,
            max_resolution=max_resolution,
            val_fraction=val_fraction,
            shard_size_mb=shard_size_mb,
            min_turns=min_turns,
            dedup=not no_dedup,
        )
        builder = SessionBuilder(out_dir, opts, shard_spec, keep_going, emit)
        summary = builder.run(list(inputs), None if input_format == "auto" else input_format, limit)
        emit(summary.as_record())
        click.echo(
            f"built {summary.built} sessions ({summary.turns} turns) into {len(summary.shards)} shards; "
            f"{summary.skipped_done} already built, {summary.duplicates} duplicates, {summary.too_short} too short, "
            f"{summary.failed} failed",
            err=True,
        )
    if cache_model:
        from vincie_cli.sessions.cache import CacheOptions, build_cache

        copts = CacheOptions(
            model=cache_model,
            resolution=cache_resolution,
            text_format=cache_text,
            batch_size=cache_batch_size,
            device=resolve_device(device),
            dtype=dtype,
        )
        for rec in build_cache(out_dir, copts):
            emit(rec)
    if summary is not None and summary.failed:
        sys.exit(EXIT_PARTIAL)
