import json
from pathlib import Path

import numpy as np
import pytest

from tests.sessions.helpers import write_clips
from vincie_cli.cli import main
from vincie_cli.records import resolve_path
from vincie_cli.segment.roe import Detection
from vincie_cli.segment.runner import DetectorSegmenter, run_segment
from vincie_cli.utils.io import BadInputError, read_jsonl
from vincie_cli.utils.masks import load_mask


def bright_detector(images, queries):
    """A deterministic stand-in detector: each query's 'instance' is the pixels brighter than 200 in red."""
    out = []
    for img, qs in zip(images, queries):
        m = img[..., 0] > 200
        out.append([Detection(q, [0.0, 0.0, float(img.shape[1]), float(img.shape[0])], 0.9, m) for q in qs])
    return out


def _seg():
    return DetectorSegmenter(bright_detector, "test", "bright")


def _stdout_records(res):
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def test_runner_writes_masks_and_rebased_records(tmp_path):
    clips = write_clips(tmp_path / "ann", n_clips=2, n_frames=3)
    out = tmp_path / "seg"
    summary = run_segment([str(tmp_path / "ann")], out, _seg())
    assert (summary.clips, summary.transitions, dict(summary.rules)) == (2, 4, {"entities": 4})
    recs = list(read_jsonl(out / "segments.jsonl"))
    assert [r["clip_id"] for r in recs] == ["clip000", "clip001"]
    for rec, clip in zip(recs, clips):
        for fr in rec["frames"]:  # frame paths now relative to the output folder
            assert resolve_path(fr["path"], out).is_file()
        for tr in rec["transitions"]:
            roe = tr["roe"]
            assert roe["rule"] == "entities" and roe["backend"] == "test" and roe["model"] == "bright"
            src = load_mask(out / roe["src_mask"], (24, 40))
            np.testing.assert_array_equal(src, clip["frames"][tr["src"]][..., 0] > 200)
            dst = load_mask(out / roe["dst_mask"], (24, 40))
            np.testing.assert_array_equal(dst, clip["frames"][tr["dst"]][..., 0] > 200)
            assert roe["src_coverage"] == pytest.approx(src.mean(), abs=1e-6)
            assert roe["queries"] == [f"object {rec['clip_id'][-1]}"] and len(roe["boxes"]["src"]) == 1


def test_runner_resumes_and_repairs_a_torn_tail(tmp_path):
    write_clips(tmp_path / "ann", n_clips=3)
    out = tmp_path / "seg"
    run_segment([str(tmp_path / "ann")], out, _seg(), limit=1)
    with open(out / "segments.jsonl", "a") as f:
        f.write('{"type": "clip", "clip_id": "cl')  # a crash mid-append
    calls = []

    def factory():
        calls.append(1)
        return _seg()

    summary = run_segment([str(tmp_path / "ann")], out, factory)
    assert (summary.skipped, summary.clips) == (1, 2)
    assert [r["clip_id"] for r in read_jsonl(out / "segments.jsonl", strict=True)] == ["clip000", "clip001", "clip002"]
    again = run_segment([str(tmp_path / "ann")], out, factory)
    assert (again.skipped, again.clips) == (3, 0)
    assert calls == [1], "a finished run must not load the models"


def test_missing_frame_keep_going(tmp_path, runner):
    write_clips(tmp_path / "ann", n_clips=3)
    (tmp_path / "ann/clips/clip001/002.png").unlink()
    out = tmp_path / "seg"
    with pytest.raises(BadInputError, match=r"annotations.jsonl:2: frame .*clip001/002.png not found"):
        run_segment([str(tmp_path / "ann")], out, _seg())
    summary = run_segment([str(tmp_path / "ann")], out, _seg(), keep_going=True)
    assert (summary.clips, summary.failed, summary.skipped) == (1, 1, 1)
    fails = list(read_jsonl(out / "failures.jsonl"))
    assert fails[0]["clip_id"] == "clip001" and "002.png not found" in fails[0]["error"]
    assert sorted(r["clip_id"] for r in read_jsonl(out / "segments.jsonl")) == ["clip000", "clip002"]


def test_shards_partition_the_clips(tmp_path):
    write_clips(tmp_path / "ann", n_clips=6)
    out = tmp_path / "seg"
    a = run_segment([str(tmp_path / "ann")], out, _seg(), shard=(0, 2))
    b = run_segment([str(tmp_path / "ann")], out, _seg(), shard=(1, 2))
    ids_a = {r["clip_id"] for r in read_jsonl(out / "segments-00000-of-00002.jsonl")}
    ids_b = {r["clip_id"] for r in read_jsonl(out / "segments-00001-of-00002.jsonl")}
    assert not ids_a & ids_b and len(ids_a | ids_b) == 6 and a.clips + b.clips == 6


def test_cli_grounded_sam2_end_to_end(tmp_path, runner, tiny_models):
    det, sam = tiny_models
    write_clips(tmp_path / "ann", n_clips=2, n_frames=3, size=(160, 128))
    out = tmp_path / "seg"
    res = runner.invoke(
        main,
        [
            "segment",
            str(tmp_path / "ann"),
            "--out-dir",
            str(out),
            "--detector",
            det,
            "--segmenter",
            sam,
            "--device",
            "cpu",
            "--box-threshold",
            "0.3",
            "--batch-size",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    recs = _stdout_records(res)
    assert [r["type"] for r in recs] == ["segment", "segment", "summary"]
    assert recs[-1]["transitions"] == 4
    for rec in read_jsonl(out / "segments.jsonl"):
        for tr in rec["transitions"]:
            roe = tr["roe"]
            assert roe["rule"] in ("entities", "none") and roe["backend"] == "grounded-sam2"
            assert det in roe["model"] and sam in roe["model"]
            if roe["rule"] == "entities":
                m = load_mask(out / roe["src_mask"], (128, 160))
                assert roe["src_coverage"] == pytest.approx(m.mean(), abs=1e-6)
                assert len(roe["boxes"]["src"]) == len(roe["scores"]["src"]) == len(roe["labels"]["src"]) >= 0


def test_cli_oracle_refuses_real_videos(tmp_path, runner):
    write_clips(tmp_path / "ann", n_clips=1)
    res = runner.invoke(main, ["segment", str(tmp_path / "ann"), "-o", str(tmp_path / "seg"), "--backend", "oracle"])
    assert res.exit_code == 1
    assert "is not a synthetic video" in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == ""


def test_cli_bad_input_is_one_line(tmp_path, runner):
    res = runner.invoke(main, ["segment", str(tmp_path / "missing"), "-o", str(tmp_path / "seg")])
    assert res.exit_code == 1 and res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'missing'}: no such file or directory"
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "clip", "clip_id": "x", "frames": [], "transitions": []}\n')
    res = runner.invoke(main, ["segment", str(bad), "-o", str(tmp_path / "seg")])
    assert res.exit_code == 1 and "bad.jsonl:1: a clip needs at least 2 frames" in res.stderr
    assert Path(tmp_path / "seg").is_dir()
