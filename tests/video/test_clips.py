from __future__ import annotations

import numpy as np
import pytest

from tests.video.videos import write_video
from vincie_cli.utils.io import UsageError
from vincie_cli.video import clips as clips_mod
from vincie_cli.video.clips import ClipConfig, find_clips, split_span
from vincie_cli.video.decode import open_video

W, H = 96, 64


def shot(i: int, bg: tuple[int, int, int], square: tuple[int, int, int]) -> np.ndarray:
    img = np.empty((H, W, 3), np.uint8)
    img[:] = bg
    x = 4 + (i * 2) % (W - 24)
    img[20:40, x : x + 16] = square
    return img


def edited_frame(i: int) -> np.ndarray:
    """0-2 s shot A, 2-4 s shot B (hard cut), 4-5 s black, 5-7 s shot C letterboxed, 7-10 s a frozen picture."""
    if i < 48:
        return shot(i, (40, 60, 160), (250, 250, 250))
    if i < 96:
        return shot(i, (200, 180, 40), (20, 20, 20))
    if i < 120:
        return np.zeros((H, W, 3), np.uint8)
    if i < 168:
        img = shot(i, (60, 160, 60), (250, 80, 80))
        img[:10] = 0
        img[-10:] = 0
        return img
    return shot(170, (120, 120, 120), (0, 0, 255))


@pytest.fixture(scope="module")
def edited_video(tmp_path_factory):
    return write_video(
        tmp_path_factory.mktemp("clips") / "edited.mp4", num_frames=240, fps=24, size=(W, H), frame_fn=edited_frame
    )


def test_cuts_black_frozen_and_borders(edited_video):
    cfg = ClipConfig(cuts="scenedetect", min_duration=1.0, max_duration=30.0, scan_fps=0)
    seg = find_clips(open_video(edited_video, "pyav"), cfg)
    assert seg.duration == pytest.approx(10.0, abs=1e-3)
    assert seg.cuts and seg.cuts[0] == pytest.approx(2.0, abs=1 / 24 + 1e-6)
    spans = [(round(c.start, 2), round(c.end, 2)) for c in seg.clips]
    assert spans == [(0.0, 2.0), (2.0, 4.0), (5.0, 7.0)]  # the frozen shot's single live frame is too short
    assert [c.crop for c in seg.clips] == [None, None, (0, 10, W, H - 10)]
    reasons = {d["reason"]: (round(d["start"], 2), round(d["end"], 2)) for d in seg.dropped}
    assert reasons == {"black": (4.0, 5.0), "too short": (7.0, 7.04), "frozen": (7.04, 10.0)}


def test_thinned_scan_still_finds_the_structure(edited_video):
    cfg = ClipConfig(cuts="scenedetect", scan_fps=8)
    seg = find_clips(open_video(edited_video, "pyav"), cfg)
    assert len(seg.clips) == 3
    a, b, c = seg.clips
    assert a.start == 0.0 and 1.85 <= a.end <= 2.0
    assert 2.0 <= b.start <= 2.15 and 3.85 <= b.end <= 4.0
    assert 5.0 <= c.start <= 5.15 and 6.85 <= c.end <= 7.05
    assert c.crop is not None


def test_without_cut_detection_shots_merge(edited_video):
    cfg = ClipConfig(cuts="none", skip_frozen=False, skip_black=True, crop_borders=False, scan_fps=10)
    seg = find_clips(open_video(edited_video, "pyav"), cfg)
    # thinned to 10 fps: a boundary is known to within one scan step, and clips stay on the safe side
    assert [t for c in seg.clips for t in (c.start, c.end)] == pytest.approx([0.0, 4.0, 5.0, 10.0], abs=0.1)
    assert all(c.end <= e + 1e-6 for c, e in zip(seg.clips, [4.0, 10.0]))


def test_no_analysis_means_no_decoding(edited_video):
    cfg = ClipConfig(cuts="none", skip_black=False, skip_frozen=False, crop_borders=False, max_duration=4.0)
    reader = open_video(edited_video, "pyav")
    reader.iter_frames = None  # would fail if called
    seg = find_clips(reader, cfg)
    assert [t for c in seg.clips for t in (c.start, c.end)] == pytest.approx([0, 10 / 3, 10 / 3, 20 / 3, 20 / 3, 10])


def test_split_span():
    cfg = ClipConfig(min_duration=1.0, max_duration=4.0)
    assert split_span(0.0, 0.5, cfg) == []
    assert split_span(1.0, 4.0, cfg) == [(1.0, 4.0)]
    assert [t for span in split_span(0.0, 10.0, cfg) for t in span] == pytest.approx(
        [0, 10 / 3, 10 / 3, 20 / 3, 20 / 3, 10]
    )


def test_all_black_video_explains_itself(tmp_path):
    path = write_video(tmp_path / "black.mp4", num_frames=48, frame_fn=lambda i: np.zeros((48, 64, 3), np.uint8))
    cfg = ClipConfig()
    seg = find_clips(open_video(path, "pyav"), cfg)
    assert seg.clips == []
    assert "black 2.0 s" in seg.explain_empty(cfg)


def test_missing_scenedetect_is_a_clear_error_only_when_asked_for(monkeypatch, edited_video):
    monkeypatch.setattr(clips_mod, "scenedetect_available", lambda: False)
    with pytest.raises(UsageError, match="pip install scenedetect"):
        find_clips(open_video(edited_video, "pyav"), ClipConfig(cuts="scenedetect"))
    seg = find_clips(open_video(edited_video, "pyav"), ClipConfig(cuts="auto", crop_borders=False))
    assert [round(c.start, 1) for c in seg.clips] == [0.0, 5.0]  # no cut at 2 s without the detector


def test_config_validation():
    with pytest.raises(UsageError):
        ClipConfig(cuts="magic")
    with pytest.raises(UsageError):
        ClipConfig(min_duration=5, max_duration=2)
