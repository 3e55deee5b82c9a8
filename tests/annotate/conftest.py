from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.annotate.helpers import as_json
from tests.fakes.openai_server import FakeOpenAI
from tests.video.videos import write_video


def moving_square(i: int, w: int = 64, h: int = 48, colour=(250, 40, 40), bg: int = 90) -> np.ndarray:
    img = np.full((h, w, 3), bg, np.uint8)
    x = (i * 2) % (w - 12)
    img[16:32, x : x + 12] = colour
    return img


def make_videos(folder: Path, n: int = 3, frames: int = 72) -> list[Path]:
    """n small 3 s videos (24 fps, 64x48) of a moving square, each in its own colour."""
    colours = [(250, 40, 40), (40, 250, 40), (40, 40, 250), (250, 250, 40), (40, 250, 250), (250, 40, 250)]
    return [
        write_video(
            folder / f"v{k}.mp4", num_frames=frames, frame_fn=lambda i, c=colours[k % 6]: moving_square(i, colour=c)
        )
        for k in range(n)
    ]


@pytest.fixture(scope="session")
def video_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ann_videos")
    make_videos(folder, 3)
    return folder


class Scripted:
    """A FakeOpenAI handler: scripted replies first, then `default(body)`; request times are kept."""

    def __init__(self, script: list[dict[str, Any]] | None = None, default=None) -> None:
        self.script = list(script or [])
        self.default = default or (lambda body: {"content": as_json()})
        self.times: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.times.append(time.monotonic())
            if self.script:
                return self.script.pop(0)
        return self.default(body)


class QuickFakeOpenAI(FakeOpenAI):
    """FakeOpenAI with TCP_NODELAY on its sockets: http.server sends headers and body in two writes,
    and Nagle + delayed ACK would add ~40 ms to every answer."""

    def _make_handler(self):
        handler = super()._make_handler()
        handler.disable_nagle_algorithm = True
        return handler


@pytest.fixture
def server():
    """Start fake chat-completions servers with a Scripted handler: `srv, handler = server(script)`."""
    started = []

    def start(script=None, default=None):
        handler = Scripted(script, default)
        srv = QuickFakeOpenAI(handler=handler).start()
        started.append(srv)
        return srv, handler

    yield start
    for srv in started:
        srv.stop()


# options that make tiny test videos give one clip with three frames (two pairs)
FAST = ["--sampling", "interval", "--interval", "1", "--cuts", "none", "--workers", "1"]


def cli_args(inputs: list[str], out: Path, srv=None, *extra: str) -> list[str]:
    args = ["annotate", *inputs, "--out-dir", str(out), *FAST]
    if srv is not None:
        args += ["--base-url", srv.base_url, "--model", "fake-vlm", "--concurrency", "1", "--backoff", "0.01"]
    return args + list(extra)
