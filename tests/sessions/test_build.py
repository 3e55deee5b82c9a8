import json
import os

import numpy as np
import pytest

from tests.sessions.helpers import write_clips, write_png
from vincie_cli.cli import main
from vincie_cli.sessions.build import BuildOptions, SessionBuilder, split_of
from vincie_cli.sessions.dataset import SessionDataset
from vincie_cli.utils.io import BadInputError, UsageError, read_jsonl


def build(inputs, out, **kw):
    keep_going = kw.pop("keep_going", False)
    shard = kw.pop("shard", (0, 1))
    limit = kw.pop("limit", None)
    opts = BuildOptions(**{"image_format": "png", "val_fraction": 0.0, **kw})
    return SessionBuilder(out, opts, shard=shard, keep_going=keep_going).run([str(i) for i in inputs], limit=limit)


def read_all(out, split=None, **kw):
    return {s.meta["clip_id"]: s for s in SessionDataset([str(out)], split=split, **kw)}


def test_png_roundtrip_is_exact(tmp_path):
    clips = write_clips(tmp_path / "seg", n_clips=4, n_frames=4, masks=True)
    summary = build([tmp_path / "seg"], tmp_path / "out")
    assert (summary.built, summary.turns) == (4, 12)
    got = read_all(tmp_path / "out")
    assert sorted(got) == ["clip000", "clip001", "clip002", "clip003"]
    for clip in clips:
        rec = clip["record"]
        s = got[rec["clip_id"]]
        assert len(s.frames) == 4 and s.num_turns == 3
        for a, b in zip(s.frames, clip["frames"]):
            np.testing.assert_array_equal(a, b)
        assert s.texts == [tr["annotation"]["summary_change"] for tr in rec["transitions"]]
        assert s.cameras == ["static", "pan-left", "static"]
        assert s.tagged_texts()[1] == "[###CAMERA: pan-left###] " + s.texts[1]
        assert s.roe_rules == ["entities"] * 3
        for got_m, want_m in zip(s.src_masks + s.dst_masks, clip["src_masks"] + clip["dst_masks"]):
            np.testing.assert_array_equal(got_m, want_m)
        assert s.meta["dataset"] == "video" and s.meta["source"] == "../seg/" + rec["source"]  # beside the shards
        assert s.meta["frame_times"] == [0.5, 1.5, 2.5, 3.5] and s.meta["split"] == "train"
        assert (
            s.meta["annotations"][0]["object_change"][0]["description"]
            == rec["transitions"][0]["annotation"]["object_change"][0]["description"]
        )


@pytest.mark.parametrize("fmt,tol", [("jpg", 6.0), ("webp", 8.0)])
def test_lossy_formats_roundtrip_within_encoding(tmp_path, fmt, tol):
    clips = write_clips(tmp_path / "seg", n_clips=1, n_frames=2, size=(64, 48), masks=True, seed=1)
    # smooth frames: random noise is the worst case for lossy codecs
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)
    write_png(tmp_path / "seg/clips/clip000/000.png", smooth)
    build([tmp_path / "seg"], tmp_path / "out", image_format=fmt, quality=95)
    s = read_all(tmp_path / "out")["clip000"]
    assert np.abs(s.frames[0].astype(int) - smooth).mean() < tol / 3
    np.testing.assert_array_equal(s.src_masks[0], clips[0]["src_masks"][0])  # masks stay lossless
    with open(tmp_path / "out/train-000000.tar", "rb") as f:
        assert f".frame000.{fmt}".encode() in f.read()


