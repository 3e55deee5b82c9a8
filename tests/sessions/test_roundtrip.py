"""Synthetic videos -> annotate (oracle) -> segment (oracle) -> build-sessions -> SessionDataset == ground truth."""

import json
from pathlib import Path

import numpy as np
import pytest

from vincie_cli.annotate.backends.oracle import phrase_seed
from vincie_cli.cli import main
from vincie_cli.records import resolve_path
from vincie_cli.sessions import SessionDataset
from vincie_cli.utils.io import read_jsonl

pytestmark = pytest.mark.integration


def _run(runner, args):
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def test_synthetic_round_trip(tmp_path, runner):
    from PIL import Image

    from vincie_cli.synth import find_ground_truth, load_ground_truth
    from vincie_cli.synth.oracle import annotate_pair, roe_masks

    _run(runner, ["synth", str(tmp_path / "videos"), "--videos", "4", "--size", "96x64", "--duration", "3"])
    _run(
        runner,
        [
            "annotate",
            str(tmp_path / "videos"),
            "-o",
            str(tmp_path / "ann"),
            "--backend",
            "oracle",
            "--sampling",
            "interval",
            "--interval",
            "0.5",
        ],
    )
    _run(runner, ["segment", str(tmp_path / "ann"), "-o", str(tmp_path / "seg"), "--backend", "oracle"])
    out = _run(
        runner,
        [
            "build-sessions",
            str(tmp_path / "seg"),
            "-o",
            str(tmp_path / "sess"),
            "--image-format",
            "png",
            "--val-fraction",
            "0",
        ],
    )
    clips = {r["clip_id"]: r for r in read_jsonl(tmp_path / "ann/annotations.jsonl")}
    assert out[-1]["built"] == len(clips) >= 3

    sessions = list(SessionDataset([str(tmp_path / "sess")]))
    assert sorted(s.meta["clip_id"] for s in sessions) == sorted(clips)
    rules = set()
    for s in sessions:
        clip = clips[s.meta["clip_id"]]
        video = resolve_path(clip["source"], tmp_path / "ann")
        gt = load_ground_truth(find_ground_truth(video))
        times = [f["time"] for f in clip["frames"]]
        assert s.meta["frame_times"] == times and s.meta["dataset"] == "video"
        assert Path(tmp_path / "sess" / s.meta["source"]).resolve() == video.resolve()
        for k, frame in enumerate(s.frames):
            saved = np.asarray(Image.open(resolve_path(clip["frames"][k]["path"], tmp_path / "ann")).convert("RGB"))
            np.testing.assert_array_equal(frame, saved)  # png all the way: exact
            exact = gt.render_frame(gt.frame_index(times[k]))
            assert np.abs(frame.astype(int) - exact).mean() < 8  # only the H.264 round trip differs
        for k in range(s.num_turns):
            ann = annotate_pair(gt, times[k], times[k + 1], seed=phrase_seed(0, gt, str(video), times[k], times[k + 1]))
            assert s.texts[k] == ann["summary_change"]
            assert s.cameras[k] == ann["camera_change"]["motion"]
            truth = roe_masks(gt, times[k], times[k + 1])
            rules.add(truth.rule)
            assert s.roe_rules[k] == truth.rule
            for got, want in ((s.src_masks[k], truth.src), (s.dst_masks[k], truth.dst)):
                if want is None:
                    assert got is None
                else:
                    np.testing.assert_array_equal(got, want)
    assert "entities" in rules
