"""Small on-disk benchmarks and results folders for the eval tests (no download)."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (32, 24), fmt: str = "PNG") -> bytes:
    img = Image.new("RGB", size, color)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def noise_image(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def prompt_for(session: int, turn: int) -> str:
    return f"edit s{session} t{turn}"


def write_msebench(path: Path, n: int = 3, turns: int = 3) -> Path:
    """An MSE-Bench-shaped parquet: image struct, index, context, operation, description_target."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {
        "image": [{"bytes": png_bytes((10 * i, 50, 90), fmt="JPEG"), "path": None} for i in range(n)],
        "index": [100 + i for i in range(n)],
        "summary": [f"session {i}" for i in range(n)],
        "description_source": ["a scene"] * n,
        "context": [[prompt_for(100 + i, k) for k in range(1, turns + 1)] for i in range(n)],
        "operation": [["add"] * turns for _ in range(n)],
        "description_target": [[f"target {k}" for k in range(1, turns + 1)] for _ in range(n)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return path


def write_results(folder: Path, ids: list[str], turns: int, size: tuple[int, int] = (32, 24)) -> Path:
    for j, sid in enumerate(ids):
        for k in range(1, turns + 1):
            p = folder / sid / f"turn{k}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(png_bytes((j * 20, k * 30, 5), size))
    return folder


def reply(pf: Any, c: Any, reason: str = "fine") -> str:
    return json.dumps({"reason": reason, "prompt_following": pf, "consistency": c})


class ScoreTable:
    """A FakeOpenAI handler that answers from a {(session index, turn): reply text} table.

    The session and turn are read back from the request: the turn is the number of images minus one,
    the session from the last prompt ("edit s<index> t<turn>") in the instruction text. It also
    records the largest number of requests in flight at once.
    """

    def __init__(self, table: dict[tuple[int, int], str], delay: float = 0.0) -> None:
        self.table = table
        self.delay = delay
        self.asked: list[tuple[int, int]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        content = body["messages"][0]["content"]
        text = content[0]["text"]
        n_images = sum(1 for part in content if part["type"] == "image_url")
        turn = n_images - 1
        session = int(re.findall(r"edit s(\d+) t(\d+)", text)[-1][0])
        with self._lock:
            self.asked.append((session, turn))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            return {"content": self.table[(session, turn)]}
        finally:
            with self._lock:
                self.in_flight -= 1
