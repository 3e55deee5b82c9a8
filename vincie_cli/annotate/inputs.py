"""Turn the INPUT arguments of `vincie annotate` into a list of videos.

An input is a video file, a folder (searched recursively for video files), a glob pattern, or a
manifest: a text file with one path per line, or JSON lines with {"path": ..., "caption": ...}
(`.txt`, `.list`, `.jsonl`, `.json`, `.manifest`; `-` reads one from stdin). Relative paths in a
manifest are relative to the manifest's folder (stdin: the working directory). Problems come back
as (where, message) pairs so the runner can stop or record them under --keep-going.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".3gp", ".ogv",
)  # fmt: skip
MANIFEST_EXTENSIONS = (".txt", ".list", ".jsonl", ".json", ".manifest")


@dataclass
class VideoInput:
    path: Path  # absolute, normalised (symlinks kept)
    caption: str | None = None

    @property
    def key(self) -> str:
        """The identity of the video for shards, clip ids and resume: its absolute path."""
        return str(self.path)


@dataclass
class InputProblem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _abs(path: str | os.PathLike, base: Path | None = None) -> Path:
    p = Path(os.path.expanduser(str(path)))
    if not p.is_absolute():
        p = (base or Path.cwd()) / p
    return Path(os.path.normpath(p))


def _walk(folder: Path, problems: list[InputProblem]) -> list[Path]:
    found: list[Path] = []

    def onerror(err: OSError) -> None:
        where = err.filename or folder
        what = "permission denied" if isinstance(err, PermissionError) else (err.strerror or str(err))
        problems.append(InputProblem(str(where), f"cannot list the folder ({what})"))

    for root, dirs, files in os.walk(folder, onerror=onerror, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith("."):
                found.append(Path(root) / name)
    return found


def read_manifest(lines: list[str], name: str, base: Path) -> tuple[list[VideoInput], list[InputProblem]]:
    videos: list[VideoInput] = []
    problems: list[InputProblem] = []
    for i, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        caption = None
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(InputProblem(f"{name}:{i}", f"not valid JSON ({e.msg})"))
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("path"), str) or not obj["path"]:
                problems.append(InputProblem(f"{name}:{i}", 'expected {"path": "...", "caption": "..."}'))
                continue
            path = obj["path"]
            cap = obj.get("caption")
            caption = str(cap) if cap not in (None, "") else None
        else:
            path = line
        videos.append(VideoInput(_abs(path, base), caption))
    return videos, problems


def is_manifest(path: Path) -> bool:
    return path.suffix.lower() in MANIFEST_EXTENSIONS


def collect_inputs(specs: list[str], stdin: TextIO | None = None) -> tuple[list[VideoInput], list[InputProblem]]:
    """All videos named by `specs`, in order, without duplicates (the first caption wins)."""
    videos: list[VideoInput] = []
    problems: list[InputProblem] = []
    for spec in specs:
        if spec == "-":
            lines = (stdin or sys.stdin).read().splitlines()
            v, p = read_manifest(lines, "<stdin>", Path.cwd())
            videos += v
            problems += p
            continue
        path = _abs(spec)
        if path.is_dir():
            before = len(problems)
            found = _walk(path, problems)
            if not found and len(problems) == before:
                problems.append(InputProblem(spec, "no video files in this folder"))
            videos += [VideoInput(f) for f in found]
        elif path.is_file() and is_manifest(path):
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                problems.append(InputProblem(spec, f"cannot read the manifest ({getattr(e, 'strerror', None) or e})"))
                continue
            v, p = read_manifest(lines, spec, path.parent)
            videos += v
            problems += p
        elif path.exists() or os.path.lexists(path):
            videos.append(VideoInput(path))  # checked (and reported) when it is opened
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file() and m.lower().endswith(VIDEO_EXTENSIONS)]
            if not files:
                problems.append(InputProblem(spec, "no video file matches this pattern"))
            videos += [VideoInput(_abs(f)) for f in files]
        else:
            videos.append(VideoInput(path))  # a missing file: reported as that file's failure
    seen: set[str] = set()
    unique = []
    for v in videos:
        if v.key not in seen:
            seen.add(v.key)
            unique.append(v)
    return unique, problems
