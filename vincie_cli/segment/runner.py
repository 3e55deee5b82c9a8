"""The resumable `segment` stage: clip records in, clip records with per-transition RoE + mask PNGs out.

Output folder layout (paths in records are relative to the folder, see records.py):

    DIR/segments.jsonl                       one clip record per line (segments-I-of-N.jsonl with --shard)
    DIR/masks/<clip>/<t>_src.png, _dst.png   1-bit masks of the frame size, white = region of edit
    DIR/failures.jsonl                       clips that failed under --keep-going (retried on the next run)

A clip is finished once its record is in a segments*.jsonl file; masks are written (atomically)
before the record, so a crash never leaves a record pointing at a missing mask. Re-running skips
finished clips and retries failed ones.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vincie_cli.records import normalize_annotation, rebase_clip, rebase_path, resolve_path, validate_clip
from vincie_cli.segment.roe import RoEResult, coverage, fuse
from vincie_cli.utils.io import (
    BadInputError,
    DirLock,
    VincieError,
    append_jsonl,
    in_shard,
    read_jsonl,
    stable_hash,
    write_jsonl,
)
from vincie_cli.utils.log import get_logger, progress
from vincie_cli.utils.masks import save_mask

log = get_logger(__name__)

SEGMENTS_NAME = "segments.jsonl"


class ClipSegmenter(Protocol):
    """What the runner needs from a backend: one RoE (or None, no annotation) per transition of a clip."""

    name: str
    model: str

    def segment_clip(
        self, rec: dict[str, Any], frames: list[np.ndarray], base_dir: Path, where: str
    ) -> list[RoEResult | None]: ...


class DetectorSegmenter:
    """Adapts an image-level detector+segmenter (images, queries -> detections) to whole clips.

    All frames that need a query in a clip go through the detector in one call (it batches).
    """

    def __init__(self, detect: Callable[..., Any], name: str, model: str) -> None:
        self.detect = detect
        self.name = name
        self.model = model

    def segment_clip(
        self, rec: dict[str, Any], frames: list[np.ndarray], base_dir: Path | None = None, where: str = "record"
    ) -> list[RoEResult | None]:
        from vincie_cli.segment.roe import entity_queries, planned_rule

        anns: list[dict[str, Any] | None] = []
        images: list[np.ndarray] = []
        queries: list[list[str]] = []
        slots: list[tuple[int, int]] = []  # per transition: index of its src and dst request (-1 = none)
        for i, tr in enumerate(rec["transitions"]):
            ann = _annotation(tr, f"{where}: transitions[{i}].annotation")
            anns.append(ann)
            if ann is None or planned_rule(ann) != "entities":
                slots.append((-1, -1))
                continue
            src_q, dst_q = entity_queries(ann)
            pair = []
            for frame_idx, q in ((tr["src"], src_q), (tr["dst"], dst_q)):
                if q:
                    pair.append(len(images))
                    images.append(frames[frame_idx])
                    queries.append(q)
                else:
                    pair.append(-1)
            slots.append((pair[0], pair[1]))
        found = self.detect(images, queries) if images else []
        out: list[RoEResult | None] = []
        for tr, ann, (si, di) in zip(rec["transitions"], anns, slots):
            if ann is None:
                out.append(None)
                continue
            src_shape = frames[tr["src"]].shape[:2]
            dst_shape = frames[tr["dst"]].shape[:2]
            out.append(fuse(ann, found[si] if si >= 0 else [], found[di] if di >= 0 else [], src_shape, dst_shape))
        return out


def _annotation(tr: dict[str, Any], where: str) -> dict[str, Any] | None:
    if tr.get("annotation") is None:
        return None
    return normalize_annotation(tr["annotation"], where)


# --------------------------------------------------------------------------------------------
# inputs


def find_record_files(inputs: list[str], prefer: tuple[str, ...] = ("annotations",)) -> list[Path]:
    """JSON-lines files named by `inputs`: files as given; a directory gives its `<prefix>*.jsonl` files
    for the first prefix in `prefer` that has any (sorted)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found: list[Path] = []
            for prefix in prefer:
                found = sorted(p.glob(f"{prefix}*.jsonl"))
                if found:
                    break
            if not found:
                raise BadInputError(f"{p}: no {' or '.join(f'{x}*.jsonl' for x in prefer)} file in this directory")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise BadInputError(f"{p}: no such file or directory")
    return files


