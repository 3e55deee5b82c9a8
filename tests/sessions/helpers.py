"""Hand-made clip records, frames and masks (what `annotate` / `segment` write) for segment and sessions tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vincie_cli.utils.io import write_jsonl


def annotation(
    summary: str,
    changes: list[dict[str, str]] | None = None,
    global_change: str = "",
    camera: str = "static",
    objects: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """An annotation in the records schema."""
    cap = {"caption": "a scene", "characters": [], "objects": objects or []}
    return {
        "frame1_caption": cap,
        "frame2_caption": cap,
        "character_change": [],
        "object_change": changes or [],
        "global_change": global_change,
        "camera_change": {"motion": camera, "detail": ""},
        "other_change": "",
        "summary_change": summary,
    }


def change(desc: str, kind: str = "move", oid: str = "obj1") -> dict[str, str]:
    return {"id": oid, "description": desc, "change": kind, "detail": ""}


def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_clips(
    root: Path,
    n_clips: int = 3,
    n_frames: int = 3,
    size: tuple[int, int] = (40, 24),
    seed: int = 0,
    masks: bool = False,
    file: str = "annotations.jsonl",
    prefix: str = "clip",
) -> list[dict[str, Any]]:
    """Write `n_clips` clip records (random frames, one move per turn) under `root`.

    Returns, per clip: {"record", "frames": [uint8 arrays], "src_masks", "dst_masks"} (masks None
    unless `masks`, in which case every record carries an RoE entry like `segment` writes).
    """
    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    records = []
    for c in range(n_clips):
        cid = f"{prefix}{c:03d}"
        frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n_frames)]
        rec: dict[str, Any] = {
            "type": "clip",
            "clip_id": cid,
            "source": f"videos/{cid}.mp4",
            "clip_start": 0.0,
            "clip_end": float(n_frames),
            "width": w,
            "height": h,
            "crop": None,
            "frames": [],
            "transitions": [],
            "backend": "test",
            "model": "hand-made",
        }
        for i, fr in enumerate(frames):
            rel = f"clips/{cid}/{i:03d}.png"
            write_png(root / rel, fr)
            rec["frames"].append({"index": i, "time": float(i) + 0.5, "path": rel})
        src_masks, dst_masks = [], []
        for t in range(n_frames - 1):
            tr = {
                "index": t,
                "src": t,
                "dst": t + 1,
                "annotation": annotation(
                    f"Move the object of clip {c} turn {t}.",
                    [change(f"object {c}")],
                    camera="pan-left" if t % 2 else "static",
                ),
                "raw": "",
                "attempts": 1,
                "roe": None,
            }
            if masks:
                sm = np.zeros((h, w), bool)
                dm = np.zeros((h, w), bool)
                sm[2 + t : 10 + t, 3 : 12 + c] = True
                dm[5:15, 8 + t : 20] = True
                for side, m in (("src", sm), ("dst", dm)):
                    rel = f"masks/{cid}/{t:03d}_{side}.png"
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(m).convert("1").save(root / rel)
                tr["roe"] = {
                    "rule": "entities",
                    "queries": [f"object {c}"],
                    "src_mask": f"masks/{cid}/{t:03d}_src.png",
                    "dst_mask": f"masks/{cid}/{t:03d}_dst.png",
                    "src_coverage": float(sm.mean()),
                    "dst_coverage": float(dm.mean()),
                    "backend": "test",
                    "model": "hand-made",
                }
                src_masks.append(sm)
                dst_masks.append(dm)
            else:
                src_masks.append(None)
                dst_masks.append(None)
            rec["transitions"].append(tr)
        records.append(rec)
        out.append({"record": rec, "frames": frames, "src_masks": src_masks, "dst_masks": dst_masks})
    write_jsonl(root / file, records)
    return out
