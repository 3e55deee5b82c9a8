"""`vincie segment`: region-of-edit masks for every annotated transition."""

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
  vincie segment runs/ann --out-dir runs/seg
  vincie segment runs/ann/annotations.jsonl --out-dir runs/seg --device cuda --dtype bfloat16 --batch-size 16
  vincie segment runs/ann --out-dir runs/seg --backend oracle        # synthetic videos: exact masks
"""


@click.command("segment", epilog=EPILOG)
@click.argument("annotations", nargs=-1, required=True)
@click.option("--out-dir", "-o", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--backend",
    type=click.Choice(["grounded-sam2", "oracle"]),
    default="grounded-sam2",
    show_default=True,
    help="grounded-sam2: GroundingDINO boxes + SAM2 masks; oracle: exact masks of synthetic videos.",
)
@click.option("--detector", default=None, help="GroundingDINO model id or folder [IDEA-Research/grounding-dino-tiny].")
@click.option("--segmenter", default=None, help="SAM2 model id or folder [facebook/sam2.1-hiera-tiny].")
@click.option("--box-threshold", type=float, default=0.35, show_default=True, help="Minimum box score.")
@click.option("--text-threshold", type=float, default=0.25, show_default=True, help="Minimum score of the query.")
@click.option("--nms-iou", type=float, default=0.7, show_default=True, help="NMS IoU between boxes of one query.")
@click.option("--max-per-query", type=int, default=3, show_default=True, help="Boxes kept per query and frame.")
@click.option("--mask-threshold", type=float, default=0.0, show_default=True, help="SAM2 mask logit threshold.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Frames per detector/segmenter batch.")
@device_option
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Model dtype.",
)
@click.option("--limit", type=int, default=None, help="Segment at most this many clips (this run).")
@shard_option
@keep_going_option
@handle_errors
def segment(
    annotations: tuple[str, ...],
    out_dir: str,
    backend: str,
    detector: str | None,
    segmenter: str | None,
    box_threshold: float,
    text_threshold: float,
    nms_iou: float,
    max_per_query: int,
    mask_threshold: float,
    batch_size: int,
    device: str,
    dtype: str,
    limit: int | None,
    shard: str | None,
    keep_going: bool,
) -> None:
    """Find the regions that change in each annotated transition (RoE masks).

    ANNOTATIONS are annotations.jsonl files of `vincie annotate`, or folders holding them. For each
    transition the changed, appearing and disappearing entities are detected with GroundingDINO and
    segmented with SAM2; their union is the source-frame and target-frame RoE (a global change gives
    full-frame masks, a camera move or nothing localisable gives none). Masks are 1-bit PNGs under
    OUT_DIR/masks/, records go to OUT_DIR/segments.jsonl. Re-running resumes.
    """
    import sys

    from vincie_cli.segment.runner import run_segment
    from vincie_cli.utils.io import UsageError, parse_shard

    shard_spec = parse_shard(shard)
    if backend == "oracle" and (detector or segmenter):
        raise UsageError("--detector/--segmenter apply to --backend grounded-sam2 only")
    if batch_size < 1 or max_per_query < 1:
        raise UsageError("--batch-size and --max-per-query must be at least 1")

    def make():
        if backend == "oracle":
            from vincie_cli.segment.oracle import OracleSegmenter

            return OracleSegmenter()
        from vincie_cli.segment.grounded_sam2 import (
            DEFAULT_DETECTOR,
            DEFAULT_SEGMENTER,
            GroundedSam2Backend,
            GroundedSam2Options,
        )
        from vincie_cli.segment.runner import DetectorSegmenter

        opts = GroundedSam2Options(
            detector=detector or DEFAULT_DETECTOR,
            segmenter=segmenter or DEFAULT_SEGMENTER,
            device=resolve_device(device),
            dtype=dtype,
            box_threshold=box_threshold,
            text_threshold=text_threshold,
            nms_iou=nms_iou,
            max_per_query=max_per_query,
            mask_threshold=mask_threshold,
            batch_size=batch_size,
        )
        model = GroundedSam2Backend(opts)
        return DetectorSegmenter(model, model.name, model.model)

    summary = run_segment(list(annotations), out_dir, make, shard_spec, keep_going, limit, emit)
    emit(summary.as_record())
    click.echo(
        f"segmented {summary.clips} clips ({summary.transitions} transitions), {summary.skipped} already done, "
        f"{summary.failed} failed; rules: {dict(summary.rules)}",
        err=True,
    )
    if summary.failed:
        sys.exit(EXIT_PARTIAL)