def iter_clip_records(files: list[Path]) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """(file, line number, record) for every clip record (records of another "type" are skipped)."""
    for f in files:
        for n, rec in enumerate(read_jsonl(f), 1):
            if rec.get("type", "clip") == "clip":
                yield f, n, rec


def load_frame(path: Path, where: str) -> np.ndarray:
    """An RGB uint8 (H, W, 3) frame; a missing or unreadable file is a BadInputError naming it."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise BadInputError(f"{where}: frame {path} not found")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise BadInputError(f"{where}: frame {path} is not a readable image ({e})") from None


def safe_name(text: str) -> str:
    """A file-name-safe version of an id (hash suffix when anything had to change)."""
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:80]
    return clean if clean == text and clean else f"{clean or 'clip'}-{stable_hash(text, 10)}"


def output_name(shard: tuple[int, int]) -> str:
    i, n = shard
    return SEGMENTS_NAME if n == 1 else f"segments-{i:05d}-of-{n:05d}.jsonl"


def repair_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read an output file; if a crash left a torn last line, rewrite the file without it."""
    if not path.exists():
        return []
    recs = list(read_jsonl(path))
    text = path.read_bytes()
    if text and not text.endswith(b"\n"):
        log.warning("%s: dropping a torn last line left by an interrupted run", path)
        write_jsonl(path, recs)
    return recs


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class SegmentSummary:
    clips: int = 0
    skipped: int = 0
    failed: int = 0
    transitions: int = 0
    rules: Counter = field(default_factory=Counter)

    def as_record(self) -> dict[str, Any]:
        return {
            "type": "summary",
            "stage": "segment",
            "clips": self.clips,
            "skipped": self.skipped,
            "failed": self.failed,
            "transitions": self.transitions,
            "rules": dict(self.rules),
        }


def roe_entry(res: RoEResult, clip_dir: Path, out_dir: Path, t_index: int, backend: str, model: str) -> dict[str, Any]:
    """Write the transition's masks (when the rule has any) and return its record entry."""
    entry: dict[str, Any] = {
        "rule": res.rule,
        "queries": list(dict.fromkeys(res.src_queries + res.dst_queries)),
        "src_queries": res.src_queries,
        "dst_queries": res.dst_queries,
        "src_mask": None,
        "dst_mask": None,
        "src_coverage": coverage(res.src),
        "dst_coverage": coverage(res.dst),
        "boxes": {"src": [d.box for d in res.src_detections], "dst": [d.box for d in res.dst_detections]},
        "scores": {"src": [d.score for d in res.src_detections], "dst": [d.score for d in res.dst_detections]},
        "labels": {"src": [d.query for d in res.src_detections], "dst": [d.query for d in res.dst_detections]},
        "backend": backend,
        "model": model,
    }
    for side, mask in (("src", res.src), ("dst", res.dst)):
        if mask is not None:
            path = clip_dir / f"{t_index:03d}_{side}.png"
            save_mask(path, mask)
            entry[f"{side}_mask"] = path.relative_to(out_dir).as_posix()
    return entry


