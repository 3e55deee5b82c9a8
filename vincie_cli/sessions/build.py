"""`build-sessions`: session drafts -> encoded sessions -> tar shards + index.json + stats.json.

Output folder:

    DIR/build.json                 the options that shape the data (image format, quality, max resolution,
                                   val fraction); a re-run with different ones is refused
    DIR/train-000000.tar           shards (train-sIIIofNNN-000000.tar under --shard I/N), one split each
    DIR/train-000000.json          the shard's sidecar: one summary per session (key, clip id, content hash,
                                   turns, frames, bytes, rules, cameras, change kinds, mask coverage)
    DIR/index.json                 per shard: name, split, sessions, turns, frames, bytes; totals per split
    DIR/stats.json                 statistics over all finished shards
    DIR/failures.jsonl             inputs that failed under --keep-going

Resuming: a shard is finished when its tar exists (the sidecar is written first, the tar renamed onto
its name last). A re-run reads the sidecars, skips every session already in a finished shard and
writes the rest into new shards; a finished shard is never rewritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vincie_cli.records import rebase_path
from vincie_cli.sessions.ingest import SessionDraft, change_categories, expand_inputs, iter_drafts
from vincie_cli.sessions.session import (
    IMAGE_FORMATS,
    SESSION_FORMAT,
    frame_member,
    mask_member,
    target_size,
)
from vincie_cli.sessions.shards import ShardWriter
from vincie_cli.utils.io import (
    BadInputError,
    DirLock,
    UsageError,
    VincieError,
    append_jsonl,
    atomic_write_json,
    in_shard,
    stable_hash_int,
)
from vincie_cli.utils.log import get_logger, progress

log = get_logger(__name__)

DATASET_FORMAT = "vincie-sessions/1"
SHARD_RE = re.compile(r"^(?P<split>train|val)-(?:(?P<tag>s\d+of\d+)-)?(?P<seq>\d{6})\.tar$")
SPLITS = ("train", "val")


@dataclass
class BuildOptions:
    """What shapes the stored data (fixed per output folder) and how shards are cut."""

    image_format: str = "jpg"  # png | jpg | webp
    quality: int = 95  # jpg / webp quality (webp 100 = lossless)
    max_resolution: int | None = None  # longer side in pixels; None keeps the input size
    val_fraction: float = 0.01  # by clip-id hash, so all sessions of one clip share a split
    shard_size_mb: float = 256.0  # target shard size; a shard closes once it reaches it
    min_turns: int = 1
    dedup: bool = True

    def data_options(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in ("image_format", "quality", "max_resolution", "val_fraction")}

    def check(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise UsageError(f"--image-format {self.image_format!r}: expected one of {', '.join(IMAGE_FORMATS)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UsageError(f"--val-fraction {self.val_fraction}: expected 0 <= f < 1")
        if self.max_resolution is not None and self.max_resolution < 8:
            raise UsageError(f"--max-resolution {self.max_resolution}: expected at least 8")
        if self.shard_size_mb <= 0:
            raise UsageError("--shard-size-mb must be positive")
        if not 1 <= self.quality <= 100:
            raise UsageError("--quality must be between 1 and 100")


def split_of(clip_id: str, val_fraction: float) -> str:
    """Deterministic train/val split by the hash of the clip id."""
    return "val" if stable_hash_int("split/" + clip_id) % 1_000_000 < val_fraction * 1_000_000 else "train"


# --------------------------------------------------------------------------------------------
# encoding one session


def _read_ref(ref: bytes | Path, where: str, what: str) -> bytes:
    if isinstance(ref, bytes):
        return ref
    if not ref.is_file():
        raise BadInputError(f"{where}: {what} {ref} not found")
    return ref.read_bytes()


def encode_frame(data: bytes, opts: BuildOptions, where: str) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """Encoded input frame -> (stored bytes, source (w, h), stored (w, h)).

    Bytes already in the target format, RGB and small enough are kept as they are (no second lossy
    encoding); anything else is decoded, shrunk to max_resolution and encoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        src_size = img.size
        out_size = target_size(*src_size, opts.max_resolution)
        if img.format == IMAGE_FORMATS[opts.image_format] and img.mode == "RGB" and out_size == src_size:
            img.verify()  # a truncated file must fail here, not during training
            return data, src_size, out_size
        img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadInputError(f"{where}: not a readable image ({e})") from None
    if out_size != src_size:
        img = img.resize(out_size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if opts.image_format == "png":
        img.save(buf, format="PNG", compress_level=4)
    elif opts.image_format == "jpg":
        img.save(buf, format="JPEG", quality=opts.quality, subsampling=0)
    else:
        img.save(buf, format="WEBP", quality=opts.quality, lossless=opts.quality == 100, method=4)
    return buf.getvalue(), src_size, out_size


def encode_mask(data: bytes, frame_size: tuple[int, int], out_size: tuple[int, int], where: str) -> tuple[bytes, float]:
    """Mask image -> (1-bit PNG at the stored frame size, coverage). Its size must be the frame's (w, h)."""
    from PIL import Image

    from vincie_cli.utils.masks import decode_mask_png, encode_mask_png

    mask = decode_mask_png(data, where)
    if (mask.shape[1], mask.shape[0]) != tuple(frame_size):
        raise BadInputError(
            f"{where}: mask is {mask.shape[1]}x{mask.shape[0]}, its frame is {frame_size[0]}x{frame_size[1]}"
        )
    if tuple(out_size) != tuple(frame_size):
        mask = np.asarray(Image.fromarray(mask).resize(out_size, Image.Resampling.NEAREST), dtype=bool)
    return encode_mask_png(mask), round(float(mask.mean()), 6)


@dataclass
class EncodedSession:
    key: str
    members: dict[str, bytes]
    summary: dict[str, Any]


def encode_session(draft: SessionDraft, split: str, opts: BuildOptions, out_dir: Path | None = None) -> EncodedSession:
    """Encode a draft: read and re-encode frames and masks, check sizes, write the metadata JSON."""
    ext = opts.image_format
    where = draft.where or draft.clip_id
    members: dict[str, bytes] = {}
    frames_info = []
    src_sizes: list[tuple[int, int]] = []
    out_sizes: list[tuple[int, int]] = []
    digest = hashlib.sha256()
    for i, ref in enumerate(draft.frames):
        what = f"frame {i}" if isinstance(ref, bytes) else "frame"
        data, src_size, out_size = encode_frame(
            _read_ref(ref, where, what), opts, f"{where}: {what}" if isinstance(ref, bytes) else f"{where}: frame {ref}"
        )
        name = frame_member(i, ext)
        members[name] = data
        digest.update(hashlib.sha256(data).digest())
        src_sizes.append(src_size)
        out_sizes.append(out_size)
        info = {"member": name, "width": out_size[0], "height": out_size[1]}
        if draft.frame_times is not None:
            info["time"] = draft.frame_times[i]
        frames_info.append(info)
    turns = []
    for k, turn in enumerate(draft.turns):
        entry: dict[str, Any] = {
            "src": k,
            "dst": k + 1,
            "text": turn.text,
            "camera": turn.camera,
            "roe_rule": turn.rule,
            "src_mask": None,
            "dst_mask": None,
            "src_coverage": None,
            "dst_coverage": None,
            "changes": change_categories(turn),
            "annotation": turn.annotation,
            "roe": turn.roe,
        }
        for side, frame_idx in (("src", k), ("dst", k + 1)):
            ref = getattr(turn, f"{side}_mask")
            if ref is None:
                continue
            mwhere = f"{where}: turn {k} {side} mask" + ("" if isinstance(ref, bytes) else f" {ref}")
            data, cov = encode_mask(
                _read_ref(ref, where, f"turn {k} {side} mask"), src_sizes[frame_idx], out_sizes[frame_idx], mwhere
            )
            name = mask_member(k, side)
            members[name] = data
            entry[f"{side}_mask"] = name
            entry[f"{side}_coverage"] = cov
        turns.append(entry)
    meta = dict(draft.meta)
    if out_dir is not None and draft.base_dir is not None and isinstance(meta.get("source"), str):
        if not Path(meta["source"]).is_absolute():  # keep provenance paths valid beside the shards
            meta["source"] = rebase_path(meta["source"], draft.base_dir, out_dir)
    if draft.frame_times is not None:
        meta["frame_times"] = draft.frame_times
    info = {
        "format": SESSION_FORMAT,
        "key": draft.key,
        "clip_id": draft.clip_id,
        "kind": draft.kind,
        "split": split,
        "content_hash": digest.hexdigest(),
        "frames": frames_info,
        "turns": turns,
        "meta": meta,
    }
    members["json"] = json.dumps(info, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    summary = {
        "key": draft.key,
        "clip_id": draft.clip_id,
        "kind": draft.kind,
        "split": split,
        "content_hash": info["content_hash"],
        "turns": len(turns),
        "frames": len(frames_info),
        "bytes": sum(len(v) for v in members.values()),
        "rules": [t["roe_rule"] for t in turns],
        "cameras": [t["camera"] for t in turns],
        "changes": [t["changes"] for t in turns],
        "src_coverage": [t["src_coverage"] for t in turns],
        "dst_coverage": [t["dst_coverage"] for t in turns],
    }
    return EncodedSession(draft.key, members, summary)


# --------------------------------------------------------------------------------------------
# statistics and index


def compute_stats(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """Statistics over session summaries (sidecar entries)."""
    turns_hist: Counter = Counter()
    per_split: Counter = Counter()
    kinds: Counter = Counter()
    changes: Counter = Counter()
    rules: Counter = Counter()
    cameras: Counter = Counter()
    cov: dict[str, list[float]] = {"src": [], "dst": []}
    n_turns = n_frames = n_bytes = 0
    for s in sessions:
        per_split[s["split"]] += 1
        kinds[s["kind"]] += 1
        turns_hist[s["turns"]] += 1
        n_turns += s["turns"]
        n_frames += s["frames"]
        n_bytes += s["bytes"]
        rules.update(s["rules"])
        cameras.update(s["cameras"])
        for ch in s["changes"]:
            changes.update(ch)
        for side in ("src", "dst"):
            cov[side].extend(c for c in s[f"{side}_coverage"] if c is not None)
    edges = np.linspace(0.0, 1.0, 11)

    def coverage_stats(values: list[float]) -> dict[str, Any]:
        if not values:
            return {"masks": 0, "mean": None, "median": None, "histogram": [0] * 10}
        arr = np.asarray(values)
        return {
            "masks": len(values),
            "mean": round(float(arr.mean()), 4),
            "median": round(float(np.median(arr)), 4),
            "histogram": np.histogram(arr, bins=edges)[0].tolist(),
        }

    n = len(sessions)
    return {
        "sessions": n,
        "splits": dict(sorted(per_split.items())),
        "kinds": dict(sorted(kinds.items())),
        "turns": n_turns,
        "frames": n_frames,
        "bytes": n_bytes,
        "bytes_per_session": round(n_bytes / n) if n else 0,
        "turns_histogram": {str(k): v for k, v in sorted(turns_hist.items())},
        "roe_rules": dict(rules.most_common()),
        "change_categories": dict(changes.most_common()),
        "camera_motions": dict(cameras.most_common()),
        "mask_coverage": {
            "histogram_bins": [round(float(e), 2) for e in edges],
            "src": coverage_stats(cov["src"]),
            "dst": coverage_stats(cov["dst"]),
        },
    }


def format_stats(stats: dict[str, Any]) -> str:
    """A short human summary of stats.json for stderr."""
    lines = [
        f"sessions {stats['sessions']} ({', '.join(f'{k} {v}' for k, v in stats['splits'].items()) or 'none'}), "
        f"turns {stats['turns']}, frames {stats['frames']}, {stats['bytes'] / 1e6:.1f} MB "
        f"({stats['bytes_per_session'] / 1e3:.1f} kB/session)",
        "turns per session: " + ", ".join(f"{k}: {v}" for k, v in stats["turns_histogram"].items()),
        "roe rules: " + ", ".join(f"{k} {v}" for k, v in stats["roe_rules"].items()),
        "changes: " + (", ".join(f"{k} {v}" for k, v in stats["change_categories"].items()) or "-"),
    ]
    for side in ("src", "dst"):
        c = stats["mask_coverage"][side]
        if c["masks"]:
            lines.append(f"{side} mask coverage: {c['masks']} masks, mean {c['mean']:.3f}, median {c['median']:.3f}")
    return "\n".join(lines)


@contextlib.contextmanager
def _blocking_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class ShardCatalog:
    """The finished shards of an output folder (read from their sidecars), cached across updates."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.sidecars: dict[str, dict[str, Any]] = {}

    def refresh(self) -> None:
        for tar in sorted(self.out_dir.glob("*.tar")):
            if tar.name in self.sidecars or not SHARD_RE.match(tar.name):
                continue
            side = tar.with_suffix(".json")
            if not side.is_file():
                raise VincieError(
                    f"{tar}: finished shard without its sidecar {side.name}; the folder was edited "
                    "by hand (delete the shard to rebuild its sessions)"
                )
            self.sidecars[tar.name] = json.loads(side.read_text())

    def sessions(self) -> list[dict[str, Any]]:
        return [s for sc in self.sidecars.values() for s in sc["sessions"]]

    def write_index(self, options: dict[str, Any]) -> dict[str, Any]:
        """Rewrite index.json and stats.json from every finished shard (under a folder-wide lock)."""
        with _blocking_lock(self.out_dir / ".lock-index"):
            self.refresh()
            shards = []
            totals: dict[str, Counter] = {s: Counter() for s in SPLITS}
            for name in sorted(self.sidecars):
                sc = self.sidecars[name]
                row = {
                    "name": name,
                    "split": sc["split"],
                    "sessions": len(sc["sessions"]),
                    "turns": sum(s["turns"] for s in sc["sessions"]),
                    "frames": sum(s["frames"] for s in sc["sessions"]),
                    "bytes": sc["bytes"],
                }
                shards.append(row)
                totals[sc["split"]].update({k: row[k] for k in ("sessions", "turns", "frames", "bytes")})
                totals[sc["split"]]["shards"] += 1
            index = {
                "format": DATASET_FORMAT,
                "options": options,
                "shards": shards,
                "totals": {k: dict(v) for k, v in totals.items()},
            }
            atomic_write_json(self.out_dir / "index.json", index)
            stats = compute_stats(self.sessions())
            atomic_write_json(self.out_dir / "stats.json", stats)
        return stats


# --------------------------------------------------------------------------------------------
# the build


@dataclass
class BuildSummary:
    built: int = 0
    turns: int = 0
    skipped_done: int = 0
    duplicates: int = 0
    too_short: int = 0
    failed: int = 0
    shards: list[str] = field(default_factory=list)

    def as_record(self) -> dict[str, Any]:
        return {"type": "summary", "stage": "build-sessions", **asdict(self)}


class _OpenShard:
    def __init__(self, path: Path) -> None:
        self.writer = ShardWriter(path)
        self.sessions: list[dict[str, Any]] = []


class SessionBuilder:
    """Builds (or extends) one output folder; several `--shard I/N` processes may share the folder."""

    def __init__(
        self,
        out_dir: str | Path,
        opts: BuildOptions,
        shard: tuple[int, int] = (0, 1),
        keep_going: bool = False,
        emit: Callable[[dict[str, Any]], None] = lambda r: None,
    ) -> None:
        opts.check()
        self.out = Path(out_dir)
        self.opts = opts
        self.shard = shard
        self.keep_going = keep_going
        self.emit = emit
        i, n = shard
        width = len(str(n - 1))
        self.tag = "" if n == 1 else f"s{i:0{width}d}of{n}-"
        self.catalog = ShardCatalog(self.out)
        self.summary = BuildSummary()
        self._open: dict[str, _OpenShard] = {}
        self._next_seq: dict[str, int] = {}

    # -- setup --------------------------------------------------------------------------------

    def _check_options(self) -> None:
        path = self.out / "build.json"
        want = {"format": DATASET_FORMAT, **self.opts.data_options()}
        if path.is_file():
            have = json.loads(path.read_text())
            diff = [k for k in want if have.get(k) != want[k]]
            if diff:
                got = ", ".join(f"{k}={have.get(k)!r} (now {want[k]!r})" for k in diff)
                raise UsageError(f"{self.out} was built with other options: {got}; use another --out-dir")
        else:
            atomic_write_json(path, want)

    def _clean_partial(self) -> None:
        """Remove what an interrupted run of this --shard left: hidden temp shards and orphan sidecars."""
        for split in SPLITS:
            prefix = f"{split}-{self.tag}"
            for tmp in self.out.glob(f".{prefix}*.tar.*.tmp"):
                tmp.unlink()
            for side in self.out.glob(f"{prefix}*.json"):
                if SHARD_RE.match(side.with_suffix(".tar").name) and not side.with_suffix(".tar").exists():
                    side.unlink()

    def _seq_start(self, split: str) -> int:
        seqs = [
            int(m["seq"])
            for p in self.out.glob(f"{split}-*.tar")
            if (m := SHARD_RE.match(p.name)) and (m["tag"] or "") == self.tag.rstrip("-")
        ]
        return max(seqs, default=-1) + 1

    # -- shards -------------------------------------------------------------------------------

    def _writer(self, split: str) -> _OpenShard:
        if split not in self._open:
            seq = self._next_seq.setdefault(split, self._seq_start(split))
            self._next_seq[split] = seq + 1
            self._open[split] = _OpenShard(self.out / f"{split}-{self.tag}{seq:06d}.tar")
        return self._open[split]

    def _finish(self, split: str) -> None:
        shard = self._open.pop(split)
        if not shard.sessions:
            shard.writer.abort()
            return
        path = shard.writer.path
        size = shard.writer.finalize()
        side = {"format": "vincie-shard/1", "name": path.name, "split": split, "sessions": shard.sessions}
        side["bytes"] = size
        atomic_write_json(path.with_suffix(".json"), side, indent=None)  # the sidecar first, the tar last
        shard.writer.publish()
        self.catalog.write_index(self.opts.data_options())
        self.summary.shards.append(path.name)
        turns = sum(s["turns"] for s in shard.sessions)
        frames = sum(s["frames"] for s in shard.sessions)
        self.emit(
            {
                "type": "shard",
                "name": path.name,
                "path": str(path),
                "split": split,
                "sessions": len(shard.sessions),
                "turns": turns,
                "frames": frames,
                "bytes": size,
            }
        )
        log.info("wrote %s: %d sessions, %.1f MB", path.name, len(shard.sessions), size / 1e6)

    def _abort_all(self) -> None:
        for split in list(self._open):
            self._open.pop(split).writer.abort()

    # -- run ----------------------------------------------------------------------------------

    def _fail(self, err: BadInputError) -> None:
        if not self.keep_going:
            raise err
        self.summary.failed += 1
        rec = {"type": "error", "stage": "build-sessions", "error": str(err)}
        append_jsonl(self.out / "failures.jsonl", rec)
        self.emit(rec)
        log.error("%s", err)

    def run(self, inputs: list[str], kind: str | None = None, limit: int | None = None) -> BuildSummary:
        self.out.mkdir(parents=True, exist_ok=True)
        files = expand_inputs(inputs)
        i, n = self.shard
        with DirLock(self.out, f"-build-{i}-of-{n}"):
            self._check_options()
            self._clean_partial()
            self.catalog.refresh()
            done = self.catalog.sessions()
            done_keys = {s["key"] for s in done}
            keys: set[str] = set()
            clips = {(s["kind"], s["clip_id"]) for s in done}
            hashes = {s["content_hash"] for s in done}
            t0 = time.time()
            try:
                for draft in progress(self._drafts(files, kind), desc="sessions", unit="session"):
                    if isinstance(draft, BadInputError):
                        self._fail(draft)
                        continue
                    if draft.key in done_keys:
                        self.summary.skipped_done += 1
                        continue
                    if draft.key in keys or (self.opts.dedup and (draft.kind, draft.clip_id) in clips):
                        self.summary.duplicates += 1
                        log.info("%s: duplicate clip id %s, skipped", draft.where, draft.clip_id)
                        continue
                    if len(draft.turns) < self.opts.min_turns:
                        self.summary.too_short += 1
                        continue
                    split = split_of(str(draft.meta.get("clip_id") or draft.clip_id), self.opts.val_fraction)
                    try:
                        enc = encode_session(draft, split, self.opts, self.out)
                    except BadInputError as e:
                        self._fail(e)
                        continue
                    if self.opts.dedup and enc.summary["content_hash"] in hashes:
                        self.summary.duplicates += 1
                        log.info("%s: same frames as an earlier session, skipped", draft.where)
                        continue
                    keys.add(draft.key)
                    clips.add((draft.kind, draft.clip_id))
                    hashes.add(enc.summary["content_hash"])
                    shard = self._writer(split)
                    shard.writer.add(enc.key, enc.members)
                    shard.sessions.append(enc.summary)
                    self.summary.built += 1
                    self.summary.turns += enc.summary["turns"]
                    if shard.writer.size >= self.opts.shard_size_mb * 1e6:
                        self._finish(split)
                    if limit is not None and self.summary.built >= limit:
                        break
            except (VincieError, KeyboardInterrupt):
                # complete sessions are worth keeping: publish the open shards, then report
                for split in list(self._open):
                    self._finish(split)
                raise
            except BaseException:
                self._abort_all()
                raise
            for split in list(self._open):
                self._finish(split)
            stats = self.catalog.write_index(self.opts.data_options())
            log.info("built %d sessions in %.1f s\n%s", self.summary.built, time.time() - t0, format_stats(stats))
        return self.summary

    def _drafts(self, files: list[Path], kind: str | None) -> Iterator[SessionDraft | BadInputError]:
        for f in files:
            for draft in iter_drafts(f, kind):
                if isinstance(draft, BadInputError):
                    if self.shard[1] == 1 or in_shard(str(draft), self.shard):
                        yield draft
                    continue
                if in_shard(str(draft.meta.get("clip_id") or draft.clip_id), self.shard):
                    yield draft
