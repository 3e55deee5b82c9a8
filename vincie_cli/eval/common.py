"""What the benchmarks share: finding parquet files (local or on the hub), reading images, results folders.

A results folder holds one sub-folder per session with one image per turn, the layout `vincie edit`
writes: `<results>/<session id>/turn{k}.png` (k = 1..K; .jpg/.jpeg/.webp are accepted too).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from vincie_cli.utils.io import BadInputError, VincieError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(source: str) -> bool:
    return bool(_HUB_ID.fullmatch(source)) and not Path(source).exists()


def parquet_files(source: str, what: str, allow_patterns: list[str] | None = None) -> list[Path]:
    """The parquet files of a local file, a local folder (searched recursively) or a hub dataset id.

    A hub id is fetched with huggingface_hub (only the matching parquet files); offline or
    unreachable, the error says how to pass a local copy instead.
    """
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise BadInputError(f"{path}: no .parquet files in this folder ({what})")
        return files
    if not is_hub_id(source):
        raise BadInputError(f"{source}: no such file or folder ({what})")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=source, repo_type="dataset", allow_patterns=allow_patterns or ["*.parquet"])
    except Exception as e:  # offline mode, no network, no such repo, auth
        raise VincieError(
            f"{source}: not a local path, and the hub copy could not be fetched ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'}); download the {what} parquet files "
            f"on a machine with network access and pass the local file or folder"
        ) from None
    files = sorted(Path(local).rglob("*.parquet"))
    if not files:
        raise BadInputError(f"{source}: the hub copy has no parquet files matching {allow_patterns} ({what})")
    return files


def read_parquet(path: Path, columns: list[str] | None = None) -> Any:
    """A pyarrow Table; a file that is not parquet gets a one-line error naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise BadInputError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:160]})") from None


def parquet_columns(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise BadInputError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:160]})") from None


def image_cell_bytes(value: Any, where: str) -> bytes:
    """Encoded bytes of an image cell: the datasets `Image` struct {bytes, path} or plain binary."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, memoryview)) and len(value) > 0:
        return bytes(value)
    raise BadInputError(f"{where}: no image bytes in this cell")


def image_ext(data: bytes) -> str:
    """A file extension for encoded image bytes."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".png"


def open_rgb(source: Path | bytes, where: str | None = None) -> Any:
    """A decoded RGB PIL image; an unreadable file is a BadInputError naming it."""
    from PIL import Image, UnidentifiedImageError

    name = where or (str(source) if isinstance(source, Path) else "image bytes")
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadInputError(f"{name}: not a readable image ({e})") from None
    return img.convert("RGB") if img.mode != "RGB" else img


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, checking that it decodes."""
    return open_rgb(path).size


def turn_image(results: Path, session_id: str, turn: int) -> Path | None:
    """`<results>/<id>/turn{k}.<ext>` if it exists."""
    folder = results / session_id
    for ext in IMAGE_EXTS:
        p = folder / f"turn{turn}{ext}"
        if p.is_file():
            return p
    return None


def describe_missing(incomplete: dict[str, list[int]], n_sessions: int, limit: int = 5) -> str:
    """'3 of 100 sessions are incomplete: 12 (turns 3, 4, 5 missing), ...'."""
    items = []
    for sid, turns in list(incomplete.items())[:limit]:
        items.append(f"{sid} (turn{'s' if len(turns) > 1 else ''} {', '.join(map(str, turns))} missing)")
    more = f", and {len(incomplete) - limit} more" if len(incomplete) > limit else ""
    return f"{len(incomplete)} of {n_sessions} sessions are incomplete: {', '.join(items)}{more}"
