"""Inputs of build-sessions, all turned into `SessionDraft`s (frames still encoded or on disk).

Three kinds:
  - "video":     clip records of `annotate` / `segment` (JSON lines, see records.py). A clip whose
                 transitions all carry an annotation is one session; a transition without one splits
                 the clip into separate sessions (each a run of >= 1 annotated turns).
  - "vincie10m": the released VINCIE-10M parquet layout: `image` = list of encoded frames, `ann_v0` =
                 JSON list with one entry per adjacent pair whose `text.summary_change` is the turn text.
  - "pairwise":  editing pairs (source image, instruction, target image, optional mask) as parquet or
                 JSON lines + image files. Rows sharing a `session_id` (consecutive, ordered by `turn`)
                 become one multi-turn session [source, target 1, target 2, ...].
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vincie_cli.records import (
    ANNOTATION_KEYS,
    CAMERA_MOTIONS,
    changed_entities,
    normalize_annotation,
    resolve_path,
    validate_clip,
)
from vincie_cli.utils.io import BadInputError, read_jsonl, stable_hash

KINDS = ("video", "vincie10m", "pairwise")
KEY_PREFIX = {"video": "v", "vincie10m": "m", "pairwise": "p"}

# Column names accepted for pairwise data (first match wins).
PAIR_SOURCE = ("source_image", "src_image", "src_img", "source", "input_image", "input", "image")
PAIR_TARGET = ("target_image", "tgt_image", "edited_img", "edited_image", "target", "output_image", "output")
PAIR_TEXT = ("instruction", "edit_instruction", "prompt", "text", "edited_prompt_list", "instructions")
PAIR_MASK = ("mask", "mask_image", "mask_img")
PAIR_ID = ("id", "key", "__key__", "pair_id", "omni_edit_id")
PAIR_SESSION = ("session_id", "img_id")
PAIR_TURN = ("turn", "turn_index")


ImageRef = bytes | Path  # encoded image bytes or a file


@dataclass
class TurnDraft:
    """One turn of a draft: frame `src` -> `src + 1`."""

    text: str
    camera: str = "static"
    rule: str = "none"
    src_mask: ImageRef | None = None
    dst_mask: ImageRef | None = None
    annotation: dict[str, Any] | None = None
    roe: dict[str, Any] | None = None


@dataclass
class SessionDraft:
    """A session before encoding: K+1 frame references and K turns."""

    clip_id: str
    kind: str
    frames: list[ImageRef]
    turns: list[TurnDraft]
    meta: dict[str, Any] = field(default_factory=dict)
    frame_times: list[float | None] | None = None
    where: str = ""
    base_dir: Path | None = None  # what a relative meta["source"] is relative to

    @property
    def key(self) -> str:
        """Tar-safe session key, stable for a (kind, clip id)."""
        return f"{KEY_PREFIX.get(self.kind, 'x')}{stable_hash(self.kind + '/' + self.clip_id, 20)}"


# --------------------------------------------------------------------------------------------
# detecting the input kind


def detect_kind(path: Path) -> str:
    """The kind of one input file from its name and first record / schema."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            names = set(pq.read_schema(path).names)
        except Exception as e:
            raise BadInputError(f"{path}: not a readable parquet file ({e})") from None
        if "ann_v0" in names:
            return "vincie10m"
        if _pick(names, PAIR_TARGET) and _pick(names, PAIR_TEXT):
            return "pairwise"
        raise BadInputError(
            f"{path}: parquet columns {sorted(names)} are neither VINCIE-10M (image, ann_v0) nor "
            "pairwise (source image, instruction, target image)"
        )
    if path.suffix in (".jsonl", ".json"):
        for rec in read_jsonl(path):
            if rec.get("type") == "clip" or {"frames", "transitions"} <= set(rec):
                return "video"
            if _pick(set(rec), PAIR_TARGET) and _pick(set(rec), PAIR_TEXT):
                return "pairwise"
            raise BadInputError(
                f"{path}: first record is neither a clip record nor a pairwise record (keys {sorted(rec)})"
            )
        return "video"
    raise BadInputError(f"{path}: expected .jsonl or .parquet input")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files named by `inputs`; a directory gives its segments*.jsonl (else annotations*.jsonl), else its
    *.parquet and *.jsonl files, sorted."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("segments*.jsonl")) or sorted(p.glob("annotations*.jsonl"))
            found = found or sorted([*p.glob("*.parquet"), *p.glob("*.jsonl")])
            if not found:
                raise BadInputError(f"{p}: no segments*.jsonl, annotations*.jsonl, *.parquet or *.jsonl here")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise BadInputError(f"{p}: no such file or directory")
    return files


