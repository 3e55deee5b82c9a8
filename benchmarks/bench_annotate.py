"""Client-side throughput of `vincie annotate`: requests/s against a zero-latency local server, the
overhead each request costs the client, and video decoding speed.

1. openai client: N pair requests through `OpenAIBackend` at several concurrencies against FakeOpenAI
   on 127.0.0.1 (which answers at once). Reports requests/s and the client's time per request at
   concurrency 1, split into building the body (image load, resize, JPEG, base64) and the HTTP
   round trip. The local server is a Python ThreadingHTTPServer, so at high concurrency it, not the
   client, may be the limit: the numbers are a lower bound on what the client sustains.
2. the whole runner: videos -> clips -> frames -> annotated pairs against the same server (pairs/s).
3. decoding: frames/s of sequential streaming (PyAV, full size and the 160 px analysis scan),
   random access by time (decord and PyAV), and `find_clips` on a 640x360 video.

    .venv/bin/python benchmarks/bench_annotate.py                # defaults (about a minute on 2 cores)
    .venv/bin/python benchmarks/bench_annotate.py --requests 2000 --concurrency 1,8,32,64
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_video(path: Path, seconds: float, fps: int, size: tuple[int, int]) -> Path:
    import numpy as np

    from tests.video.videos import write_video

    w, h = size
    rng = np.random.default_rng(0)
    bg = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)

    def frame(i: int) -> np.ndarray:
        img = bg.copy()
        x = (i * 4) % (w - 80)
        img[h // 3 : h // 3 + 60, x : x + 80] = (250, 40, 40)
        return img

    return write_video(path, num_frames=int(seconds * fps), fps=fps, size=size, frame_fn=frame, gop=48)


def fast_fake_server(handler):
    """FakeOpenAI with TCP_NODELAY on its side: the stock http.server writes headers and body
    separately, and Nagle + delayed ACK would add ~40 ms to every request (a server artefact)."""
    from tests.fakes.openai_server import FakeOpenAI

    class Fast(FakeOpenAI):
        def _make_handler(self):
            h = super()._make_handler()
            h.disable_nagle_algorithm = True
            return h

    return Fast(handler=handler)


def session_frames(folder: Path, n: int, size: tuple[int, int] = (1280, 720), fmt: str = "png") -> list[Path]:
    """n PNG frames that look like video (smooth background, a moving object, mild grain)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([xx * 200 // w, yy * 200 // h, (xx + yy) * 100 // (w + h) + 50], -1).astype(np.int16)
    paths = []
    for k in range(n):
        img = bg.copy()
        x = 40 + (k * 23) % (w - 300)
        img[h // 3 : h // 3 + 200, x : x + 240] = (230, 60, 50)
        img += rng.integers(-3, 4, img.shape, dtype=np.int16)
        p = folder / f"{k:03d}.{fmt}"
        im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        im.save(p, compress_level=3) if fmt == "png" else im.save(p, quality=95)
        paths.append(p)
    return paths


def bench_client(tmp: Path, n: int, concurrencies: list[int], image_size: int) -> dict:
    from tests.annotate.helpers import as_json
    from vincie_cli.annotate.backends.base import PairRequest
    from vincie_cli.annotate.backends.openai import OpenAIBackend

    frames = session_frames(tmp / "frames", n + 1)
    jpegs = session_frames(tmp / "jpeg_frames", 21, fmt="jpeg")
    reply = as_json()
    results = {}
    with fast_fake_server(lambda body: {"content": reply}) as srv:
        for c in concurrencies:
            backend = OpenAIBackend(srv.base_url, "bench", concurrency=c, max_retries=0, image_size=image_size)
            # the consecutive pairs of one long session: every frame but the ends is in two pairs
            reqs = [PairRequest(f"b/{k}", (frames[k], frames[k + 1]), (k, k + 1.0), "bench") for k in range(n)]
            backend.generate([reqs[0]])  # warm the connection pool
            backend._cache.clear()
            todo = list(range(n))[::-1]
            lock = threading.Lock()

            def work(backend=backend, reqs=reqs, todo=todo, lock=lock) -> None:
                while True:
                    with lock:
                        if not todo:
                            return
                        k = todo.pop()
                    (r,) = backend.generate([reqs[k]])
                    assert r.error is None, r.error

            t0 = time.perf_counter()
            threads = [threading.Thread(target=work) for _ in range(c)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results[c] = n / (time.perf_counter() - t0)
            if c == concurrencies[0]:
                build = {}
                for name, src in (("png", frames), ("jpeg", jpegs)):
                    t0 = time.perf_counter()
                    for k in range(20):
                        backend._cache.clear()
                        body = backend.build_body(PairRequest("x", (src[k], src[k + 1]), (0.0, 1.0), "bench"))
                    build[name] = (time.perf_counter() - t0) / 20 * 1000  # both images encoded (no cache)
                from PIL import Image

                ims = [Image.open(f).convert("RGB") for f in frames[:21]]
                backend._cache.clear()
                t0 = time.perf_counter()
                for k in range(21):
                    backend.preload(frames[k], ims[k])  # in the decoding threads, from the decoded frame
                build["preload_one_image"] = (time.perf_counter() - t0) / 21 * 1000
                t0 = time.perf_counter()
                for k in range(20):
                    backend.build_body(reqs[k])
                build["preloaded"] = (time.perf_counter() - t0) / 20 * 1000
                body_kib = len(json.dumps(body)) / 1024
                t0 = time.perf_counter()
                for _ in range(50):
                    backend._post(body)
                post_ms = (time.perf_counter() - t0) / 50 * 1000
            backend.close()
    return {
        "requests_per_s": {str(c): round(v, 1) for c, v in results.items()},
        "build_body_ms": {k: round(v, 2) for k, v in build.items()},
        "http_round_trip_ms": round(post_ms, 2),
        "body_kib": round(body_kib, 1),
        "source_frames": "1280x720 PNG",
        "image_size": image_size,
    }


def bench_runner(tmp: Path, n_videos: int, concurrency: int) -> dict:
    from click.testing import CliRunner

    from tests.annotate.helpers import as_json
    from vincie_cli.cli import main

    folder = tmp / "runner_videos"
    for k in range(n_videos):
        make_video(folder / f"v{k}.mp4", 8.0, 24, (320, 180))
    out = tmp / "runner_out"
    with fast_fake_server(lambda body: {"content": as_json()}) as srv:
        t0 = time.perf_counter()
        res = CliRunner().invoke(
            main,
            ["-q", "annotate", str(folder), "--out-dir", str(out), "--base-url", srv.base_url, "--model", "bench",
             "--concurrency", str(concurrency), "--sampling", "interval", "--interval", "1"],
        )  # fmt: skip
        dt = time.perf_counter() - t0
    assert res.exit_code == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    return {
        "videos": n_videos,
        "clips": summary["clips"],
        "pairs": summary["pairs"],
        "seconds": round(dt, 2),
        "pairs_per_s": round(summary["pairs"] / dt, 1),
        "video": "8 s, 320x180, 24 fps",
    }


def bench_decode(tmp: Path) -> dict:
    import random

    from vincie_cli.video.clips import ClipConfig, find_clips
    from vincie_cli.video.decode import DecordReader, PyAVReader, probe

    path = make_video(tmp / "decode.mp4", 20.0, 24, (1280, 720))
    info = probe(path)
    out = {"video": "20 s, 1280x720, 24 fps, keyframe every 48 frames"}
    t0 = time.perf_counter()
    n = sum(1 for _ in PyAVReader(info).iter_frames())
    out["pyav_stream_full_fps"] = round(n / (time.perf_counter() - t0), 1)
    t0 = time.perf_counter()
    n = sum(1 for _ in PyAVReader(info).iter_frames(max_side=160))
    out["pyav_stream_160px_fps"] = round(n / (time.perf_counter() - t0), 1)
    rng = random.Random(0)
    times = sorted(rng.uniform(0, 19.9) for _ in range(40))
    for name, cls in (("pyav", PyAVReader), ("decord", DecordReader)):
        t0 = time.perf_counter()
        reader = cls(info)
        reader.frames_at(times)
        out[f"{name}_random_access_fps"] = round(len(times) / (time.perf_counter() - t0), 1)
    t0 = time.perf_counter()
    find_clips(PyAVReader(info), ClipConfig(cuts="scenedetect"))
    out["find_clips_s_per_video_minute"] = round((time.perf_counter() - t0) * 60 / 20.0, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--videos", type=int, default=4)
    args = ap.parse_args()
    from vincie_cli.utils.log import setup_logging

    setup_logging("warning", quiet=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result = {
            "client": bench_client(tmp, args.requests, [int(c) for c in args.concurrency.split(",")], args.image_size),
            "runner": bench_runner(tmp, args.videos, 8),
            "decode": bench_decode(tmp),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
