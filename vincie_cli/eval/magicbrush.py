"""MagicBrush, multi-turn: L1, L2, CLIP-I, CLIP-T and DINO per turn, iterative and independent.

Data (a local copy; the test split is not on the hub):
- the dev split parquet (`osunlp/MagicBrush`, columns img_id, turn_index, source_img, target_img,
  instruction, ...): a file, a folder of shards (`dev-*.parquet` chosen by --split), or the hub id;
- the test-split folder: `edit_sessions.json`, `local_descriptions.json` and `images/<id>/<id>-input.png,
  <id>-output{k}.png`.

Modes: iterative (turn k edits the model's own turn k-1 output; the paper's Tables 1 and 4 report
it per turn) and independent (turn k edits the ground-truth input of turn k).

Results folder (`--results`, or what generation writes):
- iterative: `<dir>/<id>/turn{k}.png` (a `vincie edit` session per MagicBrush session);
- independent: `<dir>/<id>_t{k}/turn1.png` (a one-turn session per turn; turn 1 falls back to the
  iterative turn 1, which has the same input);
- the canonical MagicBrush names are accepted too: `<dir>/<id>/<id>_1.png`, `<id>_iter_{k}.png`,
  `<id>_inde_{k}.png`.

CLIP-T compares the generated image with the ground-truth local description of the target image
(`local_descriptions.json`; for the dev split pass one with --captions), as the canonical script does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vincie_cli.eval.common import (
    IMAGE_EXTS,
    describe_missing,
    image_cell_bytes,
    image_ext,
    open_rgb,
    parquet_columns,
    parquet_files,
    turn_image,
)
from vincie_cli.eval.metrics import HIGHER_IS_BETTER, METRICS, FeatureExtractor, cosine, pixel_distances
from vincie_cli.utils.io import BadInputError, UsageError, atomic_write_bytes, write_jsonl
from vincie_cli.utils.log import get_logger, progress

log = get_logger(__name__)

HUB_ID = "osunlp/MagicBrush"
MODES = ("iterative", "independent")
PARQUET_COLUMNS = ("img_id", "turn_index", "source_img", "target_img", "instruction")


@dataclass
class MBTurn:
    turn: int  # 1-based
    source: Path  # the ground-truth input of this turn
    target: Path  # the ground-truth output
    instruction: str
    target_name: str  # e.g. "<id>-output2.png", the key of its local description
    caption: str | None = None


@dataclass
class MBSession:
    id: str
    turns: list[MBTurn]


# --------------------------------------------------------------------------------------------
# loading


def _load_captions(path: Path | None) -> dict[str, dict[str, str]]:
    if path is None:
        return {}
    if not path.is_file():
        raise BadInputError(f"{path}: captions file not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise BadInputError(f'{path}: expected local descriptions {{img_id: {{"<img_id>-output1.png": caption}}}}')
    return obj


def _test_root(path: Path) -> Path | None:
    for root in (path, path / "test"):
        if (root / "edit_sessions.json").is_file():
            return root
    return None


def load_magicbrush(
    source: str,
    work_dir: Path,
    split: str = "dev",
    captions: Path | None = None,
    limit: int | None = None,
) -> list[MBSession]:
    """Sessions from the test folder or the dev parquet (whose images are extracted under `work_dir`)."""
    path = Path(source)
    root = _test_root(path) if path.is_dir() else None
    if root is not None:
        caps = _load_captions(
            captions or (root / "local_descriptions.json" if (root / "local_descriptions.json").is_file() else None)
        )
        sessions = _load_test_folder(root, caps)
    else:
        caps = _load_captions(captions)
        sessions = _load_parquet(source, work_dir, split, caps)
    if not sessions:
        raise BadInputError(f"{source}: no MagicBrush sessions found")
    sessions.sort(key=lambda s: s.id)
    return sessions[:limit] if limit else sessions


def _load_test_folder(root: Path, caps: dict[str, dict[str, str]]) -> list[MBSession]:
    index = root / "edit_sessions.json"
    try:
        obj = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{index}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise BadInputError(f"{index}: expected {{img_id: [turn, ...]}}")
    sessions = []
    for sid, turns in obj.items():
        if not isinstance(turns, list) or not turns:
            raise BadInputError(f"{index}: session {sid}: expected a non-empty list of turns")
        out = []
        for k, t in enumerate(turns, 1):
            try:
                src, dst, instr = t["input"], t["output"], t["instruction"]
            except (KeyError, TypeError):
                raise BadInputError(f"{index}: session {sid} turn {k}: needs input, output and instruction") from None
            src_p = root / "images" / sid / Path(src).name
            dst_p = root / "images" / sid / Path(dst).name
            for p in (src_p, dst_p):
                if not p.is_file():
                    raise BadInputError(f"{index}: session {sid} turn {k}: image {p} not found")
            name = Path(dst).name
            out.append(MBTurn(k, src_p, dst_p, str(instr), name, caps.get(sid, {}).get(name)))
        sessions.append(MBSession(str(sid), out))
    return sessions


def _split_files(files: list[Path], split: str) -> list[Path]:
    chosen = [f for f in files if re.match(rf"{re.escape(split)}[-_.]", f.name) or f.parent.name == split]
    if chosen:
        return chosen
    if any(re.match(r"(train|dev|test|validation)[-_.]", f.name) for f in files):
        names = ", ".join(f.name for f in files[:4])
        raise BadInputError(f"no parquet files of split {split!r} among {names}; pass --split")
    return files


def _load_parquet(source: str, work_dir: Path, split: str, caps: dict[str, dict[str, str]]) -> list[MBSession]:
    import pyarrow.parquet as pq

    files = parquet_files(source, "MagicBrush", allow_patterns=[f"data/{split}-*.parquet"])
    files = _split_files(files, split)
    data_dir = work_dir / "data"
    turns: dict[str, dict[int, MBTurn]] = {}
    for f in files:
        cols = parquet_columns(f)
        missing = [c for c in PARQUET_COLUMNS if c not in cols]
        if missing:
            raise BadInputError(
                f"{f}: not a MagicBrush parquet: missing column(s) {', '.join(missing)} "
                f"(found: {', '.join(cols[:12])}); "
                f"pass the dev split parquet or the test folder with edit_sessions.json"
            )
        for batch in pq.ParquetFile(f).iter_batches(batch_size=32, columns=list(PARQUET_COLUMNS)):
            for r in batch.to_pylist():
                sid, k = str(r["img_id"]), int(r["turn_index"])
                where = f"{f}: session {sid} turn {k}"
                if k in turns.get(sid, {}):
                    raise BadInputError(f"{where}: appears twice")
                paths = []
                for col, stem in (("source_img", f"turn{k}-input"), ("target_img", f"turn{k}-output")):
                    data = image_cell_bytes(r[col], f"{where} column {col}")
                    p = data_dir / sid / f"{stem}{image_ext(data)}"
                    if not p.is_file() or p.stat().st_size != len(data):
                        atomic_write_bytes(p, data)
                    paths.append(p)
                name = f"{sid}-output{k}.png"
                turns.setdefault(sid, {})[k] = MBTurn(
                    k, paths[0], paths[1], str(r["instruction"]), name, caps.get(sid, {}).get(name)
                )
    sessions = []
    for sid, by_turn in turns.items():
        ks = sorted(by_turn)
        if ks != list(range(1, len(ks) + 1)):
            raise BadInputError(f"{source}: session {sid} has turns {ks}, expected 1..{len(ks)}")
        sessions.append(MBSession(sid, [by_turn[k] for k in ks]))
    return sessions


# --------------------------------------------------------------------------------------------
# generation inputs and results


def generation_sessions(sessions: list[MBSession], modes: list[str]) -> list[dict[str, Any]]:
    """`vincie edit` batch sessions for the requested modes (see the results layout above)."""
    out: list[dict[str, Any]] = []
    if "iterative" in modes:
        out += [
            {"id": s.id, "images": [str(s.turns[0].source)], "prompts": [t.instruction for t in s.turns]}
            for s in sessions
        ]
    if "independent" in modes:
        first = 1 if "iterative" in modes else 0  # turn 1 has the same input in both modes
        for s in sessions:
            out += [
                {"id": f"{s.id}_t{t.turn}", "images": [str(t.source)], "prompts": [t.instruction]}
                for t in s.turns[first:]
            ]
    return out


def _named(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTS:
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return None


def result_image(results: Path, session: str, turn: int, mode: str) -> Path | None:
    """The generated image of a session turn in `mode`, in our layout or the canonical one."""
    if mode == "iterative":
        found = turn_image(results, session, turn)
        if found is None:
            found = _named(results / session, f"{session}_1" if turn == 1 else f"{session}_iter_{turn}")
        return found
    found = turn_image(results, f"{session}_t{turn}", 1)
    if found is None:
        found = _named(results / session, f"{session}_1" if turn == 1 else f"{session}_inde_{turn}")
    if found is None and turn == 1:
        found = turn_image(results, session, 1)
    return found


# --------------------------------------------------------------------------------------------
# scoring


@dataclass
class Pair:
    session: str
    turn: int
    mode: str
    generated: Path
    truth: Path
    caption: str | None


def collect_pairs(
    sessions: list[MBSession], results: Path, modes: list[str], allow_missing: bool
) -> tuple[list[Pair], dict[str, dict[str, list[int]]]]:
    """(generated, ground truth) pairs per mode; missing images are an error unless allowed."""
    if not results.is_dir():
        raise BadInputError(f"{results}: results folder not found")
    layout = "<id>/turn{k}.png for iterative, <id>_t{k}/turn1.png for independent"
    pairs: list[Pair] = []
    missing: dict[str, dict[str, list[int]]] = {m: {} for m in modes}
    for mode in modes:
        for s in sessions:
            for t in s.turns:
                p = result_image(results, s.id, t.turn, mode)
                if p is None:
                    missing[mode].setdefault(s.id, []).append(t.turn)
                else:
                    pairs.append(Pair(s.id, t.turn, mode, p, t.target, t.caption))
        if sum(len(v) for v in missing[mode].values()) == sum(len(s.turns) for s in sessions):
            raise BadInputError(f"{results}: no {mode} results for any session (layout: {layout})")
        if missing[mode] and not allow_missing:
            raise BadInputError(
                f"{results}: {mode} mode: {describe_missing(missing[mode], len(sessions))} (layout: {layout}); "
                f"generate them, or pass --allow-missing to score what is there"
            )
    return pairs, missing


def score_pairs(
    pairs: list[Pair], metrics: list[str], features: FeatureExtractor | None, batch_size: int = 16
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per-pair metric records and size warnings. GT features are computed once per image."""
    records: list[dict[str, Any]] = []
    warnings: list[str] = []
    gt_cache: dict[tuple[str, Path], np.ndarray] = {}
    text_cache: dict[str, np.ndarray] = {}
    need_clip = bool({"clip_i", "clip_t"} & set(metrics))
    for i in progress(
        range(0, len(pairs), batch_size), total=(len(pairs) + batch_size - 1) // batch_size, desc="metrics"
    ):
        chunk = pairs[i : i + batch_size]
        gens = [open_rgb(p.generated) for p in chunk]
        gts = [open_rgb(p.truth) for p in chunk]
        recs = [{"session": p.session, "turn": p.turn, "mode": p.mode, "generated": str(p.generated)} for p in chunk]
        for p, g, t, r in zip(chunk, gens, gts, recs):
            gw, gh = g.size
            tw, th = t.size
            if abs(gw / gh - tw / th) > 0.01 * (tw / th):
                warnings.append(
                    f"{p.generated}: {gw}x{gh} has another aspect ratio than the ground truth {tw}x{th}; "
                    "resized for L1/L2"
                )
            if "l1" in metrics or "l2" in metrics:
                l1, l2 = pixel_distances(g, t)
                if "l1" in metrics:
                    r["l1"] = l1
                if "l2" in metrics:
                    r["l2"] = l2
        if features is not None and need_clip:
            gen_f = features.clip_images(gens)
            gt_f = _cached(gt_cache, "clip", chunk, gts, features.clip_images)
            if "clip_i" in metrics:
                for r, v in zip(recs, cosine(gen_f, gt_f)):
                    r["clip_i"] = float(v)
            if "clip_t" in metrics:
                idx = [j for j, p in enumerate(chunk) if p.caption]
                new = sorted({chunk[j].caption for j in idx if chunk[j].caption not in text_cache})  # type: ignore[misc]
                if new:
                    for cap, f in zip(new, features.clip_texts(new)):
                        text_cache[cap] = f
                for j in idx:
                    txt = text_cache[chunk[j].caption][None]  # type: ignore[index]
                    recs[j]["clip_t"] = float(cosine(gen_f[j : j + 1], txt)[0])
                    recs[j]["clip_t_oracle"] = float(cosine(gt_f[j : j + 1], txt)[0])
        if features is not None and "dino" in metrics:
            gen_f = features.dino_images(gens)
            gt_f = _cached(gt_cache, "dino", chunk, gts, features.dino_images)
            for r, v in zip(recs, cosine(gen_f, gt_f)):
                r["dino"] = float(v)
        records += recs
    return records, warnings


