import json

import numpy as np
import pytest

from vincie_cli.synth import (
    SynthConfig,
    build_timeline,
    find_ground_truth,
    generate_many,
    generate_video,
    load_ground_truth,
)
from vincie_cli.synth.groundtruth import GT_SUFFIX
from vincie_cli.synth.scorer import classify_colours
from vincie_cli.synth.world import COLOURS, EVENT_KINDS
from vincie_cli.utils.io import BadInputError, UsageError

SMALL = SynthConfig(
    width=64,
    height=64,
    fps=12,
    duration=2.5,
    min_events=3,
    max_events=4,
    hold_seconds=(0.2, 0.3),
    motion_seconds=(0.25, 0.4),
)


def _erode(m, n):
    for _ in range(n):
        e = m.copy()
        e[1:] &= m[:-1]
        e[:-1] &= m[1:]
        e[:, 1:] &= m[:, :-1]
        e[:, :-1] &= m[:, 1:]
        m = e
    return m


def _dilate(m, n):
    for _ in range(n):
        e = m.copy()
        e[1:] |= m[:-1]
        e[:-1] |= m[1:]
        e[:, 1:] |= m[:, :-1]
        e[:, :-1] |= m[:, 1:]
        m = e
    return m


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    # seeds 4 and 5 include camera zoom, swap and recolour events
    return [generate_video(out, seed, SMALL) for seed in (4, 5)]


def test_files_and_ground_truth_roundtrip(videos):
    video = videos[0]
    gt_path = find_ground_truth(video)
    assert gt_path == video.with_name(video.stem + GT_SUFFIX)
    assert video.with_name(video.stem + ".masks.png").is_file()
    gt = load_ground_truth(gt_path)
    assert load_ground_truth(video).num_frames == gt.num_frames  # the video path works too
    assert gt.size == (64, 64) and gt.fps == 12 and gt.num_frames == 30
    assert gt.duration == pytest.approx(2.5)
    assert 1 <= len(gt.events) <= 4
    mem = build_timeline(gt.seed, SMALL)
    for i in range(gt.num_frames):
        assert gt.state_at_frame(i) == mem.state_at_frame(i)  # keyframes + interpolation reproduce exactly
        assert gt.state_at(i / gt.fps + 0.01) == gt.state_at_frame(i)
    for e in gt.events:
        assert e.kind in EVENT_KINDS and 0 < e.frame_start < e.frame_end < gt.num_frames
        assert e.t_start == pytest.approx(e.frame_start / 12) and e.summary.endswith(".")
        assert gt.state_at_frame(e.frame_start) == gt.states[gt.events.index(e)]
        assert gt.state_at_frame(e.frame_end) == gt.states[gt.events.index(e) + 1]
    # stored masks equal the masks rendered from the states
    for i in range(gt.num_frames):
        stored = gt.instance_masks(i)
        fresh = {oid: m for oid, m in mem.instance_masks(i).items()}
        assert stored.keys() == fresh.keys()
        for oid in stored:
            np.testing.assert_array_equal(stored[oid], fresh[oid])


def test_same_seed_same_bytes_and_frames(tmp_path, videos):
    import av

    again = generate_video(tmp_path, 4, SMALL)
    a, b = find_ground_truth(videos[0]), find_ground_truth(again)
    assert a.read_bytes() == b.read_bytes()
    assert a.with_name(a.name.replace(GT_SUFFIX, ".masks.png")).read_bytes() == (
        b.with_name(b.name.replace(GT_SUFFIX, ".masks.png")).read_bytes()
    )

    def frames(p):
        with av.open(str(p)) as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])

    np.testing.assert_array_equal(frames(videos[0]), frames(again))
    other = generate_video(tmp_path, 6, SMALL)
    assert find_ground_truth(other).read_bytes() != a.read_bytes()


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_decoded_frames_match_ground_truth(videos, decoder):
    for video in videos:
        gt = load_ground_truth(video)
        if decoder == "pyav":
            import av

            with av.open(str(video)) as c:
                frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        else:
            import decord

            frames = decord.VideoReader(str(video)).get_batch(list(range(gt.num_frames))).asnumpy()
        assert frames.shape == (gt.num_frames, 64, 64, 3)
        settled = set(gt.settled_frames())
        checked = 0
        for i in range(gt.num_frames):
            expected = gt.render_frame(i).astype(np.float64)
            assert np.abs(frames[i] - expected).mean() < 6.0, f"frame {i}: codec error too large"
            if i not in settled:
                continue
            cls = classify_colours(frames[i])
            state = gt.state_at_frame(i)
            for oid, m in gt.instance_masks(i).items():
                o = state.object(oid)
                inner = _erode(m, 2 if o.outline else 1)
                if inner.sum() < 10:
                    continue
                pred = cls == COLOURS.index(o.colour)
                # the object's colour fills the inside of its mask and stays within one pixel of it
                assert (pred & inner).sum() / inner.sum() > 0.9
                assert (pred & _dilate(m, 1)).sum() / pred.sum() > 0.9
                checked += 1
        assert checked > 10


def test_generate_many_resumes_in_order_and_rejects_other_configs(tmp_path):
    cfg = SynthConfig(width=32, height=32, fps=8, duration=1.0, min_events=1, max_events=1)
    first = list(generate_many(tmp_path, [0, 1], cfg))
    assert [r["skipped"] for r in first] == [False, False]
    (tmp_path / "synth_0000001.gt.json").unlink()  # as if interrupted before the last write
    again = list(generate_many(tmp_path, [0, 1, 2], cfg, workers=2))
    assert [(r["seed"], r["skipped"]) for r in again] == [(0, True), (1, False), (2, False)]
    with pytest.raises(UsageError, match="different configuration"):
        list(generate_many(tmp_path, [0], SynthConfig(width=32, height=32, fps=8, duration=2.0)))


def test_bad_ground_truth_files(tmp_path):
    p = tmp_path / "x.gt.json"
    p.write_text("{not json")
    with pytest.raises(BadInputError, match="x.gt.json: not valid JSON"):
        load_ground_truth(p)
    p.write_text(json.dumps({"type": "something else"}))
    with pytest.raises(BadInputError, match="not a synthetic ground-truth file"):
        load_ground_truth(p)
    p.write_text(json.dumps({"type": "synth_ground_truth", "version": 1, "fps": 24}))
    with pytest.raises(BadInputError, match="malformed ground truth"):
        load_ground_truth(p)
    with pytest.raises(BadInputError, match="no synthetic ground truth"):
        load_ground_truth(tmp_path / "real.mp4")
    assert find_ground_truth(tmp_path / "real.mp4") is None