def iter_drafts(path: Path, kind: str | None = None) -> Iterator[SessionDraft | BadInputError]:
    """Drafts of one input file; a bad record yields its BadInputError (so the caller decides to stop
    or to keep going) and reading continues with the next record."""
    kind = kind or detect_kind(path)
    if kind == "video":
        yield from _video_drafts(path)
    elif kind == "vincie10m":
        yield from _vincie10m_drafts(path)
    elif kind == "pairwise":
        yield from _pairwise_drafts(path)
    else:
        raise BadInputError(f"{path}: unknown input kind {kind!r}")


# --------------------------------------------------------------------------------------------
# video clips


def _video_drafts(path: Path) -> Iterator[SessionDraft | BadInputError]:
    base = path.parent
    for n, rec in enumerate(read_jsonl(path), 1):
        if rec.get("type", "clip") != "clip":
            continue
        where = f"{path}:{n}"
        try:
            yield from clip_drafts(rec, base, where)
        except BadInputError as e:
            yield e


def clip_drafts(rec: dict[str, Any], base: Path, where: str) -> list[SessionDraft]:
    """The sessions of one clip record (paths relative to `base`)."""
    validate_clip(rec, where)
    frames = rec["frames"]
    by_src = {}
    for i, tr in enumerate(rec["transitions"]):
        if tr["dst"] != tr["src"] + 1:
            raise BadInputError(
                f"{where}: transitions[{i}] goes {tr['src']}->{tr['dst']}; sessions need adjacent frames"
            )
        by_src[tr["src"]] = (i, tr)
    runs: list[list[tuple[int, dict[str, Any]]]] = [[]]
    for s in range(len(frames) - 1):
        item = by_src.get(s)
        if item is None or item[1].get("annotation") is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append(item)
    runs = [r for r in runs if r]
    clip_id = str(rec["clip_id"])
    out = []
    for run in runs:
        first = run[0][1]["src"]
        idx = list(range(first, run[-1][1]["dst"] + 1))
        turns = []
        for i, tr in run:
            ann = normalize_annotation(tr["annotation"], f"{where}: transitions[{i}].annotation")
            roe = tr.get("roe") or None
            turn = TurnDraft(
                text=ann["summary_change"],
                camera=ann["camera_change"]["motion"],
                annotation=ann,
                roe=roe,
                rule=(roe or {}).get("rule") or "none",
            )
            if roe:
                for side in ("src", "dst"):
                    if roe.get(f"{side}_mask"):
                        setattr(turn, f"{side}_mask", resolve_path(roe[f"{side}_mask"], base))
            turns.append(turn)
        part_id = clip_id if len(runs) == 1 else f"{clip_id}#{first}"
        out.append(
            SessionDraft(
                clip_id=part_id,
                kind="video",
                frames=[resolve_path(frames[j]["path"], base) for j in idx],
                turns=turns,
                frame_times=[frames[j].get("time") for j in idx],
                meta={
                    "dataset": "video",
                    "source": rec.get("source"),
                    "clip_id": clip_id,
                    "clip_start": rec.get("clip_start"),
                    "clip_end": rec.get("clip_end"),
                    "first_frame": first,
                    "source_caption": rec.get("source_caption"),
                    "annotator": {"backend": rec.get("backend"), "model": rec.get("model")},
                },
                where=where,
                base_dir=base,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# VINCIE-10M parquet


def _camera_of(text: dict[str, Any]) -> str:
    cam = text.get("camera_change") or text.get("camera")
    motion = cam.get("motion") if isinstance(cam, dict) else cam
    motion = str(motion or "static").strip().lower().replace("_", "-").replace(" ", "-")
    return motion if motion in CAMERA_MOTIONS else "static"


def _vincie10m_drafts(path: Path) -> Iterator[SessionDraft | BadInputError]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    if "image" not in names or "ann_v0" not in names:
        raise BadInputError(f"{path}: VINCIE-10M parquet needs columns image and ann_v0 (has {sorted(names)})")
    id_col = _pick(names, PAIR_ID)
    cols = ["image", "ann_v0"] + ([id_col] if id_col else [])
    row = 0
    for batch in pf.iter_batches(batch_size=64, columns=cols):
        for item in batch.to_pylist():
            where = f"{path}: row {row}"
            rid = str(item[id_col]) if id_col and item.get(id_col) is not None else f"{path.name}#{row}"
            row += 1
            try:
                yield _vincie10m_draft(item, rid, where, path)
            except BadInputError as e:
                yield e


def _vincie10m_draft(item: dict[str, Any], rid: str, where: str, path: Path) -> SessionDraft:
    frames = item["image"]
    if not isinstance(frames, list) or len(frames) < 2 or not all(isinstance(b, bytes) for b in frames):
        raise BadInputError(f"{where}: image must be a list of >= 2 encoded frames")
    try:
        ann = json.loads(item["ann_v0"]) if isinstance(item["ann_v0"], str | bytes) else item["ann_v0"]
    except json.JSONDecodeError as e:
        raise BadInputError(f"{where}: ann_v0 is not valid JSON ({e.msg})") from None
    if not isinstance(ann, list) or len(ann) != len(frames) - 1:
        n = len(ann) if isinstance(ann, list) else "no list of"
        raise BadInputError(f"{where}: ann_v0 has {n} transitions for {len(frames)} frames (expected frames - 1)")
    turns = []
    for i, entry in enumerate(ann):
        text = entry.get("text") if isinstance(entry, dict) else None
        if not isinstance(text, dict) or not str(text.get("summary_change") or "").strip():
            raise BadInputError(f"{where}: ann_v0[{i}].text.summary_change is missing or empty")
        full = None
        if set(ANNOTATION_KEYS) <= set(text):
            try:
                full = normalize_annotation(text, f"{where}: ann_v0[{i}].text")
            except BadInputError:
                full = None  # the released annotations are not all in our schema; the summary is what counts
        turns.append(
            TurnDraft(text=str(text["summary_change"]).strip(), camera=_camera_of(text), annotation=full, rule="none")
        )
    return SessionDraft(
        clip_id=rid,
        kind="vincie10m",
        frames=list(frames),
        turns=turns,
        meta={"dataset": "vincie10m", "source": str(path), "clip_id": rid, "ann_v0": ann},
        where=where,
    )


# --------------------------------------------------------------------------------------------
# pairwise editing data


def _pick(names: set[str] | dict[str, Any], options: tuple[str, ...]) -> str | None:
    for o in options:
        if o in names:
            return o
    return None


def _image_ref(value: Any, base: Path, where: str, what: str) -> ImageRef:
    """bytes, {"bytes": ..., "path": ...} (HF Image feature) or a file path relative to `base`."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str) and value:
        p = resolve_path(value, base)
        if not p.is_file():
            raise BadInputError(f"{where}: {what} {p} not found")
        return p
    raise BadInputError(f"{where}: {what} is missing")


def _iter_pair_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        row = 0
        for batch in pf.iter_batches(batch_size=64):
            for item in batch.to_pylist():
                yield f"{path}: row {row}", item
                row += 1
    else:
        for n, rec in enumerate(read_jsonl(path), 1):
            yield f"{path}:{n}", rec


def _pair_turn(rec: dict[str, Any], base: Path, where: str) -> tuple[ImageRef, ImageRef, TurnDraft]:
    names = set(rec)
    s_col, t_col, x_col = _pick(names, PAIR_SOURCE), _pick(names, PAIR_TARGET), _pick(names, PAIR_TEXT)
    if not s_col or not t_col or not x_col:
        raise BadInputError(
            f"{where}: a pairwise record needs a source image, an instruction and a target image (keys {sorted(names)})"
        )
    text = rec[x_col]
    if isinstance(text, list):
        text = next((t for t in text if isinstance(t, str) and t.strip()), "")
    if not isinstance(text, str) or not text.strip():
        raise BadInputError(f"{where}: empty instruction")
    src = _image_ref(rec[s_col], base, where, "source image")
    tgt = _image_ref(rec[t_col], base, where, "target image")
    m_col = _pick(names, PAIR_MASK)
    mask = _image_ref(rec[m_col], base, where, "mask") if m_col and rec.get(m_col) not in (None, "", b"") else None
    turn = TurnDraft(text=text.strip(), camera="static", rule="entities" if mask is not None else "none")
    turn.src_mask = turn.dst_mask = mask
    return src, tgt, turn


def _pairwise_drafts(path: Path) -> Iterator[SessionDraft | BadInputError]:
    base = path.parent
    group: list[tuple[str, dict[str, Any]]] = []
    group_id: str | None = None
    finished: set[str] = set()

    def flush() -> Iterator[SessionDraft | BadInputError]:
        if not group:
            return
        try:
            yield _pair_session(group, base, path, group_id)
        except BadInputError as e:
            yield e

    for where, rec in _iter_pair_rows(path):
        s_key = _pick(set(rec), PAIR_SESSION)
        sid = str(rec[s_key]) if s_key and rec.get(s_key) is not None else None
        if sid is None or sid != group_id:
            yield from flush()
            if group_id is not None:
                finished.add(group_id)
            group, group_id = [], sid
            if sid is not None and sid in finished:
                yield BadInputError(f"{where}: rows of session {sid!r} are not consecutive")
                continue
        group.append((where, rec))
        if sid is None:  # a plain pair: its own session
            yield from flush()
            group, group_id = [], None
    yield from flush()


def _pair_session(rows: list[tuple[str, dict[str, Any]]], base: Path, path: Path, sid: str | None) -> SessionDraft:
    turn_col = _pick(set(rows[0][1]), PAIR_TURN)
    if turn_col:
        rows = sorted(rows, key=lambda r: r[1].get(turn_col) or 0)
    frames: list[ImageRef] = []
    turns: list[TurnDraft] = []
    for where, rec in rows:
        src, tgt, turn = _pair_turn(rec, base, where)
        if not frames:
            frames.append(src)
        frames.append(tgt)
        turns.append(turn)
    first_where, first = rows[0]
    id_col = _pick(set(first), PAIR_ID)
    if sid is not None:
        cid = sid
    elif id_col and first.get(id_col) is not None:
        cid = str(first[id_col])
    else:
        cid = f"{path.name}#{first_where.rsplit(':', 1)[-1].strip()}"
    return SessionDraft(
        clip_id=cid,
        kind="pairwise",
        frames=frames,
        turns=turns,
        meta={"dataset": "pairwise", "source": str(path), "clip_id": cid, "rows": [w for w, _ in rows]},
        where=first_where,
    )


def change_categories(turn: TurnDraft) -> list[str]:
    """Change kinds of a turn for the statistics ("global", "camera:<motion>" and entity change kinds)."""
    out: list[str] = []
    ann = turn.annotation
    if ann:
        out.extend(ch["change"] for ch in changed_entities(ann))
        if ann.get("global_change"):
            out.append("global")
        if ann.get("other_change"):
            out.append("other")
    return out
