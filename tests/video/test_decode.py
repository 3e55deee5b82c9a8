from __future__ import annotations

import math
import os

import numpy as np
import pytest

from tests.video.videos import index_image, read_index, write_video
from vincie_cli.utils.io import BadInputError
from vincie_cli.video.decode import DecordReader, PyAVReader, open_video, probe

DECODERS = ["pyav", "decord"]


def test_probe_describes_the_video(cfr_video):
    info = probe(cfr_video)
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert info.fps == pytest.approx(24.0)
    assert info.duration == pytest.approx(2.0, abs=1e-3)
    assert info.num_frames == 48
    assert info.start_pts == 0.0
    assert info.codec == "h264"


@pytest.mark.parametrize("decoder", DECODERS)
def test_frames_at_is_frame_accurate(cfr_video, decoder):
    # exact frame starts, mid-frame, a hair before a boundary, out of order, backwards, repeated,
    # across keyframes (every 12 frames) and past the end
    times = [0.0, 1 / 24, 0.5, 13 / 24 - 1e-4, 13 / 24, 1.99, 0.3, 0.3, 47 / 24 + 0.01, 5.0, 23 / 24, 25 / 24]
    with open_video(cfr_video, decoder) as reader:
        assert reader.name == decoder
        frames = reader.frames_at(times)
    got = [read_index(f.image) for f in frames]
    want = [min(math.floor(t * 24 + 1e-6), 47) for t in times]
    assert got == want
    assert [f.time for f in frames] == pytest.approx([w / 24 for w in want], abs=1e-4)
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)


def test_decoders_agree(cfr_video):
    times = [0.0, 0.2, 0.7, 1.25, 1.9]
    a = PyAVReader(probe(cfr_video)).frames_at(times)
    b = DecordReader(probe(cfr_video)).frames_at(times)
    for fa, fb in zip(a, b):
        assert fa.time == pytest.approx(fb.time, abs=1e-4)
        # same bitstream, two FFmpeg builds: colour conversion may differ by a level or two
        assert np.abs(fa.image.astype(int) - fb.image.astype(int)).max() <= 4


@pytest.mark.parametrize("decoder", DECODERS)
def test_variable_frame_rate(vfr_video, vfr_pts, decoder):
    pts = np.asarray(vfr_pts) / 1000
    times = [0.0, 0.05, 0.199, 0.2, 0.23, 0.45, 0.51, 0.566, 0.9, 1.05, 1.2, 1.6]
    with open_video(vfr_video, decoder) as reader:
        frames = reader.frames_at(times)
    want = [int(np.searchsorted(pts, t + 1e-6, side="right")) - 1 for t in times]
    assert [read_index(f.image) for f in frames] == want
    assert [f.time for f in frames] == pytest.approx([pts[i] for i in want], abs=2e-3)


@pytest.mark.parametrize("rotation", [90, 270, 180])
def test_rotation_metadata_is_applied(video_dir, rotation):
    path = write_video(video_dir / f"rot{rotation}.mp4", num_frames=24, rotation=rotation)
    info = probe(path)
    assert info.rotation == rotation
    assert (info.width, info.height) == ((48, 64) if rotation in (90, 270) else (64, 48))
    reader = open_video(path, "auto")
    assert reader.name == "pyav"  # decord mishandles rotated videos
    frame = reader.frames_at([0.5])[0]
    assert frame.image.shape == (info.height, info.width, 3)
    expected = np.rot90(index_image(12), rotation // 90)
    assert np.abs(frame.image.astype(int) - expected.astype(int)).mean() < 6
    assert read_index(np.rot90(frame.image, -(rotation // 90))) == 12
    # the streaming path applies it too
    first = next(reader.iter_frames())
    assert first.image.shape == (info.height, info.width, 3)


def test_iter_frames_thins_and_downscales(cfr_video):
    frames = list(PyAVReader(probe(cfr_video)).iter_frames(fps=8, max_side=32))
    assert [f.index for f in frames] == list(range(0, 48, 3))
    assert [f.time for f in frames] == pytest.approx([i / 24 for i in range(0, 48, 3)], abs=1e-4)
    assert frames[0].image.shape == (24, 32, 3)


def test_auto_prefers_decord_for_plain_videos(cfr_video):
    assert open_video(cfr_video, "auto").name == "decord"


def test_bad_files_are_reported_with_name_and_problem(tmp_path, cfr_video):
    cases = {}
    cases["missing.mp4"] = "no such file"
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["empty.mp4"] = "empty file"
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 20)
    cases["text.mp4"] = "not a readable video"
    data = cfr_video.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index (moov) at the end: lost
    cases["truncated.mp4"] = "not a readable video"
    (tmp_path / "adir.mp4").mkdir()
    cases["adir.mp4"] = "is a directory"
    for name, problem in cases.items():
        with pytest.raises(BadInputError) as e:
            probe(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and problem in str(e.value), str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path, cfr_video):
    p = tmp_path / "locked.mp4"
    p.write_bytes(cfr_video.read_bytes())
    p.chmod(0)
    with pytest.raises(BadInputError, match="permission denied"):
        probe(p)


def test_truncated_faststart_video_keeps_its_readable_part(tmp_path):
    path = write_video(tmp_path / "fs.mp4", num_frames=96, faststart=True)
    data = path.read_bytes()
    cut = tmp_path / "fs_cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    info = probe(cut)  # the index is intact, the tail of the data is not
    assert info.duration == pytest.approx(4.0, abs=1e-3)
    frames = list(PyAVReader(info).iter_frames())
    assert 10 < len(frames) < 96
    assert frames[-1].time < 4.0
    # a request inside the header's duration but past the readable data is an error, not a wrong frame
    with pytest.raises(BadInputError, match="truncated"):
        PyAVReader(info).frames_at([0.5, 3.5])
    assert open_video(cut, "auto").name == "pyav"  # decord cannot read the damaged index
