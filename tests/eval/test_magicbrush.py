import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.eval.helpers import noise_image
from vincie_cli.cli import main
from vincie_cli.eval import magicbrush as mb
from vincie_cli.utils.io import BadInputError

TURNS = {"101": 1, "202": 2, "303": 3}


def write_test_folder(root, size=(40, 40)):
    """The test-split layout: edit_sessions.json, local_descriptions.json, images/<id>/<id>-{input,output<k>}.png."""
    sessions, captions = {}, {}
    for j, (sid, n) in enumerate(TURNS.items()):
        folder = root / "images" / sid
        folder.mkdir(parents=True)
        noise_image(100 * j, size).save(folder / f"{sid}-input.png")
        turns = []
        for k in range(1, n + 1):
            noise_image(100 * j + k, size).save(folder / f"{sid}-output{k}.png")
            src = f"{sid}-input.png" if k == 1 else f"{sid}-output{k - 1}.png"
            turns.append(
                {
                    "input": src,
                    "mask": f"{sid}-mask{k}.png",
                    "output": f"{sid}-output{k}.png",
                    "instruction": f"edit {k}",
                }
            )
        sessions[sid] = turns
        captions[sid] = {f"{sid}-output{k}.png": f"a picture {sid} {k}" for k in range(1, n + 1)}
    (root / "edit_sessions.json").write_text(json.dumps(sessions))
    (root / "local_descriptions.json").write_text(json.dumps(captions))
    return root


def write_generated(results, data_root, exact=("101",), size=(40, 40)):
    """Iterative outputs in our layout (exact copies of the truth for `exact` sessions), independent outputs
    under the canonical MagicBrush names."""
    for j, (sid, n) in enumerate(TURNS.items()):
        for k in range(1, n + 1):
            truth = Image.open(data_root / "images" / sid / f"{sid}-output{k}.png")
            it = truth if sid in exact else noise_image(1000 + 10 * j + k, size)
            (results / sid).mkdir(parents=True, exist_ok=True)
            it.save(results / sid / f"turn{k}.png")
            if k > 1:
                noise_image(5000 + 10 * j + k, size).save(results / sid / f"{sid}_inde_{k}.png")
    return results


def l1_np(gen_path, gt_path):
    a = np.asarray(Image.open(gen_path).convert("RGB"), float) / 255
    b = np.asarray(Image.open(gt_path).convert("RGB"), float) / 255
    return np.abs(a - b).mean()


def test_load_test_folder(tmp_path):
    root = write_test_folder(tmp_path / "MagicBrush" / "test")
    sessions = mb.load_magicbrush(str(tmp_path / "MagicBrush"), tmp_path / "run")
    assert [s.id for s in sessions] == ["101", "202", "303"]
    t = sessions[2].turns[1]
    assert t.turn == 2 and t.source.name == "303-output1.png" and t.target == root / "images/303/303-output2.png"
    assert t.caption == "a picture 303 2" and t.instruction == "edit 2"
    gen = mb.generation_sessions(sessions, ["iterative", "independent"])
    assert gen[2] == {
        "id": "303",
        "images": [str(sessions[2].turns[0].source)],
        "prompts": ["edit 1", "edit 2", "edit 3"],
    }
    assert [g["id"] for g in gen[3:]] == ["202_t2", "303_t2", "303_t3"]  # turn 1 is shared with iterative
    assert [g["id"] for g in mb.generation_sessions(sessions[:1], ["independent"])] == ["101_t1"]


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def b(img):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    table = {
        "img_id": [r[0] for r in rows],
        "turn_index": [r[1] for r in rows],
        "source_img": [b(noise_image(r[1], (16, 16))) for r in rows],
        "mask_img": [b(Image.new("RGB", (16, 16))) for _ in rows],
        "instruction": [f"do {r[1]}" for r in rows],
        "target_img": [b(noise_image(10 + r[1], (16, 16))) for r in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table), path)


def test_load_dev_parquet_and_bad_inputs(tmp_path):
    _parquet(tmp_path / "data" / "dev-00000.parquet", [("7", 2), ("7", 1), ("8", 1)])
    _parquet(tmp_path / "data" / "train-00000.parquet", [("9", 1)])
    sessions = mb.load_magicbrush(str(tmp_path / "data"), tmp_path / "run", split="dev")
    assert [(s.id, len(s.turns)) for s in sessions] == [("7", 2), ("8", 1)]
    t = sessions[0].turns[1]
    assert np.array_equal(np.asarray(Image.open(t.target)), np.asarray(noise_image(12, (16, 16))))
    assert t.caption is None and t.instruction == "do 2"
    assert [s.id for s in mb.load_magicbrush(str(tmp_path / "data"), tmp_path / "run", split="train")] == ["9"]
    with pytest.raises(BadInputError, match="no parquet files of split 'test'"):
        mb.load_magicbrush(str(tmp_path / "data"), tmp_path / "run", split="test")

    _parquet(tmp_path / "gap.parquet", [("7", 1), ("7", 3)])
    with pytest.raises(BadInputError, match=r"session 7 has turns \[1, 3\], expected 1..2"):
        mb.load_magicbrush(str(tmp_path / "gap.parquet"), tmp_path / "run")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [b"x"], "context": [["a"]]}), tmp_path / "mse.parquet")
    with pytest.raises(BadInputError, match=r"mse\.parquet: not a MagicBrush parquet: missing column\(s\) img_id"):
        mb.load_magicbrush(str(tmp_path / "mse.parquet"), tmp_path / "run")