def _cached(cache: dict, kind: str, chunk: list[Pair], images: list[Any], fn: Any) -> np.ndarray:
    todo = [j for j, p in enumerate(chunk) if (kind, p.truth) not in cache]
    if todo:
        for j, f in zip(todo, fn([images[j] for j in todo])):
            cache[(kind, chunk[j].truth)] = f
    return np.stack([cache[(kind, p.truth)] for p in chunk])


def aggregate(records: list[dict[str, Any]], modes: list[str], n_turns: int) -> tuple[dict[str, list], dict[str, Any]]:
    """Per-turn means per mode and metric ("iterative/dino": [turn 1, turn 2, ...]) and the canonical
    aggregates: final turn of each session (iterative) and all turns pooled."""
    metrics: dict[str, list] = {}
    summary: dict[str, Any] = {}
    names = [m for m in (*METRICS, "clip_t_oracle") if any(m in r for r in records)]
    last_turn: dict[tuple[str, str], int] = {}
    for r in records:
        key = (r["mode"], r["session"])
        last_turn[key] = max(last_turn.get(key, 0), r["turn"])
    for mode in modes:
        recs = [r for r in records if r["mode"] == mode]
        metrics[f"{mode}/pairs"] = [sum(1 for r in recs if r["turn"] == k) for k in range(1, n_turns + 1)]
        for m in names:
            per_turn = []
            for k in range(1, n_turns + 1):
                vals = [r[m] for r in recs if r["turn"] == k and m in r]
                per_turn.append(float(np.mean(vals)) if vals else None)
            metrics[f"{mode}/{m}"] = per_turn
            pooled = [r[m] for r in recs if m in r]
            final = [r[m] for r in recs if m in r and r["turn"] == last_turn[(mode, r["session"])]]
            summary[f"{mode}/all_turns/{m}"] = float(np.mean(pooled)) if pooled else None
            summary[f"{mode}/final_turn/{m}"] = float(np.mean(final)) if final else None
    return metrics, summary


