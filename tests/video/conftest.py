from __future__ import annotations

import pytest

from tests.video.videos import write_video


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def cfr_video(video_dir):
    """48 frames at 24 fps (2 s), 64x48, keyframe every 12 frames, frame index in the pixels."""
    return write_video(video_dir / "cfr.mp4", num_frames=48, fps=24, gop=12)


@pytest.fixture(scope="session")
def vfr_pts():
    return [0, 40, 80, 200, 220, 240, 500, 533, 566, 1000, 1100, 1500]


@pytest.fixture(scope="session")
def vfr_video(video_dir, vfr_pts):
    return write_video(video_dir / "vfr.mp4", pts_ms=vfr_pts, fps=30, gop=4)