def test_missing_and_oversized_results(tmp_path):
    root = write_test_folder(tmp_path / "test")
    sessions = mb.load_magicbrush(str(root), tmp_path / "run")
    res = write_generated(tmp_path / "res", root)
    (res / "303" / "turn3.png").unlink()
    with pytest.raises(BadInputError, match=r"iterative mode: 1 of 3 sessions are incomplete: 303 \(turn 3 missing\)"):
        mb.collect_pairs(sessions, res, ["iterative"], allow_missing=False)
    pairs, missing = mb.collect_pairs(sessions, res, ["iterative"], allow_missing=True)
    assert len(pairs) == 5 and missing == {"iterative": {"303": [3]}}
    with pytest.raises(BadInputError, match="no independent results for any session"):
        mb.collect_pairs(sessions, tmp_path / "test", ["independent"], allow_missing=True)

    # a generated image of another size and aspect ratio: resized for L1/L2, with a warning
    noise_image(7, (64, 32)).save(res / "101" / "turn1.png")
    records, warnings = mb.score_pairs(pairs[:1], ["l1", "l2"], None)
    gen = Image.open(res / "101" / "turn1.png").resize((40, 40), Image.Resampling.BICUBIC)
    gt = np.asarray(Image.open(root / "images/101/101-output1.png"), float) / 255
    assert records[0]["l1"] == pytest.approx(np.abs(np.asarray(gen, float) / 255 - gt).mean(), abs=1e-12)
    assert "64x32 has another aspect ratio than the ground truth 40x40" in warnings[0]


def test_cli_magicbrush_per_turn(tmp_path, runner, tiny_models):
    clip_dir, dino_dir = tiny_models
    root = write_test_folder(tmp_path / "test")
    res = write_generated(tmp_path / "res", root)
    args = [
        "eval",
        "magicbrush",
        "--data",
        str(root),
        "--results",
        str(res),
        "-o",
        str(tmp_path / "run"),
        "--mode",
        "both",
    ]
    args += ["--clip-model", str(clip_dir), "--dino-model", str(dino_dir), "--batch-size", "4", "--name", "tiny"]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "run/report.json").read_text())
    m = report["metrics"]
    assert report["turns"] == [1, 2, 3] and m["iterative/pairs"] == [3, 2, 1] and m["independent/pairs"] == [3, 2, 1]

    # L1 per turn = mean over the sessions that have that turn, computed here with numpy
    gt = lambda sid, k: root / "images" / sid / f"{sid}-output{k}.png"  # noqa: E731
    expected_t2 = np.mean([l1_np(res / sid / "turn2.png", gt(sid, 2)) for sid in ("202", "303")])
    assert m["iterative/l1"][1] == pytest.approx(expected_t2, abs=1e-9)
    expected_ind_t3 = l1_np(res / "303" / "303_inde_3.png", gt("303", 3))
    assert m["independent/l1"][2] == pytest.approx(expected_ind_t3, abs=1e-9)
    assert m["independent/l1"][0] == m["iterative/l1"][0]  # turn 1 is the same image in both modes

    pairs = [json.loads(x) for x in (tmp_path / "run/pairs.jsonl").read_text().splitlines()]
    exact = [p for p in pairs if p["session"] == "101" and p["mode"] == "iterative"][0]
    assert exact["l1"] == 0.0 and exact["l2"] == 0.0
    assert exact["clip_i"] == pytest.approx(1.0, abs=1e-6) and exact["dino"] == pytest.approx(1.0, abs=1e-6)
    assert exact["clip_t"] == pytest.approx(exact["clip_t_oracle"], abs=1e-6)
    for p in pairs:
        assert -1 <= p["clip_i"] <= 1 and -1 <= p["dino"] <= 1 and -1 <= p["clip_t"] <= 1

    # final turn (canonical aggregate): the last turn of each session
    finals = [p["dino"] for p in pairs if p["mode"] == "iterative" and p["turn"] == TURNS[p["session"]]]
    assert report["summary"]["iterative/final_turn/dino"] == pytest.approx(np.mean(finals))
    md = (tmp_path / "run/report.md").read_text()
    assert "| iterative/dino |" in md and "# magicbrush: tiny" in md
    assert json.loads(r.stdout.splitlines()[-1])["type"] == "eval_report"


def test_cli_magicbrush_pixel_metrics_need_no_models(tmp_path, runner):
    root = write_test_folder(tmp_path / "test")
    res = write_generated(tmp_path / "res", root)
    args = [
        "eval",
        "magicbrush",
        "--data",
        str(root),
        "--results",
        str(res),
        "-o",
        str(tmp_path / "run"),
        "--metrics",
        "l1,l2",
    ]
    args += ["--clip-model", str(tmp_path / "absent"), "--dino-model", str(tmp_path / "absent")]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "run/report.json").read_text())["metrics"]
    assert set(m) == {"iterative/pairs", "iterative/l1", "iterative/l2"}
    r = runner.invoke(main, args[:-4] + ["--metrics", "l1,psnr"])
    assert r.exit_code == 2 and "choose from l1, l2, clip-i, clip-t, dino" in r.stderr
