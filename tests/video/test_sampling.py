from __future__ import annotations

import numpy as np
import pytest

from vincie_cli.utils.io import BadInputError, UsageError
from vincie_cli.video.sampling import (
    SamplingConfig,
    drop_static,
    fixed_times,
    frame_difference,
    interval_times,
    parse_frame_range,
    sample_times,
)


def test_interval_grid_is_centred_with_margins():
    cfg = SamplingConfig(mode="interval", interval=2.0, margin=0.1)
    # usable span 0.1..9.9 = 9.8 s -> 5 frames 2 s apart, centred (0.9 s of slack on each side)
    assert interval_times(0.0, 10.0, cfg) == pytest.approx([1.0, 3.0, 5.0, 7.0, 9.0])
    assert interval_times(5.0, 7.2, cfg) == pytest.approx([5.1, 7.1])
    assert interval_times(5.0, 7.0, cfg) == []  # 1.8 s usable: one interval does not fit


def test_interval_caps_at_max_frames():
    cfg = SamplingConfig(mode="interval", interval=0.5, max_frames=20, margin=0.0)
    times = interval_times(0.0, 60.0, cfg)
    assert len(times) == 20
    assert times[0] == pytest.approx(0.0) and times[-1] == pytest.approx(60.0)
    assert np.allclose(np.diff(times), 60.0 / 19)


def test_fixed_times_are_segment_centres():
    assert fixed_times(2.0, 6.0, 4) == pytest.approx([2.5, 3.5, 4.5, 5.5])


def test_hybrid_is_deterministic_and_uses_both_modes():
    cfg = SamplingConfig(mode="hybrid", interval=1.0, num_frames=(2, 6), fixed_prob=0.5)
    modes = {}
    for k in range(200):
        mode, times = sample_times(0.0, 8.0, cfg, f"clip{k}")
        assert (mode, times) == sample_times(0.0, 8.0, cfg, f"clip{k}")
        assert 2 <= len(times) <= 20 and times == sorted(times)
        if mode == "fixed":
            assert 2 <= len(times) <= 6
        else:
            assert np.allclose(np.diff(times), 1.0)
        modes[mode] = modes.get(mode, 0) + 1
    assert 60 < modes["fixed"] < 140 and 60 < modes["interval"] < 140
    # another seed draws differently
    other = SamplingConfig(mode="hybrid", interval=1.0, seed=1)
    assert any(sample_times(0.0, 8.0, cfg, f"c{k}") != sample_times(0.0, 8.0, other, f"c{k}") for k in range(20))


def test_hybrid_falls_back_to_fixed_for_short_clips_but_interval_mode_refuses():
    hybrid = SamplingConfig(mode="hybrid", interval=5.0, fixed_prob=0.0)
    mode, times = sample_times(0.0, 3.0, hybrid, "short")
    assert mode == "fixed" and len(times) >= 2
    with pytest.raises(BadInputError, match="shorter than one sampling interval"):
        sample_times(0.0, 3.0, SamplingConfig(mode="interval", interval=5.0), "short")


def test_drop_static_removes_near_identical_neighbours():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    a_noisy = np.clip(a.astype(int) + rng.integers(-2, 3, a.shape), 0, 255).astype(np.uint8)
    b = a.copy()
    b[:, :32] = 255 - b[:, :32]
    assert frame_difference(a, a_noisy) == 0.0  # grain is not change
    assert frame_difference(a, b) > 40  # half the picture inverted
    small = a.copy()
    small[10:20, 10:20] = 255 - small[10:20, 10:20]  # a 10x10 patch: 3 % of a 64x48 frame
    assert 1.0 < frame_difference(a, small) < 4.0
    assert drop_static([a, a_noisy, b, b, a, small], min_change=0.5) == [0, 2, 4, 5]
    assert drop_static([a, a_noisy], min_change=0.5) == [0]


def test_config_validation():
    with pytest.raises(UsageError):
        SamplingConfig(num_frames=(1, 4))
    with pytest.raises(UsageError):
        SamplingConfig(num_frames=(2, 7))
    with pytest.raises(UsageError):
        SamplingConfig(max_frames=21)
    with pytest.raises(UsageError):
        SamplingConfig(mode="random")
    assert parse_frame_range("2-6") == (2, 6) and parse_frame_range("4") == (4, 4)
    with pytest.raises(UsageError):
        parse_frame_range("two")