def segment_record(
    rec: dict[str, Any],
    base_dir: Path,
    out_dir: Path,
    segmenter: ClipSegmenter | Callable[[], ClipSegmenter],
    where: str,
) -> dict[str, Any]:
    """Segment one clip record (paths relative to base_dir); returns the extended record, paths relative
    to out_dir. Masks are written under out_dir/masks/<clip>/. `segmenter` may be a getter, called once
    the record and its frames have been checked."""
    validate_clip(rec, where)
    frames = [load_frame(resolve_path(fr["path"], base_dir), where) for fr in rec["frames"]]
    seg = segmenter if hasattr(segmenter, "segment_clip") else segmenter()  # type: ignore[operator]
    results = seg.segment_clip(rec, frames, base_dir, where)
    out = rebase_clip(rec, base_dir, out_dir)
    source = rec.get("source")
    if isinstance(source, str) and not Path(source).is_absolute() and resolve_path(source, base_dir).exists():
        out["source"] = rebase_path(source, base_dir, out_dir)  # rebase_clip leaves the source path as it was
    clip_dir = out_dir / "masks" / safe_name(str(rec["clip_id"]))
    for i, (tr, res) in enumerate(zip(out["transitions"], results)):
        if res is None:
            tr["roe"] = None
            continue
        for side, mask, fi in (("src", res.src, tr["src"]), ("dst", res.dst, tr["dst"])):
            if mask is not None and mask.shape != frames[fi].shape[:2]:
                raise VincieError(
                    f"{where}: {side} mask of transition {i} has shape {mask.shape}, frame {fi} is "
                    f"{frames[fi].shape[:2]}"
                )
        tr["roe"] = roe_entry(res, clip_dir, out_dir, i, seg.name, seg.model)
    return out


def run_segment(
    inputs: list[str],
    out_dir: str | Path,
    segmenter: ClipSegmenter | Callable[[], ClipSegmenter],
    shard: tuple[int, int] = (0, 1),
    keep_going: bool = False,
    limit: int | None = None,
    emit: Callable[[dict[str, Any]], None] = lambda r: None,
) -> SegmentSummary:
    """Segment every unfinished clip of `inputs` in this shard. `segmenter` may be a factory (called
    only when there is work, so a finished run never loads models)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = find_record_files(inputs)
    summary = SegmentSummary()
    with DirLock(out, f"-segment-{shard[0]}-of-{shard[1]}"):
        out_file = out / output_name(shard)
        done = {r.get("clip_id") for f in sorted(out.glob("segments*.jsonl")) for r in repair_jsonl(f)}
        todo = []
        for f, n, rec in iter_clip_records(files):
            cid = str(rec.get("clip_id", f"{f}:{n}"))
            if not in_shard(cid, shard):
                continue
            if cid in done:
                summary.skipped += 1
                continue
            done.add(cid)
            todo.append((f, n, rec))
        if limit is not None:
            todo = todo[:limit]
        if summary.skipped:
            log.info("%d clips already segmented; %d to do", summary.skipped, len(todo))
        loaded: list[ClipSegmenter] = []

        def get_segmenter() -> ClipSegmenter:
            if not loaded:
                loaded.append(segmenter if hasattr(segmenter, "segment_clip") else segmenter())  # type: ignore[operator]
            return loaded[0]

        for f, n, rec in progress(todo, total=len(todo), desc="segment"):
            where = f"{f}:{n}"
            t0 = time.time()
            try:
                result = segment_record(rec, f.parent, out, get_segmenter, where)
            except VincieError as e:
                if not keep_going:
                    raise
                summary.failed += 1
                err = {
                    "type": "error",
                    "stage": "segment",
                    "clip_id": rec.get("clip_id"),
                    "input": where,
                    "error": str(e),
                }
                append_jsonl(out / "failures.jsonl", err)
                emit(err)
                log.error("%s", e)
                continue
            append_jsonl(out_file, result)
            rules = Counter(tr["roe"]["rule"] for tr in result["transitions"] if tr.get("roe"))
            summary.clips += 1
            summary.transitions += len(result["transitions"])
            summary.rules.update(rules)
            emit(
                {
                    "type": "segment",
                    "clip_id": result["clip_id"],
                    "transitions": len(result["transitions"]),
                    "rules": dict(rules),
                    "output": str(out_file),
                    "seconds": round(time.time() - t0, 3),
                }
            )
    return summary