def test_max_resolution_keeps_aspect_and_masks_follow(tmp_path):
    clips = write_clips(tmp_path / "seg", n_clips=1, n_frames=2, size=(40, 24), masks=True)
    build([tmp_path / "seg"], tmp_path / "out", max_resolution=20)
    s = read_all(tmp_path / "out")["clip000"]
    assert s.frames[0].shape == (12, 20, 3) and s.src_masks[0].shape == (12, 20)
    from PIL import Image

    want = np.asarray(Image.fromarray(clips[0]["src_masks"][0]).resize((20, 12), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(s.src_masks[0], want)
    # the reader can shrink further
    s2 = read_all(tmp_path / "out", max_resolution=10)["clip000"]
    assert s2.frames[1].shape == (6, 10, 3) and s2.dst_masks[0].shape == (6, 10)


def test_index_and_stats(tmp_path):
    clips = write_clips(tmp_path / "seg", n_clips=6, n_frames=3, masks=True)
    build([tmp_path / "seg"], tmp_path / "out", shard_size_mb=0.005)
    index = json.loads((tmp_path / "out/index.json").read_text())
    assert len(index["shards"]) >= 2
    assert sum(s["sessions"] for s in index["shards"]) == 6 and index["totals"]["train"]["turns"] == 12
    for row in index["shards"]:
        assert os.path.getsize(tmp_path / "out" / row["name"]) == row["bytes"]
        assert row["frames"] == 3 * row["sessions"]
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    assert stats["sessions"] == 6 and stats["turns_histogram"] == {"2": 6}
    assert stats["change_categories"] == {"move": 12} and stats["roe_rules"] == {"entities": 12}
    assert stats["camera_motions"] == {"static": 6, "pan-left": 6}
    want = np.mean([m.mean() for c in clips for m in c["src_masks"]])
    assert stats["mask_coverage"]["src"]["mean"] == pytest.approx(want, abs=1e-3)
    assert sum(stats["mask_coverage"]["dst"]["histogram"]) == 12


def test_split_is_deterministic_by_clip(tmp_path):
    write_clips(tmp_path / "seg", n_clips=20, n_frames=2)
    build([tmp_path / "seg"], tmp_path / "out", val_fraction=0.3)
    train = read_all(tmp_path / "out", split="train")
    val = read_all(tmp_path / "out", split="val")
    assert not set(train) & set(val) and len(train) + len(val) == 20 and len(val) > 0
    assert all(split_of(cid, 0.3) == "val" for cid in val)
    assert all(s.meta["split"] == "val" for s in val.values())
    assert split_of("clip-x", 0.0) == "train" and split_of("clip-x", 0.999999) == "val"


def test_dedup_by_clip_id_and_content(tmp_path):
    write_clips(tmp_path / "a", n_clips=3, n_frames=2)
    write_clips(tmp_path / "b", n_clips=3, n_frames=2)  # the same clip ids (and frames) again
    write_clips(tmp_path / "c", n_clips=2, n_frames=2, prefix="copy")  # same frames (seed 0), other ids
    summary = build([tmp_path / "a", tmp_path / "b", tmp_path / "c"], tmp_path / "out")
    assert (summary.built, summary.duplicates) == (3, 5)
    summary = build([tmp_path / "c"], tmp_path / "out2", dedup=False)
    assert summary.built == 2


def test_resume_never_rewrites_finished_shards(tmp_path):
    write_clips(tmp_path / "seg", n_clips=8, n_frames=2)
    out = tmp_path / "out"
    first = build([tmp_path / "seg"], out, shard_size_mb=0.004, limit=3)
    assert first.built == 3
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    # a crash mid-shard left a hidden temp file and an orphan sidecar behind
    (out / ".train-000099.tar.abc.tmp").write_bytes(b"partial")
    (out / "train-000099.json").write_text("{}")
    second = build([tmp_path / "seg"], out, shard_size_mb=0.004)
    assert (second.skipped_done, second.built) == (3, 5)
    for name, stamp in stamps.items():
        p = out / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp
    assert not list(out.glob(".*.tmp")) and not (out / "train-000099.json").exists()
    assert sorted(read_all(out)) == [f"clip{i:03d}" for i in range(8)]
    third = build([tmp_path / "seg"], out)
    assert (third.built, third.skipped_done) == (0, 8)


def test_interrupted_build_publishes_no_partial_shard(tmp_path, monkeypatch):
    import vincie_cli.sessions.build as b

    write_clips(tmp_path / "seg", n_clips=4, n_frames=2)
    real = b.encode_session
    calls = []

    def crash_on_third(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("killed")
        return real(*args, **kw)

    monkeypatch.setattr(b, "encode_session", crash_on_third)
    with pytest.raises(MemoryError):
        build([tmp_path / "seg"], tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.tar")) and not list((tmp_path / "out").glob(".*tmp"))
    monkeypatch.setattr(b, "encode_session", real)
    assert build([tmp_path / "seg"], tmp_path / "out").built == 4


def test_input_shards_partition_sessions(tmp_path):
    write_clips(tmp_path / "seg", n_clips=10, n_frames=2)
    out = tmp_path / "out"
    a = build([tmp_path / "seg"], out, shard=(0, 2))
    b = build([tmp_path / "seg"], out, shard=(1, 2))
    assert a.built + b.built == 10 and a.built and b.built
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == ["train-s0of2-000000.tar", "train-s1of2-000000.tar"]
    index = json.loads((out / "index.json").read_text())
    assert sorted(r["name"] for r in index["shards"]) == names
    assert len(read_all(out)) == 10


def test_options_are_fixed_per_folder(tmp_path):
    write_clips(tmp_path / "seg", n_clips=1, n_frames=2)
    build([tmp_path / "seg"], tmp_path / "out")
    with pytest.raises(UsageError, match="built with other options: image_format='png' \\(now 'jpg'\\)"):
        build([tmp_path / "seg"], tmp_path / "out", image_format="jpg")


def test_bad_inputs_keep_going(tmp_path):
    clips = write_clips(tmp_path / "seg", n_clips=4, n_frames=3, masks=True)
    (tmp_path / "seg/clips/clip001/002.png").unlink()
    write_png(tmp_path / "seg/masks/clip002/001_dst.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(BadInputError, match=r"annotations.jsonl:2: frame .*clip001/002.png not found"):
        build([tmp_path / "seg"], tmp_path / "out")
    summary = build([tmp_path / "seg"], tmp_path / "out", keep_going=True)
    assert (summary.failed, summary.skipped_done) == (2, 1)
    errors = [r["error"] for r in read_jsonl(tmp_path / "out/failures.jsonl")]
    assert any("clip001/002.png not found" in e for e in errors)
    assert any("001_dst.png: mask is 10x10, its frame is 40x24" in e for e in errors)
    assert sorted(read_all(tmp_path / "out")) == ["clip000", "clip003"]
    del clips


def test_cli(tmp_path, runner):
    write_clips(tmp_path / "seg", n_clips=3, n_frames=3, masks=True)
    res = runner.invoke(
        main,
        [
            "build-sessions",
            str(tmp_path / "seg"),
            "-o",
            str(tmp_path / "out"),
            "--image-format",
            "webp",
            "--val-fraction",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in res.stdout.splitlines()]
    assert [r["type"] for r in recs] == ["shard", "summary"]
    assert recs[0]["sessions"] == 3 and recs[1]["built"] == 3
    assert "sessions 3 (train 3)" in res.stderr and "turns per session: 2: 3" in res.stderr
    res = runner.invoke(main, ["build-sessions", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])
    assert res.exit_code == 1 and res.stderr.strip() == f"error: {tmp_path / 'nope'}: no such file or directory"
    (tmp_path / "seg/clips/clip000/000.png").unlink()
    res = runner.invoke(main, ["build-sessions", str(tmp_path / "seg"), "-o", str(tmp_path / "o2"), "--keep-going"])
    assert res.exit_code == 3 and [json.loads(x)["type"] for x in res.stdout.splitlines()][0] == "error"
    res = runner.invoke(main, ["build-sessions", str(tmp_path / "seg"), "-o", str(tmp_path / "o3"), "--quality", "0"])
    assert res.exit_code == 2 and "--quality" in res.stderr


def test_unannotated_transition_splits_the_clip(tmp_path):
    from vincie_cli.utils.io import write_jsonl

    clips = write_clips(tmp_path / "seg", n_clips=1, n_frames=4, masks=True)
    rec = clips[0]["record"]
    rec["transitions"][1]["annotation"] = None  # the VLM failed on this pair
    write_jsonl(tmp_path / "seg/annotations.jsonl", [rec])
    build([tmp_path / "seg"], tmp_path / "out", val_fraction=0.5)
    got = {s.meta["first_frame"]: s for s in SessionDataset([str(tmp_path / "out")], split=None)}
    assert sorted(got) == [0, 2]
    a, b = got[0], got[2]
    np.testing.assert_array_equal(a.frames[1], clips[0]["frames"][1])
    np.testing.assert_array_equal(b.frames[0], clips[0]["frames"][2])
    assert a.texts == [rec["transitions"][0]["annotation"]["summary_change"]]
    assert b.texts == [rec["transitions"][2]["annotation"]["summary_change"]]
    np.testing.assert_array_equal(b.dst_masks[0], clips[0]["dst_masks"][2])
    assert a.meta["clip_id"] == b.meta["clip_id"] == "clip000" and a.meta["split"] == b.meta["split"]
    assert a.key != b.key
