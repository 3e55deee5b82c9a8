"""Synthetic-world sessions for the training tests: in memory (`Session`) or as real shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.sessions.helpers import annotation, change, write_png
from vincie_cli.sessions.session import Session
from vincie_cli.utils.io import write_jsonl


def synth(seed: int, size: int = 32, turns: int = 3):
    from vincie_cli.synth.benchmark import make_session

    return make_session(seed, size, turns)


def synth_session(seed: int, size: int = 32, turns: int = 3, masks: bool = True) -> Session:
    """A `Session` from the synthetic world (exact frames, instructions and RoE masks)."""
    b = synth(seed, size, turns)
    return Session(
        key=f"s{seed}",
        frames=[b.start_image] + [t.image for t in b.turns],
        texts=b.instructions,
        cameras=["static"] * turns,
        src_masks=[t.roe.src if masks else None for t in b.turns],
        dst_masks=[t.roe.dst if masks else None for t in b.turns],
        roe_rules=["entities"] * turns,
        meta={},
    )


def write_synth_clips(root: Path, seeds: list[int], size: int = 32, turns: int = 3) -> Path:
    """Clip records (as `annotate` + `segment` write them) for synthetic sessions; returns the JSONL path."""
    from PIL import Image

    records: list[dict[str, Any]] = []
    for seed in seeds:
        b = synth(seed, size, turns)
        cid = f"synth{seed:04d}"
        frames = [b.start_image] + [t.image for t in b.turns]
        rec: dict[str, Any] = {
            "type": "clip", "clip_id": cid, "source": f"videos/{cid}.mp4", "clip_start": 0.0,
            "clip_end": float(len(frames)), "width": size, "height": size, "crop": None, "frames": [],
            "transitions": [], "backend": "test", "model": "synthetic",
        }  # fmt: skip
        for i, fr in enumerate(frames):
            rel = f"clips/{cid}/{i:03d}.png"
            write_png(root / rel, fr)
            rec["frames"].append({"index": i, "time": float(i) + 0.5, "path": rel})
        for k, t in enumerate(b.turns):
            tr: dict[str, Any] = {
                "index": k, "src": k, "dst": k + 1, "raw": "", "attempts": 1, "roe": None,
                "annotation": annotation(t.instruction, [change(t.instruction, "move")]),
            }  # fmt: skip
            if t.roe.src is not None and t.roe.dst is not None:
                paths = {}
                for side, m in (("src", t.roe.src), ("dst", t.roe.dst)):
                    rel = f"masks/{cid}/{k:03d}_{side}.png"
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.asarray(m, bool)).convert("1").save(root / rel)
                    paths[side] = rel
                tr["roe"] = {
                    "rule": "entities", "queries": ["object"], "src_mask": paths["src"], "dst_mask": paths["dst"],
                    "src_coverage": float(np.mean(t.roe.src)), "dst_coverage": float(np.mean(t.roe.dst)),
                    "backend": "test", "model": "synthetic",
                }  # fmt: skip
            rec["transitions"].append(tr)
        records.append(rec)
    path = root / "annotations.jsonl"
    write_jsonl(path, records)
    return path


def build_shards(root: Path, seeds: list[int], size: int = 32, turns: int = 3) -> Path:
    """Shards (with index.json) of synthetic sessions, built by the real `SessionBuilder`."""
    from vincie_cli.sessions.build import BuildOptions, SessionBuilder

    clips = write_synth_clips(root / "clips", seeds, size, turns)
    out = root / "sessions"
    SessionBuilder(out, BuildOptions(image_format="png", val_fraction=0.0)).run([str(clips)])
    return out


def tiny_overrides(sources: Path | str, **extra: Any) -> list[str]:
    """`--set` overrides that make recipes/tiny.yaml fast and deterministic on a shared CPU."""
    sets = {
        "data.sources": f"[{sources}]",
        "train.threads": 1,
        "log.tensorboard": "false",
        "data.shuffle_buffer": 0,
        **extra,
    }
    return [f"{k}={v}" for k, v in sets.items()]
