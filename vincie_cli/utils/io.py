"""Crash-safe file output: atomic writes, append-only JSON lines, directory locks, shard selection.

Every stage writes through these helpers so an interrupted run never leaves a half-written file or
a half JSON line behind, and a re-run can tell finished work from unfinished work.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class VincieError(Exception):
    """An expected failure with a one-line message for the user (bad input, missing file, ...).

    The CLI prints `str(err)` on stderr and exits with `exit_code` without a traceback.
    """

    exit_code = 1


class BadInputError(VincieError):
    """Input that cannot be used; the message names the file and the problem."""


class UsageError(VincieError):
    """A wrong option or recipe value (exit code 2, like click's usage errors)."""

    exit_code = 2


# --------------------------------------------------------------------------------------------
# atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The temporary file keeps `path`'s extension (or `suffix`) so libraries that pick a format from
    the name (PIL, PyAV, safetensors) behave the same.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes[-1:])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file + fsync + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# JSON lines


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as a single line with one `write` call, then fsync.

    A crash can at worst leave a truncated last line, which `read_jsonl` skips (and reports when
    `strict`), so finished records are never lost.
    """
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # A torn last line from an earlier crash must not glue onto this record.
        size = os.fstat(fd).st_size
        if size > 0:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(fd, b"\n")
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_jsonl_tail(path: str | os.PathLike) -> bool:
    """Cut a torn last line (left by a crash mid-append) off a JSON-lines file; True if it cut one.

    Runners call this before appending, so the torn line never ends up in the middle of the file.
    """
    p = Path(path)
    if not p.is_file():
        return False
    data = p.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    cut = data.rfind(b"\n") + 1
    with open(p, "r+b") as f:
        f.truncate(cut)
    return True


def read_jsonl(path: str | os.PathLike, strict: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSON-lines file ('-' reads stdin).

    Blank lines are skipped. A line that is not valid JSON raises `BadInputError` naming the file
    and line when `strict`, otherwise it is skipped if it is the torn last line of a crash and
    reported otherwise.
    """
    import sys

    if str(path) == "-":
        lines: Iterable[str] = sys.stdin
        name = "<stdin>"
    else:
        p = Path(path)
        if not p.exists():
            raise BadInputError(f"{p}: no such file")
        if p.is_dir():
            raise BadInputError(f"{p}: is a directory, expected a JSON-lines file")
        lines = p.read_text(encoding="utf-8").splitlines(keepends=True)
        name = str(p)
    lines = list(lines)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            torn_tail = i == len(lines) and not line.endswith("\n")
            if torn_tail and not strict:
                continue
            raise BadInputError(f"{name}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise BadInputError(f"{name}:{i}: expected a JSON object per line")
        yield obj


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Write all `records` to `path` atomically (replacing it)."""
    text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
    atomic_write_text(path, text)


# --------------------------------------------------------------------------------------------
# locks and shards


class DirLock:
    """An exclusive advisory lock (fcntl.flock) on `<dir>/.lock<name>`.

    Two processes working on the same output directory (and the same shard) are refused with a
    clear message; the lock disappears with the process, so a crash never leaves a stale lock.
    """

    def __init__(self, directory: str | os.PathLike, name: str = "") -> None:
        self.path = Path(directory) / f".lock{name}"
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise VincieError(
                    f"{self.path.parent}: another process is working on this output "
                    f"(lock {self.path.name}); use another --out-dir or a different --shard"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def parse_shard(spec: str | None) -> tuple[int, int]:
    """Parse `--shard I/N` (0-based I) into (I, N); None means (0, 1)."""
    if spec is None or spec == "":
        return 0, 1
    try:
        i_str, n_str = spec.split("/")
        i, n = int(i_str), int(n_str)
    except ValueError:
        raise UsageError(f"--shard {spec!r}: expected I/N with whole numbers, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {spec!r}: need 0 <= I < N")
    return i, n


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """Deterministic, order-independent assignment of an item key to one of N shards."""
    i, n = shard
    if n == 1:
        return True
    return stable_hash_int(key) % n == i


def stable_hash(text: str, n: int = 16) -> str:
    """A short hex digest of `text` that is stable across processes and machines."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def stable_hash_int(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:15], 16)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """Per-user cache folder: $VINCIE_CACHE, else $XDG_CACHE_HOME/vincie, else ~/.cache/vincie."""
    env = os.environ.get("VINCIE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vincie"


def cached_sha256_file(path: str | os.PathLike) -> str:
    """`sha256_file`, remembered per user by (real path, size, mtime) so big read-only weights are hashed once.

    A changed file (size or modification time) is hashed again; an unwritable cache only costs time.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    store = cache_dir() / "file-hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = sha256_file(p)
    known[key] = digest
    try:
        atomic_write_json(store, known, indent=None)
    except OSError:
        pass
    return digest


def relpath(path: str | os.PathLike, start: str | os.PathLike) -> str:
    """`path` relative to directory `start`, with forward slashes (records store these)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()
