import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.sessions.helpers import write_png
from vincie_cli.sessions.build import BuildOptions, SessionBuilder
from vincie_cli.sessions.dataset import SessionDataset
from vincie_cli.sessions.ingest import detect_kind
from vincie_cli.utils.io import BadInputError, read_jsonl


def encode(arr, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def images(n, seed, hw=(20, 28)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(n)]


def run(inputs, out, keep_going=False, **kw):
    opts = BuildOptions(**{"image_format": "png", "val_fraction": 0.0, **kw})
    return SessionBuilder(out, opts, keep_going=keep_going).run([str(i) for i in inputs])


def read(out):
    return {s.meta["clip_id"]: s for s in SessionDataset([str(out)], split=None)}


def vincie10m_table(rows):
    return pa.table(
        {
            "image": pa.array([r[0] for r in rows], type=pa.list_(pa.binary())),
            "ann_v0": pa.array([r[1] for r in rows], type=pa.string()),
        }
    )


def test_vincie10m_parquet_roundtrip(tmp_path):
    frames = [images(3, 0), images(2, 1)]
    jpgs = [[encode(f, "JPEG") for f in fs] for fs in frames]
    ann0 = [
        {"text": {"summary_change": "Turn the cup red.", "camera_change": {"motion": "pan_left"}}},
        {"text": {"summary_change": "Remove the cup.", "camera_change": "zoom"}},
    ]
    ann1 = [{"text": {"summary_change": "Make it night."}}]
    bad = [{"text": {"summary_change": "Only one transition for three frames."}}]
    rows = [(jpgs[0], json.dumps(ann0)), (jpgs[1], json.dumps(ann1)), (jpgs[0][:1] + jpgs[1], json.dumps(bad))]
    path = tmp_path / "v10m.parquet"
    pq.write_table(vincie10m_table(rows), path)
    assert detect_kind(path) == "vincie10m"
    with pytest.raises(BadInputError, match=r"v10m.parquet: row 2: ann_v0 has 1 transitions for 3 frames"):
        run([path], tmp_path / "strict")
    summary = run([path], tmp_path / "out", keep_going=True, image_format="jpg")
    assert (summary.built, summary.failed) == (2, 1)
    got = read(tmp_path / "out")
    s0, s1 = got["v10m.parquet#0"], got["v10m.parquet#1"]
    assert s0.texts == ["Turn the cup red.", "Remove the cup."] and s1.texts == ["Make it night."]
    assert s0.cameras == ["pan-left", "static"]  # unknown motions fall back to static
    assert s0.roe_rules == ["none", "none"] and s0.src_masks == [None, None]
    assert s0.meta["dataset"] == "vincie10m" and s0.meta["ann_v0"] == ann0
    for a, b in zip(s0.frames, jpgs[0]):  # jpg in, jpg out: stored as is, no second lossy encoding
        np.testing.assert_array_equal(a, np.asarray(Image.open(io.BytesIO(b)).convert("RGB")))
    with open(sorted((tmp_path / "out").glob("*.tar"))[0], "rb") as f:
        assert jpgs[0][1] in f.read()


def test_pairwise_parquet_with_masks_and_hf_image_structs(tmp_path):
    src, tgt, src2, tgt2 = images(4, 5)
    mask = np.zeros((20, 28), bool)
    mask[3:9, 4:20] = True
    table = pa.table(
        {
            "id": ["p0", "p1"],
            "source_image": [encode(src), encode(src2)],
            "instruction": ["Add a hat.", "Remove the dog."],
            "target_image": [{"bytes": encode(tgt), "path": None}, {"bytes": encode(tgt2), "path": None}],
            "mask": [encode(mask.astype(np.uint8) * 255), None],
        }
    )
    pq.write_table(table, tmp_path / "pairs.parquet")
    assert detect_kind(tmp_path / "pairs.parquet") == "pairwise"
    run([tmp_path / "pairs.parquet"], tmp_path / "out")
    got = read(tmp_path / "out")
    p0, p1 = got["p0"], got["p1"]
    np.testing.assert_array_equal(p0.frames[0], src)
    np.testing.assert_array_equal(p0.frames[1], tgt)
    assert p0.texts == ["Add a hat."] and p0.cameras == ["static"] and p0.meta["dataset"] == "pairwise"
    np.testing.assert_array_equal(p0.src_masks[0], mask)
    np.testing.assert_array_equal(p0.dst_masks[0], mask)
    assert p0.roe_rules == ["entities"] and p1.roe_rules == ["none"] and p1.src_masks == [None]


def test_pairwise_jsonl_multi_turn_sessions(tmp_path):
    imgs = images(5, 9)
    for i, im in enumerate(imgs):
        write_png(tmp_path / "img" / f"{i}.png", im)
    rows = [
        {
            "session_id": "s1",
            "turn": 2,
            "source_image": "img/1.png",
            "instruction": "Then add snow.",
            "target_image": "img/2.png",
        },
        {
            "session_id": "s1",
            "turn": 1,
            "source_image": "img/0.png",
            "instruction": "Add a tree.",
            "target_image": "img/1.png",
        },
        {"source_image": "img/3.png", "instruction": "Flip it.", "target_image": "img/4.png"},
        {"source_image": "img/3.png", "instruction": "Missing.", "target_image": "img/none.png"},
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert detect_kind(tmp_path / "pairs.jsonl") == "pairwise"
    summary = run([tmp_path / "pairs.jsonl"], tmp_path / "out", keep_going=True)
    assert (summary.built, summary.failed) == (2, 1)
    err = next(iter(read_jsonl(tmp_path / "out/failures.jsonl")))["error"]
    assert "pairs.jsonl:4: target image" in err and "img/none.png not found" in err
    got = read(tmp_path / "out")
    s1 = got["s1"]
    assert s1.texts == ["Add a tree.", "Then add snow."] and len(s1.frames) == 3
    for a, b in zip(s1.frames, imgs[:3]):
        np.testing.assert_array_equal(a, b)
    single = got["pairs.jsonl#3"]
    np.testing.assert_array_equal(single.frames[1], imgs[4])


def test_mixed_inputs_in_one_build(tmp_path):
    from tests.sessions.helpers import write_clips

    write_clips(tmp_path / "seg", n_clips=2, n_frames=2)
    a, b = images(2, 3)
    (tmp_path / "p").mkdir()
    pq.write_table(
        pa.table({"source_image": [encode(a)], "instruction": ["x"], "target_image": [encode(b)]}),
        tmp_path / "p/pairs.parquet",
    )
    run([tmp_path / "seg", tmp_path / "p"], tmp_path / "out")
    kinds = sorted(s.meta["dataset"] for s in read(tmp_path / "out").values())
    assert kinds == ["pairwise", "video", "video"]


def test_unknown_inputs_are_clear_errors(tmp_path):
    pq.write_table(pa.table({"a": [1]}), tmp_path / "x.parquet")
    with pytest.raises(BadInputError, match="x.parquet: parquet columns \\['a'\\] are neither"):
        detect_kind(tmp_path / "x.parquet")
    (tmp_path / "y.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(BadInputError, match="y.jsonl: first record is neither"):
        detect_kind(tmp_path / "y.jsonl")
    (tmp_path / "z.parquet").write_bytes(b"not parquet")
    with pytest.raises(BadInputError, match="z.parquet: not a readable parquet file"):
        detect_kind(tmp_path / "z.parquet")
