"""The resumable, sharded annotation pipeline: videos -> clips -> frames -> annotated transitions.

Layout of the output folder (paths inside records are relative to it):

    annotations.jsonl        one clip record per finished clip (records.py), appended last
    failures.jsonl           one line per failed video or clip, with the reason
    videos.jsonl             one line per video whose clips are all finished (re-runs skip it unopened)
    summary.json             counts and throughput of the last run (summary-shard-I-of-N.json with --shard)
    run.json                 the settings that decide clips and frames; a re-run must use the same
    plans/ab/<hash>.json     a video's clips (saves re-scanning it)
    clips/9f/<clip_id>/      000.png ... (frames), clip.json (frame plan), t000.json ... (finished transitions)

Crash safety: every file is written atomically, a clip's record is appended only after its frames and
transitions exist, and a re-run skips what is recorded, reuses cached frames and transitions, and
retries everything else. Concurrency: videos are prepared (scanned, sampled, decoded) by `workers`
threads while `backend.concurrency` threads send pair requests; a bounded number of clips is in
flight at any time.
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from vincie_cli import __version__
from vincie_cli.annotate.backends.base import Backend, FatalBackendError, PairRequest, Reply
from vincie_cli.annotate.inputs import VideoInput
from vincie_cli.annotate.parse import ParseError, parse_annotation
from vincie_cli.annotate.prompt import PROMPT_VERSION, prompt_sha
from vincie_cli.utils.io import (
    BadInputError,
    DirLock,
    UsageError,
    VincieError,
    append_jsonl,
    atomic_path,
    atomic_write_json,
    in_shard,
    relpath,
    stable_hash,
)
from vincie_cli.utils.log import get_logger
from vincie_cli.video.clips import ClipConfig, find_clips
from vincie_cli.video.decode import VideoInfo, VideoReader, decord_available, open_video, probe
from vincie_cli.video.sampling import SamplingConfig, drop_static, sample_times

log = get_logger(__name__)

FRAME_FORMATS = ("png", "jpeg")
MAX_RAW_CHARS = 20000


@dataclass
class AnnotateConfig:
    """Everything the runner needs besides the backend and the inputs."""

    out_dir: Path
    clips: ClipConfig = field(default_factory=ClipConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    decoder: str = "auto"
    frame_format: str = "png"
    jpeg_quality: int = 95
    frame_size: int = 0  # longest side of saved frames; 0 keeps the decoded (cropped) size
    max_attempts: int = 3  # replies per pair before it fails (invalid replies are retried)
    temperatures: tuple[float, ...] = (0.2, 0.7, 1.0)  # attempt k uses temperatures[min(k, len - 1)]
    shard: tuple[int, int] = (0, 1)
    keep_going: bool = False
    workers: int = 2  # videos prepared in parallel
    seed: int = 0

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.frame_format not in FRAME_FORMATS:
            raise UsageError(f"--frame-format {self.frame_format!r}: expected png or jpeg")
        if self.max_attempts < 1:
            raise UsageError("--max-attempts must be at least 1")
        if not self.temperatures:
            raise UsageError("--temperatures needs at least one value")

    def settings(self) -> dict[str, Any]:
        """The settings that decide which clips and frames exist; fixed for the life of an output folder."""
        return json.loads(
            json.dumps(
                {
                    "clips": dataclasses.asdict(self.clips),
                    "sampling": dataclasses.asdict(self.sampling),
                    "frame_format": self.frame_format,
                    "frame_size": self.frame_size,
                    "jpeg_quality": self.jpeg_quality if self.frame_format == "jpeg" else None,
                }
            )
        )

    def temperature(self, attempt: int) -> float:
        return float(self.temperatures[min(attempt, len(self.temperatures) - 1)])


def clip_id(key: str, start: float, end: float) -> str:
    """Stable id of a clip: a hash of the source video's absolute path and the clip's span."""
    return stable_hash(f"{key}|{start:.3f}|{end:.3f}", 16)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _flat(diff: dict[str, Any], old: Any, new: Any, prefix: str = "") -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            _flat(diff, old.get(k), new.get(k), f"{prefix}.{k}" if prefix else k)
    elif old != new:
        diff[prefix] = (old, new)


# ------------------------------------------------------------------------------------------------
# work items


@dataclass
class ClipJob:
    """One clip on its way through annotation."""

    video: VideoInput
    info: VideoInfo
    clip_id: str
    start: float
    end: float
    crop: tuple[int, int, int, int] | None
    dir: Path
    meta: dict[str, Any]  # clip.json: frames, sampling, size
    transitions: list[dict[str, Any] | None]
    raws: dict[int, list[str]] = field(default_factory=dict)
    remaining: int = 0
    failed: str | None = None
    cancelled: bool = False
    requests: dict[int, int] = field(default_factory=dict)  # per transition, over its attempts
    usage: dict[int, dict[str, int]] = field(default_factory=dict)
    cached: int = 0
    t0: float = field(default_factory=time.monotonic)

    @property
    def n_pairs(self) -> int:
        return len(self.meta["frames"]) - 1


@dataclass
class PairTask:
    job: ClipJob
    index: int
    attempt: int = 0
    retry_reason: str | None = None


@dataclass
class VideoWork:
    video: VideoInput
    info: VideoInfo | None = None
    jobs: list[ClipJob] = field(default_factory=list)
    finished: int = 0  # clips finished in an earlier run
    static: int = 0  # clips skipped because their frames do not change
    failures: list[dict[str, Any]] = field(default_factory=list)
    clips_total: int = 0
    complete: bool = False  # every clip was looked at (not cut short by a stop)


@dataclass
class _VideoState:
    work: VideoWork
    pending: int
    failed: int


class _Progress:
    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        from vincie_cli.utils import log as logmod

        disable = logmod._QUIET or not sys.stderr.isatty()
        self.bar = tqdm(
            total=total, desc="annotate", unit="video", file=sys.stderr, disable=disable, dynamic_ncols=True
        )

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------------------------------------
# locking


class OutputLock:
    """Refuse a second process on the same output folder unless it runs another shard of the same split.

    Every process holds a shared lock on `.lock` and an exclusive one on `.lock-shard-I-of-N`. The
    shard count of the processes running now is kept in `.lock`; a process with a different N is
    refused (its shards would overlap). `.lock-meta` serialises the check.
    """

    def __init__(self, out_dir: Path, shard: tuple[int, int]) -> None:
        self.out_dir = out_dir
        self.shard = shard
        self._fds: list[int] = []
        self._shard_lock: DirLock | None = None

    def acquire(self) -> OutputLock:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        i, n = self.shard
        meta = os.open(self.out_dir / ".lock-meta", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(meta, fcntl.LOCK_EX)
            fd = os.open(self.out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except OSError:
                alone = False
            if alone:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(n).encode(), 0)
                fcntl.flock(fd, fcntl.LOCK_SH)
            else:
                fcntl.flock(fd, fcntl.LOCK_SH)
                running = os.pread(fd, 32, 0).decode(errors="replace").strip()
                if running != str(n):
                    os.close(fd)
                    raise VincieError(
                        f"{self.out_dir}: another process is annotating it split into {running or '?'} shards; "
                        f"--shard {i}/{n} would overlap its work (use the same N, or another --out-dir)"
                    )
            self._fds.append(fd)
            self._shard_lock = DirLock(self.out_dir, f"-shard-{i}-of-{n}").acquire()
        except BaseException:
            self.release()
            raise
        finally:
            fcntl.flock(meta, fcntl.LOCK_UN)
            os.close(meta)
        return self

    def release(self) -> None:
        if self._shard_lock is not None:
            self._shard_lock.release()
            self._shard_lock = None
        for fd in self._fds:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self._fds = []


# ------------------------------------------------------------------------------------------------


def _remove_strays(folder: Path, pattern: str) -> None:
    """Delete temporary files that an interrupted atomic write left behind."""
    if folder.is_dir():
        for f in folder.glob(pattern):
            try:
                f.unlink()
            except OSError:
                pass


def _read_ids(path: Path, key: str) -> set[str]:
    """The `key` field of every complete line of a JSON-lines file (streamed; a torn last line is skipped)."""
    ids: set[str] = set()
    if not path.exists():
        return ids
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get(key), str):
                ids.add(obj[key])
    return ids


class Runner:
    """Annotate a list of videos into `cfg.out_dir` with `backend`. `emit` receives each stdout record."""

    def __init__(self, cfg: AnnotateConfig, backend: Backend, emit: Callable[[dict[str, Any]], None] | None = None):
        if cfg.decoder == "decord" and not decord_available():
            raise UsageError("--decoder decord: decord is not installed (pip install decord), or use --decoder auto")
        self.cfg = cfg
        self.backend = backend
        self.emit = emit or (lambda rec: None)
        self.out = cfg.out_dir
        self.annotations = self.out / "annotations.jsonl"
        self.failures_path = self.out / "failures.jsonl"
        self.videos_path = self.out / "videos.jsonl"
        self._lock = threading.RLock()
        self._out_lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._first_error: str | None = None
        self._fatal: BaseException | None = None
        self._q: queue.Queue[PairTask | None] = queue.Queue()
        self._inflight_tasks = 0
        self._active_clips = 0
        self._videos: dict[str, _VideoState] = {}
        self._progress: _Progress | None = None
        self._prompt_sha = prompt_sha()
        self.stats: collections.Counter[str] = collections.Counter()
        self.usage: collections.Counter[str] = collections.Counter()
        window = max(1, backend.concurrency) * max(1, backend.batch_size)
        self._slots = threading.Semaphore(max(4, 2 * window))

    # ---- settings ------------------------------------------------------------------------------
    def _check_settings(self) -> None:
        path = self.out / "run.json"
        settings = self.cfg.settings()
        if path.exists():
            try:
                old = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
            except (OSError, json.JSONDecodeError, AttributeError):
                raise BadInputError(f"{path}: unreadable; remove it only if you know the folder's settings") from None
            diff: dict[str, Any] = {}
            _flat(diff, old, settings)
            if diff:
                changes = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:6])
                raise UsageError(
                    f"{self.out} was annotated with other clip/frame settings ({changes}); "
                    "re-run with the same options or use another --out-dir"
                )
        else:
            atomic_write_json(path, {"type": "annotate_run", "created": _now(), "settings": settings})

    # ---- public --------------------------------------------------------------------------------
    def run(self, videos: list[VideoInput], problems: list[Any] = ()) -> dict[str, Any]:
        """Process the videos of this shard; return the summary (also written to summary*.json)."""
        cfg = self.cfg
        lock = OutputLock(self.out, cfg.shard).acquire()
        try:
            self._check_settings()
            return self._run(videos, list(problems))
        finally:
            lock.release()

    def _run(self, videos: list[VideoInput], problems: list[Any]) -> dict[str, Any]:
        cfg = self.cfg
        t_start = time.monotonic()
        for p in problems:
            self._record_failure({"source": p.where, "stage": "input", "reason": str(p)})
            if not cfg.keep_going:
                raise BadInputError(str(p))
        mine = [v for v in videos if in_shard(v.key, cfg.shard)]
        done_videos = _read_ids(self.videos_path, "source_path")
        self.done_clips = _read_ids(self.annotations, "clip_id")
        todo = [v for v in mine if v.key not in done_videos]
        self.stats["videos"] = len(mine)
        self.stats["videos_already_done"] = len(mine) - len(todo)
        log.info(
            "%d videos in shard %d/%d (%d already done); backend %s%s",
            len(mine), cfg.shard[0], cfg.shard[1], len(mine) - len(todo), self.backend.name,
            f" ({self.backend.model})" if self.backend.model else "",
        )  # fmt: skip
        self._progress = _Progress(len(todo))
        workers = [
            threading.Thread(target=self._worker, name=f"annotate-{k}", daemon=True)
            for k in range(max(1, self.backend.concurrency))
        ]
        for w in workers:
            w.start()
        pool = ThreadPoolExecutor(max_workers=max(1, cfg.workers), thread_name_prefix="prepare")
        interrupted = False
        try:
            pending: collections.deque[Future[VideoWork]] = collections.deque()
            it = iter(todo)
            exhausted = False
            while not self._stop.is_set():
                while not exhausted and len(pending) < max(2, 2 * cfg.workers):
                    v = next(it, None)
                    if v is None:
                        exhausted = True
                        break
                    pending.append(pool.submit(self._prepare, v))
                if not pending:
                    break
                self._submit(pending.popleft().result())
            self._drain()
        except BaseException:
            interrupted = True
            raise
        finally:
            self._stop.set()
            for _ in workers:
                self._q.put(None)
            pool.shutdown(wait=not interrupted, cancel_futures=True)
            self._progress.close()
            self.backend.close()
        summary = self._summary(time.monotonic() - t_start)
        if self._fatal is not None:
            raise self._fatal
        if self._first_error is not None and not cfg.keep_going:
            raise BadInputError(self._first_error)
        return summary

    # ---- preparing a video (pool threads) ------------------------------------------------------
    def _prepare(self, video: VideoInput) -> VideoWork:
        work = VideoWork(video)
        if self._stop.is_set():
            return work
        try:
            work.info = info = probe(video.path)
            self.backend.check_source(video.key)
            reader: VideoReader | None = None

            def reader_open() -> VideoReader:
                nonlocal reader
                if reader is None:
                    reader = open_video(video.path, self.cfg.decoder, info)  # type: ignore[arg-type]
                return reader

            try:
                plan = self._plan(video, info, reader_open)
                work.clips_total = len(plan["clips"])
                for c in plan["clips"]:
                    if self._stop.is_set():
                        return work
                    if c["clip_id"] in self.done_clips:
                        work.finished += 1
                        continue
                    try:
                        job = self._prepare_clip(video, info, c, reader_open)
                    except VincieError as e:
                        work.failures.append(self._clip_failure(video, c, "frames", str(e)))
                        continue
                    except Exception as e:  # a decoder bug on one clip must not take the video down
                        log.debug("clip %s", c["clip_id"], exc_info=True)
                        work.failures.append(self._clip_failure(video, c, "frames", f"{type(e).__name__}: {e}"))
                        continue
                    if job is None:
                        work.static += 1
                    else:
                        work.jobs.append(job)
                work.complete = True
            finally:
                if reader is not None:
                    reader.close()
        except VincieError as e:
            work.failures.append(self._video_failure(video, "open", str(e)))
            work.complete = True
        except Exception as e:
            log.debug("video %s", video.key, exc_info=True)
            work.failures.append(self._video_failure(video, "open", f"{video.path}: {type(e).__name__}: {e}"))
            work.complete = True
        return work

    def _plan(self, video: VideoInput, info: VideoInfo, reader: Callable[[], VideoReader]) -> dict[str, Any]:
        vh = stable_hash(video.key, 16)
        path = self.out / "plans" / vh[:2] / f"{vh}.json"
        _remove_strays(path.parent, f".{vh}.json.*.tmp*")
        if path.exists():
            try:
                plan = json.loads(path.read_text(encoding="utf-8"))
                if plan.get("source_path") == video.key:
                    return plan
            except (OSError, json.JSONDecodeError):
                pass
        seg = find_clips(reader(), self.cfg.clips)
        if not seg.clips:
            raise BadInputError(f"{video.path}: {seg.explain_empty(self.cfg.clips)}")
        plan = {
            "source_path": video.key,
            "duration": round(seg.duration, 6),
            "cuts": [round(c, 6) for c in seg.cuts],
            "dropped": [{**d, "start": round(d["start"], 6), "end": round(d["end"], 6)} for d in seg.dropped],
            "clips": [
                {
                    "clip_id": clip_id(video.key, c.start, c.end),
                    "start": round(c.start, 6),
                    "end": round(c.end, 6),
                    "crop": list(c.crop) if c.crop else None,
                }
                for c in seg.clips
            ],
        }
        atomic_write_json(path, plan, indent=None)
        return plan

    def _clip_dir(self, cid: str) -> Path:
        return self.out / "clips" / cid[:2] / cid

    def _prepare_clip(
        self, video: VideoInput, info: VideoInfo, c: dict[str, Any], reader: Callable[[], VideoReader]
    ) -> ClipJob | None:
        """Frames of one clip (decoded, or reused from an earlier run) and its cached transitions; None if static."""
        cid = c["clip_id"]
        cdir = self._clip_dir(cid)
        _remove_strays(cdir, ".*.tmp*")  # left by a killed run; this clip belongs to this process only
        meta_path = cdir / "clip.json"
        meta = None
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                if "skipped" not in meta and not all((cdir / Path(f["file"])).is_file() for f in meta["frames"]):
                    meta = None
            except (OSError, json.JSONDecodeError, KeyError, TypeError):
                meta = None
        if meta is None:
            meta = self._decode_clip(video, c, cdir, reader())
            atomic_write_json(meta_path, meta, indent=None)
        if "skipped" in meta:
            return None
        crop = tuple(c["crop"]) if c.get("crop") else None
        job = ClipJob(video, info, cid, c["start"], c["end"], crop, cdir, meta, [None] * (len(meta["frames"]) - 1))  # type: ignore[arg-type]
        for i in range(job.n_pairs):
            tpath = cdir / f"t{i:03d}.json"
            if tpath.exists():
                try:
                    tr = json.loads(tpath.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    continue
                if (tr.get("backend"), tr.get("model"), tr.get("prompt_version")) == (
                    self.backend.name,
                    self.backend.model,
                    PROMPT_VERSION,
                ):
                    job.transitions[i] = tr
                    job.cached += 1
        return job

    def _decode_clip(self, video: VideoInput, c: dict[str, Any], cdir: Path, reader: VideoReader) -> dict[str, Any]:
        from PIL import Image

        cfg = self.cfg
        mode, times = sample_times(c["start"], c["end"], cfg.sampling, c["clip_id"])
        frames = reader.frames_at(times)
        images = []
        for fr in frames:
            img = fr.image
            if c.get("crop"):
                x0, y0, x1, y1 = c["crop"]
                img = img[y0:y1, x0:x1]
            images.append(np.ascontiguousarray(img))
        keep = drop_static(images, cfg.sampling.min_change)
        base = {"clip_id": c["clip_id"], "mode": mode, "requested_times": times, "reader": reader.name}
        if len(keep) < 2:
            return {**base, "skipped": f"static: the {len(times)} sampled frames are nearly identical"}
        ext = "png" if cfg.frame_format == "png" else "jpg"
        out_frames = []
        size = None
        for k, i in enumerate(keep):
            im = Image.fromarray(images[i])
            if cfg.frame_size and max(im.size) > cfg.frame_size:
                s = cfg.frame_size / max(im.size)
                im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.LANCZOS)
            size = im.size
            name = f"{k:03d}.{ext}"
            with atomic_path(cdir / name) as tmp:
                if ext == "png":
                    im.save(tmp, format="PNG", compress_level=3)
                else:
                    im.save(tmp, format="JPEG", quality=cfg.jpeg_quality)
            self.backend.preload(cdir / name, im)
            out_frames.append({"index": k, "time": round(frames[i].time, 6), "file": name})
        assert size is not None
        return {
            **base,
            "width": size[0],
            "height": size[1],
            "dropped_static": [i for i in range(len(times)) if i not in keep],
            "frames": out_frames,
        }

    # ---- submitting and annotating -------------------------------------------------------------
    def _submit(self, work: VideoWork) -> None:
        """Record a prepared video's failures and queue its clips' pairs (main thread)."""
        for f in work.failures:
            self._record_failure(f)
        if not work.complete:
            return  # cut short by a stop
        state = _VideoState(work, pending=len(work.jobs), failed=len(work.failures))
        with self._lock:
            self._videos[work.video.key] = state
            self.stats["clips_already_done"] += work.finished
            self.stats["clips_static"] += work.static
        if not work.jobs:
            self._video_finished(state)
            return
        for job in work.jobs:
            while not self._slots.acquire(timeout=0.2):
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                self._slots.release()
                return
            todo = [i for i, t in enumerate(job.transitions) if t is None]
            with self._lock:
                self._active_clips += 1
                job.remaining = len(todo)
                self.stats["pairs_cached"] += job.cached
            if not todo:
                self._finish_clip(job)
                continue
            for i in todo:
                self._put(PairTask(job, i))

    def _put(self, task: PairTask) -> None:
        with self._lock:
            self._inflight_tasks += 1
        self._q.put(task)

    def _request(self, task: PairTask) -> PairRequest:
        job = task.job
        frames = job.meta["frames"]
        a, b = frames[task.index], frames[task.index + 1]
        return PairRequest(
            key=f"{job.clip_id}/{task.index}",
            images=(job.dir / a["file"], job.dir / b["file"]),
            times=(a["time"], b["time"]),
            source=job.video.key,
            caption=job.video.caption,
            temperature=self.cfg.temperature(task.attempt),
            attempt=task.attempt,
            retry_reason=task.retry_reason,
        )

    def _worker(self) -> None:
        bs = max(1, self.backend.batch_size)
        while True:
            task = self._q.get()
            if task is None:
                return
            batch = [task]
            while len(batch) < bs:
                try:
                    nxt = self._q.get(timeout=0.02)
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                batch.append(nxt)
            if self._stop.is_set():
                for t in batch:
                    self._cancel(t)
                continue
            try:
                replies = self.backend.generate([self._request(t) for t in batch])
            except FatalBackendError as e:
                with self._lock:
                    self._fatal = self._fatal or e
                self._stop.set()
                for t in batch:
                    self._cancel(t)
                continue
            except Exception as e:  # a model error (out of memory, ...) fails these pairs, not the run
                log.debug("backend error", exc_info=True)
                replies = [Reply(error=f"{type(e).__name__}: {e}") for _ in batch]
            for t, r in zip(batch, replies):
                try:
                    self._handle(t, r)
                except Exception as e:  # never lose a task's accounting
                    log.debug("handling a reply", exc_info=True)
                    self._pair_done(t.job, t.index, failure=f"{type(e).__name__}: {e}")

    def _cancel(self, task: PairTask) -> None:
        with self._lock:
            task.job.cancelled = True
            self._inflight_tasks -= 1
            self._cond.notify_all()

    def _handle(self, task: PairTask, reply: Reply) -> None:
        job = task.job
        with self._lock:
            job.requests[task.index] = job.requests.get(task.index, 0) + reply.requests
            self.stats["requests"] += reply.requests
            self.stats["attempts"] += 1
            usage = job.usage.setdefault(task.index, {})
            for k, v in reply.usage.items():
                usage[k] = usage.get(k, 0) + v
                self.usage[k] += v
        if reply.error is not None:
            self._pair_done(job, task.index, failure=f"transition {task.index}: {reply.error}")
            return
        raw = reply.text or ""
        job.raws.setdefault(task.index, []).append(raw[:MAX_RAW_CHARS])
        try:
            ann = parse_annotation(raw, where=f"transition {task.index}")
        except ParseError as e:
            reason = str(e)
            if task.attempt + 1 < self.cfg.max_attempts and not self._stop.is_set() and job.failed is None:
                with self._lock:
                    self.stats["retries"] += 1
                self._put(PairTask(job, task.index, task.attempt + 1, reason))
                self._pair_done(job, task.index, requeued=True)
                return
            self._pair_done(
                job,
                task.index,
                failure=f"transition {task.index}: no valid annotation after {task.attempt + 1} attempts ({reason})",
            )
            return
        tr = {
            "index": task.index,
            "src": task.index,
            "dst": task.index + 1,
            "annotation": ann,
            "raw": raw,
            "attempts": task.attempt + 1,
            "roe": None,
            "requests": job.requests.get(task.index, 0),
            "usage": job.usage.get(task.index, {}),
            "backend": self.backend.name,
            "model": self.backend.model,
            "prompt_version": PROMPT_VERSION,
        }
        atomic_write_json(job.dir / f"t{task.index:03d}.json", tr, indent=None)
        job.transitions[task.index] = tr
        with self._lock:
            self.stats["pairs"] += 1
        self._pair_done(job, task.index)

    def _pair_done(self, job: ClipJob, index: int, failure: str | None = None, requeued: bool = False) -> None:
        finish = False
        with self._lock:
            self._inflight_tasks -= 1
            if not requeued:
                if failure is not None and job.failed is None:
                    job.failed = failure
                job.remaining -= 1
                finish = job.remaining == 0 and not job.cancelled
            self._cond.notify_all()
        if finish:
            self._finish_clip(job)

    # ---- finishing -----------------------------------------------------------------------------
    def _record(self, job: ClipJob) -> dict[str, Any]:
        meta = job.meta
        transitions = []
        for tr in job.transitions:
            assert tr is not None
            transitions.append({k: tr[k] for k in ("index", "src", "dst", "annotation", "raw", "attempts", "roe")})
        info = job.info
        usage: dict[str, int] = {}
        for tr in job.transitions:
            for k, v in tr.get("usage", {}).items():  # type: ignore[union-attr]
                usage[k] = usage.get(k, 0) + v
        return {
            "type": "clip",
            "clip_id": job.clip_id,
            "source": relpath(job.video.path, self.out),
            "source_caption": job.video.caption,
            "clip_start": job.start,
            "clip_end": job.end,
            "width": meta["width"],
            "height": meta["height"],
            "crop": list(job.crop) if job.crop else None,
            "frames": [
                {"index": f["index"], "time": f["time"], "path": relpath(job.dir / f["file"], self.out)}
                for f in meta["frames"]
            ],
            "transitions": transitions,
            "backend": self.backend.name,
            "model": self.backend.model,
            "prompt_version": PROMPT_VERSION,
            "provenance": {
                "tool": f"vincie {__version__} annotate",
                "source_path": job.video.key,
                "video": {
                    "width": info.width,
                    "height": info.height,
                    "rotation": info.rotation,
                    "fps": round(info.fps, 6),
                    "duration": round(info.duration, 6),
                    "codec": info.codec,
                    "decoder": meta.get("reader"),
                },
                "sampling": {
                    "mode": meta["mode"],
                    "requested_times": meta["requested_times"],
                    "dropped_static": meta.get("dropped_static", []),
                    "seed": self.cfg.sampling.seed,
                },
                "prompt_sha": self._prompt_sha,
                "backend_settings": self.backend.describe(),
                "requests": sum(tr.get("requests", 0) for tr in job.transitions),  # type: ignore[union-attr]
                "usage": usage,
                "created": _now(),
                "elapsed_s": round(time.monotonic() - job.t0, 3),
            },
        }

    def _finish_clip(self, job: ClipJob) -> None:
        if job.failed is not None:
            raws = {str(k): v for k, v in job.raws.items() if job.transitions[k] is None}
            self._record_failure(
                {
                    **self._clip_failure(job.video, {"clip_id": job.clip_id, "start": job.start, "end": job.end},
                                         "annotate", job.failed),
                    "raw": raws,
                }
            )  # fmt: skip
        else:
            rec = self._record(job)
            with self._out_lock:
                append_jsonl(self.annotations, rec)
                self.emit(rec)
        with self._lock:
            state = self._videos.get(job.video.key)
            if job.failed is None:
                self.stats["clips"] += 1
            done = False
            if state is not None:
                state.pending -= 1
                state.failed += job.failed is not None
                done = state.pending == 0
        if done and state is not None:
            self._video_finished(state)
        with self._lock:
            self._active_clips -= 1  # last: _drain() returns only after the bookkeeping above
            self._cond.notify_all()
        self._slots.release()

    def _video_finished(self, state: _VideoState) -> None:
        work = state.work
        if state.failed == 0 and work.info is not None and work.complete:
            with self._out_lock:
                append_jsonl(
                    self.videos_path,
                    {
                        "type": "video",
                        "source_path": work.video.key,
                        "source": relpath(work.video.path, self.out),
                        "clips": work.clips_total,
                        "static": work.static,
                        "duration": round(work.info.duration, 6),
                        "finished": _now(),
                    },
                )
        with self._lock:
            self.stats["videos_done"] += state.failed == 0
            self.stats["videos_failed"] += state.failed > 0
            if self._progress is not None:
                self._progress.update(
                    clips=self.stats["clips"], pairs=self.stats["pairs"], failed=self.stats["failures"]
                )

    def _drain(self) -> None:
        """Wait until every queued clip is finished (or, once stopped, until no request is in flight)."""
        with self._cond:
            while True:
                if self._active_clips == 0:
                    return
                if self._stop.is_set() and self._inflight_tasks == 0:
                    return
                self._cond.wait(timeout=0.5)

    # ---- failures ------------------------------------------------------------------------------
    def _video_failure(self, video: VideoInput, stage: str, reason: str) -> dict[str, Any]:
        if str(video.path) not in reason:
            reason = f"{video.path}: {reason}"
        return {"source": relpath(video.path, self.out), "source_path": video.key, "stage": stage, "reason": reason}

    def _clip_failure(self, video: VideoInput, c: dict[str, Any], stage: str, reason: str) -> dict[str, Any]:
        span = f"clip {c['start']:.2f}-{c['end']:.2f} s"
        if not reason.startswith(str(video.path)):
            reason = f"{video.path} ({span}): {reason}"
        return {
            "source": relpath(video.path, self.out),
            "source_path": video.key,
            "clip_id": c["clip_id"],
            "clip_start": c["start"],
            "clip_end": c["end"],
            "stage": stage,
            "reason": reason,
        }

    def _record_failure(self, failure: dict[str, Any]) -> None:
        rec = {
            "type": "failure",
            **failure,
            "backend": self.backend.name,
            "model": self.backend.model,
            "time": _now(),
        }
        with self._out_lock:
            append_jsonl(self.failures_path, rec)
            self.emit({**{k: v for k, v in rec.items() if k != "raw"}, "type": "error"})
        if self.cfg.keep_going:  # otherwise the CLI prints it as the error line
            log.warning("%s", failure["reason"])
        with self._lock:
            self.stats["failures"] += 1
            if self._first_error is None:
                self._first_error = failure["reason"]
        if not self.cfg.keep_going:
            self._stop.set()

    # ---- summary -------------------------------------------------------------------------------
    def _summary(self, elapsed: float) -> dict[str, Any]:
        s = self.stats
        i, n = self.cfg.shard
        summary = {
            "type": "summary",
            "out_dir": str(self.out),
            "shard": f"{i}/{n}",
            "backend": self.backend.name,
            "model": self.backend.model,
            "prompt_version": PROMPT_VERSION,
            "videos": s["videos"],
            "videos_already_done": s["videos_already_done"],
            "videos_done": s["videos_done"],
            "videos_failed": s["videos_failed"],
            "clips": s["clips"],
            "clips_already_done": s["clips_already_done"],
            "clips_static": s["clips_static"],
            "pairs": s["pairs"],
            "pairs_cached": s["pairs_cached"],
            "attempts": s["attempts"],
            "retries": s["retries"],
            "requests": s["requests"],
            "failures": s["failures"],
            "usage": dict(self.usage),
            "elapsed_s": round(elapsed, 3),
            "clips_per_s": round(s["clips"] / elapsed, 3) if elapsed > 0 else None,
            "pairs_per_s": round(s["pairs"] / elapsed, 3) if elapsed > 0 else None,
            "finished": _now(),
        }
        name = "summary.json" if n == 1 else f"summary-shard-{i}-of-{n}.json"
        atomic_write_json(self.out / name, summary)
        log.info(
            "annotated %d clips (%d pairs) from %d videos in %.1f s (%.2f pairs/s); %d static, %d failures%s",
            s["clips"], s["pairs"], s["videos_done"], elapsed, summary["pairs_per_s"] or 0.0, s["clips_static"],
            s["failures"], f" (see {self.failures_path})" if s["failures"] else "",
        )  # fmt: skip
        return summary
