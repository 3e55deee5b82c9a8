"""Safe checkpoint I/O: pickles read with `weights_only=True`, safetensors read lazily and written tensor by tensor.

- `load_torch_state_dict`: a flat {name: Tensor} from a `.pth`/`.bin` pickle (mmap where the format allows, so
  tensors stay on disk until touched). A pickle that needs anything beyond tensors and plain containers is
  refused, never executed.
- `SafetensorsReader`: names, shapes and dtypes from the header without reading data; one tensor at a time.
- `write_safetensors`: streams tensors to disk one by one (the header is computed from specs first), so a
  conversion holds at most one converted tensor in RAM; returns the SHA-256 of the bytes written.
- `safetensors_header_digest`: SHA-256 of a file's header (names, dtypes, shapes, offsets) - a cheap check
  that a file is still the one whose full hash was recorded.

Every problem becomes a `BadInputError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vincie_cli.utils.io import BadInputError

SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_DTYPE_FROM_NAME = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_WRAPPER_KEYS = ("state_dict", "model", "module", "ema", "params")
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorSpec:
    """What a tensor will be on disk: name, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def dtype_from_name(name: str) -> torch.dtype:
    """'fp32' | 'float32' | 'bf16' | 'bfloat16' | 'fp16' | 'float16' -> torch dtype."""
    table = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if name not in table:
        raise BadInputError(f"unknown dtype {name!r} (expected fp32, bf16 or fp16)")
    return table[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


# --------------------------------------------------------------------------------------------
# pickles


def load_torch_state_dict(path: str | os.PathLike, mmap: bool = True) -> dict[str, Tensor]:
    """Read a flat state_dict from a torch pickle with `weights_only=True` (mmap'd when possible).

    A single wrapper level ({"state_dict": {...}}, {"model": ...}, {"module": ...}) is unwrapped. Raises
    BadInputError for a missing, corrupt or truncated file, for a pickle that needs more than weights (refused,
    nothing executed), and for non-tensor values.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: empty file (corrupt or truncated checkpoint)")
    obj = _torch_load(path, mmap)
    if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if inner:
            obj = obj[inner[0]]
    if not isinstance(obj, Mapping):
        raise BadInputError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    bad = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise BadInputError(f"{path}: not a plain state_dict: non-tensor entries {shown}")
    return dict(obj)


def _torch_load(path: Path, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        msg = str(e)
        detail = _weights_only_reason(msg)
        if "Weights only load failed" in msg and ("global" in detail.lower() or "class" in detail.lower()):
            raise BadInputError(
                f"{path}: refused: the pickle holds objects other than tensors ({detail}); only weights are "
                "loaded (torch.load weights_only=True), pickled code is never run"
            ) from None
        raise BadInputError(f"{path}: corrupt or truncated checkpoint ({detail or _first_line(msg)})") from None
    except RuntimeError as e:
        msg = str(e)
        if mmap and "mmap can only be used" in msg:  # legacy (non-zip) format: read without mmap
            return _torch_load(path, mmap=False)
        raise BadInputError(f"{path}: corrupt or truncated checkpoint ({_first_line(msg)})") from None
    except (EOFError, ValueError, OSError, KeyError, IndexError, struct.error) as e:
        raise BadInputError(
            f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {_first_line(str(e))})"
        ) from None


def _weights_only_reason(msg: str) -> str:
    """The unpickler's own reason from torch's long weights_only message ('' when there is none)."""
    if "WeightsUnpickler error:" not in msg:
        return ""
    reason = msg.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    reason = " ".join(reason.split())
    return reason.split(". ")[0][:200]


def _first_line(msg: str) -> str:
    line = msg.strip().splitlines()[0] if msg.strip() else "unknown error"
    return line[:200]


class FilePages:
    """Give back the resident pages of tensors that are mmap'd from `path` once they are no longer needed.

    Pages of a file mapping count in the process's RSS once touched. After a tensor has been written out,
    `release(t)` drops its pages with madvise(MADV_DONTNEED); a later access would simply read the file again,
    so this never changes a value. Only address ranges that /proc/self/maps shows as mapped from `path` are
    touched; elsewhere (other OSes, anonymous memory) it does nothing.
    """

    MADV_DONTNEED = 4

    def __init__(self, path: str | os.PathLike) -> None:
        self.ranges: list[tuple[int, int]] = []
        self._madvise = None
        target = os.path.realpath(path)
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].strip() == target:
                        start, end = (int(x, 16) for x in parts[0].split("-"))
                        self.ranges.append((start, end))
            if self.ranges:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                self._madvise = libc.madvise
                self._page = os.sysconf("SC_PAGE_SIZE")
        except (OSError, AttributeError, ValueError):
            self.ranges = []

    def release(self, t: Tensor) -> None:
        if self._madvise is None or t.device.type != "cpu" or t.numel() == 0:
            return
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        for lo, hi in self.ranges:
            if lo <= start and end <= hi:
                a = max(lo, start - start % self._page)
                b = min(hi, end + (-end % self._page))
                self._madvise(a, b - a, self.MADV_DONTNEED)
                return


# --------------------------------------------------------------------------------------------
# safetensors reading


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    """(parsed header, raw header bytes incl. the 8-byte length) of a safetensors file, validated against its size."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such safetensors file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BadInputError(f"{path}: corrupt or truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise BadInputError(f"{path}: corrupt or truncated safetensors file (header length {n} > file size)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInputError(f"{path}: corrupt safetensors file (header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise BadInputError(f"{path}: corrupt safetensors file (header is not a mapping)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise BadInputError(f"{path}: corrupt safetensors file (bad entry for {name!r})") from None
    if 8 + n + end > size:
        raise BadInputError(f"{path}: truncated safetensors file ({size} bytes, the header promises {8 + n + end})")
    return header, head + raw


def safetensors_header_digest(path: str | os.PathLike) -> str:
    """SHA-256 over a safetensors file's header bytes and its size (cheap; detects replaced files)."""
    _, raw = read_safetensors_header(path)
    h = hashlib.sha256(raw)
    h.update(str(Path(path).stat().st_size).encode())
    return h.hexdigest()


class SafetensorsReader:
    """Lazy access to one safetensors file: `specs()` from the header, `get(name)` reads one tensor.

    Tensors are created directly on `device` (safetensors' own loader); errors name the file.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        from safetensors import safe_open

        self.path = Path(path)
        self.header, _ = read_safetensors_header(self.path)
        try:
            self._f = safe_open(str(self.path), framework="pt", device=str(device))
        except Exception as e:  # safetensors raises its own SafetensorError
            raise BadInputError(f"{self.path}: corrupt or truncated safetensors file ({_first_line(str(e))})") from None

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.header.get("__metadata__") or {})

    def keys(self) -> list[str]:
        return [k for k in self.header if k != "__metadata__"]

    def specs(self) -> list[TensorSpec]:
        out = []
        for k in self.keys():
            info = self.header[k]
            if info.get("dtype") not in _DTYPE_FROM_NAME:
                raise BadInputError(f"{self.path}: tensor {k!r} has unsupported dtype {info.get('dtype')!r}")
            out.append(TensorSpec(k, tuple(int(s) for s in info["shape"]), _DTYPE_FROM_NAME[info["dtype"]]))
        return out

    def get(self, name: str) -> Tensor:
        try:
            t = self._f.get_tensor(name)
        except Exception as e:
            raise BadInputError(f"{self.path}: cannot read tensor {name!r} ({_first_line(str(e))})") from None
        if t.device.type == "cpu" and t.numel() and t.data_ptr() % 64:
            # CPU kernels pick code paths by alignment, so a misaligned copy can round differently
            t = t.clone()
        return t

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.header or name == "__metadata__":
            raise KeyError(name)
        return self.get(name)

    def items(self) -> Iterator[tuple[str, Tensor]]:
        for k in self.keys():
            yield k, self.get(k)


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """All tensors of a safetensors file (read one by one onto `device`)."""
    return dict(SafetensorsReader(path, device).items())


# --------------------------------------------------------------------------------------------
# safetensors writing


def write_safetensors(
    path: str | os.PathLike,
    specs: Iterable[TensorSpec],
    get: Callable[[str], Tensor],
    metadata: Mapping[str, str] | None = None,
    after_write: Callable[[Tensor], None] | None = None,
) -> str:
    """Write a safetensors file tensor by tensor; returns the SHA-256 of the file's bytes.

    `specs` fixes the order, shapes and dtypes (the header is written first); `get(name)` is called once per
    tensor, in that order, and its result is cast to the spec's dtype and checked against the spec's shape.
    Peak memory is one tensor (plus its cast copy). `after_write(tensor)` is called once a tensor is on disk.
    """
    specs = list(specs)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names")
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for s in specs:
        if s.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{s.name}: dtype {s.dtype} cannot be stored in safetensors")
        header[s.name] = {
            "dtype": SAFETENSORS_DTYPES[s.dtype],
            "shape": list(s.shape),
            "data_offsets": [offset, offset + s.nbytes],
        }
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format aligns the data buffer to 8 bytes
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in (struct.pack("<Q", len(raw)), raw):
            f.write(chunk)
            digest.update(chunk)
        for s in specs:
            t = get(s.name)
            if tuple(t.shape) != s.shape:
                raise ValueError(f"{s.name}: tensor has shape {tuple(t.shape)}, expected {s.shape}")
            data = _tensor_bytes(t.detach().to(device="cpu", dtype=s.dtype))
            f.write(data)
            digest.update(data)
            del data
            if after_write is not None:
                after_write(t)
            del t
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def _tensor_bytes(t: Tensor) -> memoryview:
    flat = t.contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def specs_of(
    sd: Mapping[str, Tensor], dtype: torch.dtype | None = None, keep_dtype: Callable[[str], bool] | None = None
) -> list[TensorSpec]:
    """Specs of a state_dict; floating tensors take `dtype` when given, except names where `keep_dtype` is true."""

    def target(k: str, v: Tensor) -> torch.dtype:
        if dtype is None or not v.is_floating_point() or (keep_dtype is not None and keep_dtype(k)):
            return v.dtype
        return dtype

    return [TensorSpec(k, tuple(v.shape), target(k, v)) for k, v in sd.items()]


def save_state_dict(
    path: str | os.PathLike,
    sd: Mapping[str, Tensor],
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
    keep_dtype: Callable[[str], bool] | None = None,
    after_write: Callable[[Tensor], None] | None = None,
) -> str:
    """Write a whole state_dict (tensor by tensor) to safetensors; returns the file's SHA-256."""
    return write_safetensors(path, specs_of(sd, dtype, keep_dtype), sd.__getitem__, metadata, after_write)
