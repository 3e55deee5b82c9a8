"""benchmarks/new_shapes.py: golden values on hand-made score records; the command reads a folder and names a
missing one."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, load_script

SCRIPT = REPO / "benchmarks" / "new_shapes.py"


def _obj(role, ok, found=True, size_ratio=None, shape_iou=None):
    return {"role": role, "ok": ok, "found": found, "size_ratio": size_ratio, "shape_iou": shape_iou}


def _turn(kind, success, *objects):
    return {"kind": kind, "success": success, "objects": list(objects)}


def _session(turns):
    """A scores.jsonl record: `counted` is cumulative, as the scorer writes it."""
    alive = True
    for t in turns:
        alive = alive and t["success"]
        t["counted"] = alive
    return {"turns": turns}


ROWS = [
    _session([_turn("remove", True, _obj("removed", True)), _turn("add", True, _obj("added", True))]),
    _session([_turn("recolour", True, _obj("edited", True)), _turn("move", False, _obj("edited", False, False))]),
    _session(
        [
            _turn("rotate", False, _obj("edited", False, shape_iou=0.5), _obj("kept", True, shape_iou=0.1)),
            _turn("add", False, _obj("added", False, size_ratio=0.25), _obj("kept", True, size_ratio=9.0)),
        ]
    ),
    _session([_turn("recolour", False, _obj("edited", False)), _turn("add", False, _obj("added", False, True, 4))]),
]


def test_golden_values():
    out = load_script(SCRIPT).analyse(ROWS)
    assert out["sessions"] == 4
    assert out["chained"] == [0.5, 0.25]  # turn 2: only the first session passed both
    assert out["product"] == [0.5, 0.125]  # 2/4 then 2/4 * 1/4
    assert out["kinds"]["add"] == {"turns": 3, "success": 0.3333} and out["kinds"]["rotate"]["success"] == 0.0
    assert out["shape_share"] == 0.625  # add x3, move, rotate: 5 of 8 turns
    assert out["sessions_without"] == [3, 0]
    assert out["added_or_moved"] == {"not_found": 1, "found_wrong": 2, "right": 1}
    assert out["area_ratio_found_wrong"] == [1.19, 2.12, 3.06]  # 0.25 and 4.0; kept objects do not count
    assert out["turned_outline_iou"] is None  # one turned shape: no quartiles


def test_cli_reads_a_folder_and_names_a_missing_one(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "run")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["chained"] == [0.5, 0.25]
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "none")], capture_output=True, text=True)
    assert bad.returncode == 1 and f"{tmp_path / 'none' / 'scores.jsonl'}: not found" in bad.stderr