def run_magicbrush(
    sessions: list[MBSession],
    results: Path,
    out_dir: Path,
    modes: list[str],
    metrics: list[str],
    features: FeatureExtractor | None,
    allow_missing: bool = False,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Score a results folder; write per-pair records to `<out_dir>/pairs.jsonl`; return the report dict."""
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise UsageError(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    pairs, missing = collect_pairs(sessions, results, modes, allow_missing)
    if "clip_t" in metrics and not any(p.caption for p in pairs):
        log.warning("no captions (local descriptions) for these sessions: CLIP-T is skipped; pass --captions FILE")
    records, warnings = score_pairs(pairs, metrics, features, batch_size)
    for w in warnings[:5]:
        log.warning("%s", w)
    if features is not None and features.truncated_captions:
        warnings.append(f"{features.truncated_captions} captions longer than CLIP's 77 tokens were truncated")
    write_jsonl(out_dir / "pairs.jsonl", records)
    n_turns = max(len(s.turns) for s in sessions)
    per_turn, summary = aggregate(records, modes, n_turns)
    lead = [f"{mode}/{m}" for mode in modes for m in ("dino", "clip_i", "clip_t", "l1") if f"{mode}/{m}" in per_turn]
    higher = {k: HIGHER_IS_BETTER[k.split("/")[-1]] for k in per_turn if k.split("/")[-1] in HIGHER_IS_BETTER}
    return {
        "benchmark": "magicbrush",
        "n_sessions": len(sessions),
        "turns": list(range(1, n_turns + 1)),
        "metrics": per_turn,
        "plot_metrics": lead,
        "higher_is_better": higher,
        "summary": {"pairs": len(records), **summary},
        "config": {"modes": modes, "metrics": metrics, "results": str(results)},
        "failures": [
            {"mode": mode, "session": sid, "turns": turns, "status": "missing"}
            for mode, by_session in missing.items()
            for sid, turns in by_session.items()
        ],
        "warnings": warnings,
    }
