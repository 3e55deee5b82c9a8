"""WebDataset-compatible tar shards: atomic writing, validated streaming reads, safe member names.

A shard is a plain POSIX tar whose members are grouped by key (`<key>.<suffix>`, consecutive), so
`webdataset.WebDataset(url)` reads it as well. Writing goes to a hidden temporary file in the same
directory that is renamed onto `<name>.tar` only when the shard is complete: a crash never leaves a
half shard under a visible name. Reading checks every member name (no directories, no `..`, no
absolute paths, no links or devices, keys of [A-Za-z0-9_-] only) and turns a truncated or corrupt
archive into one BadInputError naming the shard.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from vincie_cli.sessions.session import KEY_RE, SUFFIX_RE
from vincie_cli.utils.io import BadInputError


def split_member_name(name: str, where: str) -> tuple[str, str]:
    """`<key>.<suffix>` -> (key, suffix); anything that could escape a directory or is not ours is an error."""
    if not name or name.startswith("/") or "\\" in name or "/" in name or name in (".", ".."):
        raise BadInputError(f"{where}: unsafe tar member name {name!r} (paths and directories are not allowed)")
    if "." not in name:
        raise BadInputError(f"{where}: tar member {name!r} has no <key>.<suffix> form")
    key, suffix = name.split(".", 1)
    if not KEY_RE.match(key) or not SUFFIX_RE.match(suffix):
        raise BadInputError(f"{where}: unsafe tar member name {name!r}")
    return key, suffix


class ShardWriter:
    """Write one tar shard; `close()` publishes it atomically, `abort()` removes it.

    Members are written with fixed metadata (mtime 0, mode 0644, uid/gid 0) so the same sessions give
    byte-identical shards.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._file = os.fdopen(fd, "wb")
        self.tmp_path = Path(tmp)
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.keys: list[str] = []

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._file.tell()

    def add(self, key: str, members: dict[str, bytes]) -> int:
        """Add one sample: members {suffix: bytes} written as `<key>.<suffix>`, the JSON first. Returns bytes."""
        before = self.size
        order = sorted(members, key=lambda s: (s != "json", s))
        for suffix in order:
            name = f"{key}.{suffix}"
            split_member_name(name, str(self.path))
            data = members[suffix]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.keys.append(key)
        return self.size - before

    def finalize(self) -> int:
        """Finish the archive and fsync it (still under its temporary name). Returns its size in bytes."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        size = self._file.tell()
        self._file.close()
        return size

    def publish(self) -> None:
        """Rename the finalized archive onto its final name (atomic), readable like any new file."""
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp_path, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(self.tmp_path, self.path)

    def close(self) -> int:
        """finalize() + publish(). Returns the size in bytes."""
        size = self.finalize()
        self.publish()
        return size

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._tar.close()
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp_path.unlink()


def _end_aware_tarinfo(state: dict[str, bool]) -> type[tarfile.TarInfo]:
    """A TarInfo class that notes whether the archive's end-of-archive (zero) block was reached.

    In stream mode tarfile treats a file that stops at a member boundary as a normal end; the zero
    block is what tells a complete archive from a truncated one.
    """

    class _TarInfo(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
            if len(buf) == tarfile.BLOCKSIZE and buf.count(tarfile.NUL) == tarfile.BLOCKSIZE:
                state["end"] = True
            return super().frombuf(buf, encoding, errors)

    return _TarInfo


def iter_samples(fileobj: IO[bytes], where: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream (key, {suffix: bytes}) samples from an open tar file, validating every member."""
    key: str | None = None
    group: dict[str, bytes] = {}
    seen: set[str] = set()
    state = {"end": False}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|", tarinfo=_end_aware_tarinfo(state)) as tar:
            for info in tar:
                if not info.isfile():
                    kind = "directory" if info.isdir() else "link" if info.issym() or info.islnk() else "special file"
                    raise BadInputError(f"{where}: tar member {info.name!r} is a {kind}; shards hold only files")
                k, suffix = split_member_name(info.name, where)
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if len(data) != info.size:
                    raise BadInputError(f"{where}: member {info.name!r} is truncated")
                if k != key:
                    if key is not None:
                        yield key, group
                    if k in seen:
                        raise BadInputError(f"{where}: members of sample {k!r} are not consecutive")
                    seen.add(k)
                    key, group = k, {}
                if suffix in group:
                    raise BadInputError(f"{where}: duplicate member {info.name!r}")
                group[suffix] = data
    except (tarfile.TarError, EOFError, OSError) as e:
        raise BadInputError(f"{where}: corrupt or truncated shard ({e})") from None
    if not state["end"]:
        raise BadInputError(f"{where}: corrupt or truncated shard (it stops before the end-of-archive block)")
    if key is not None:
        yield key, group


def read_shard(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """All samples of a shard at a local path or fsspec URL."""
    import fsspec

    try:
        f = fsspec.open(url, "rb").open()
    except (FileNotFoundError, OSError) as e:
        raise BadInputError(f"{url}: cannot open shard ({e})") from None
    with f:
        yield from iter_samples(f, url)
