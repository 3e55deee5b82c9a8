import numpy as np
import pytest

from tests.sessions.helpers import write_png
from vincie_cli.segment.oracle import OracleSegmenter
from vincie_cli.segment.runner import run_segment
from vincie_cli.utils.io import BadInputError, read_jsonl, write_jsonl
from vincie_cli.utils.masks import load_mask


def synth_clip_records(root, seeds=(1, 2), n_frames=5, size=64):
    """Synthetic videos + clip records by hand (what `annotate --backend oracle` writes)."""
    from vincie_cli.synth import SynthConfig, find_ground_truth, generate_video, load_ground_truth
    from vincie_cli.synth.oracle import annotate_pair

    cfg = SynthConfig(width=size, height=size, duration=3.0)
    recs, gts = [], []
    for seed in seeds:
        video = generate_video(root / "videos", seed, cfg)
        gt = load_ground_truth(find_ground_truth(video))
        times = [float(t) for t in np.linspace(0.1, gt.duration - 0.1, n_frames)]
        frames = []
        for i, t in enumerate(times):
            rel = f"clips/s{seed}/{i:03d}.png"
            write_png(root / rel, gt.render_frame(gt.frame_index(t)))
            frames.append({"index": i, "time": t, "path": rel})
        transitions = [
            {"index": i, "src": i, "dst": i + 1, "annotation": annotate_pair(gt, times[i], times[i + 1]), "roe": None}
            for i in range(n_frames - 1)
        ]
        recs.append(
            {
                "type": "clip",
                "clip_id": f"s{seed}",
                "source": f"videos/{video.name}",
                "frames": frames,
                "transitions": transitions,
                "width": size,
                "height": size,
            }
        )
        gts.append(gt)
    write_jsonl(root / "annotations.jsonl", recs)
    return recs, gts


def test_oracle_reproduces_the_ground_truth_masks(tmp_path):
    from vincie_cli.synth.oracle import roe_masks

    recs, gts = synth_clip_records(tmp_path / "ann", seeds=(1, 2, 3))
    out = tmp_path / "seg"
    summary = run_segment([str(tmp_path / "ann")], out, OracleSegmenter())
    assert summary.clips == 3
    rules = set()
    for rec, gt in zip(read_jsonl(out / "segments.jsonl"), gts):
        assert (out / rec["source"]).is_file()  # source path re-expressed relative to the output folder
        for tr in rec["transitions"]:
            t0, t1 = rec["frames"][tr["src"]]["time"], rec["frames"][tr["dst"]]["time"]
            truth = roe_masks(gt, t0, t1)
            roe = tr["roe"]
            rules.add(roe["rule"])
            assert roe["rule"] == truth.rule and roe["backend"] == "oracle"
            for side, m in (("src", truth.src), ("dst", truth.dst)):
                if m is None:
                    assert roe[f"{side}_mask"] is None and roe[f"{side}_coverage"] is None
                else:
                    np.testing.assert_array_equal(load_mask(out / roe[f"{side}_mask"], m.shape), m)
                    assert roe[f"{side}_coverage"] == pytest.approx(m.mean(), abs=1e-6)
            if roe["rule"] == "entities":
                assert set(roe["labels"]["src"]) | set(roe["labels"]["dst"]) <= set(truth.entities)
    assert "entities" in rules and len(rules) >= 2


def test_oracle_follows_crop_and_resize_and_refuses_other_frames(tmp_path):
    from PIL import Image

    from vincie_cli.synth.oracle import roe_masks

    recs, gts = synth_clip_records(tmp_path / "ann", seeds=(1, 2, 3), n_frames=2)
    # a clip whose (only) transition has masks
    rec, gt = next(
        (r, gt)
        for r, gt in zip(recs, gts)
        if roe_masks(gt, r["frames"][0]["time"], r["frames"][1]["time"]).rule == "entities"
    )
    truth = roe_masks(gt, rec["frames"][0]["time"], rec["frames"][1]["time"])
    rec = dict(rec, crop=[8, 0, 56, 64])  # annotate cropped x 8..56, then saved the frames at 24x32
    frames = [np.zeros((32, 24, 3), np.uint8)] * 2
    res = OracleSegmenter().segment_clip(rec, frames, tmp_path / "ann", "x")[0]
    want = np.asarray(Image.fromarray(truth.dst[:, 8:56]).resize((24, 32), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(res.dst, want)
    assert all(d.mask.shape == (32, 24) for d in res.src_detections + res.dst_detections)
    with pytest.raises(BadInputError, match="x: frame 0 is 32x32 but the \\(cropped\\) video is 48x64"):
        OracleSegmenter().segment_clip(rec, [np.zeros((32, 32, 3), np.uint8)] * 2, tmp_path / "ann", "x")
