"""The held-out synthetic benchmark: multi-turn editing sessions with exact expected results.

Seeds are split once and for all: `TRAIN_SEEDS` (0 .. 999,999) may be used for training data,
`HELDOUT_SEEDS` (1,000,000 .. 1,999,999) only for evaluation. `vincie synth --split heldout` and
`make_benchmark` draw from the held-out range; `check_train_seeds` refuses held-out seeds.

A session: a start state and image, then `turns` instructions, one change each (add, remove,
move, recolour, resize, rotate, swap or background), phrased like the oracle annotation's
summary_change, each with the exact expected state, image and RoE masks. On disk (a folder):

    benchmark.json                       {"type": "synth_benchmark", "version": 1, ...}
    sessions.jsonl                       one session per line (see `session_to_record`)
    images/<id>/start.png, turn1.png ..  exact frames
    masks/<id>/turn1_src.png, _dst.png   RoE masks (1-bit PNG), absent under the camera / none rules
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vincie_cli.synth.oracle import RoE, diff_states, roe_from_changes, summarize
from vincie_cli.synth.render import Renderer, render_masks
from vincie_cli.synth.world import Rng, SceneState, SynthConfig, World
from vincie_cli.utils.io import (
    BadInputError,
    UsageError,
    atomic_write_bytes,
    atomic_write_json,
    read_jsonl,
    write_jsonl,
)

TRAIN_SEEDS = range(0, 1_000_000)
HELDOUT_SEEDS = range(1_000_000, 2_000_000)
SPLITS = {"train": TRAIN_SEEDS, "heldout": HELDOUT_SEEDS}

BENCH_KINDS = ("add", "remove", "move", "recolour", "resize", "rotate", "swap", "background")
BENCH_TYPE = "synth_benchmark"
BENCH_VERSION = 1


def split_seed(split: str, offset: int) -> int:
    """The seed `offset` places into a split (train: offset itself; heldout: 1,000,000 + offset)."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; expected train or heldout")
    rng = SPLITS[split]
    seed = rng.start + offset
    if seed not in rng:
        raise UsageError(f"seed offset {offset} falls outside the {split} split ({rng.start}..{rng.stop - 1})")
    return seed


def check_train_seeds(seeds: Iterable[int]) -> None:
    """Raise UsageError if any seed belongs to the held-out split (training must never see it)."""
    bad = [s for s in seeds if s in HELDOUT_SEEDS]
    if bad:
        raise UsageError(
            f"seed {bad[0]} is in the held-out benchmark range {HELDOUT_SEEDS.start}..{HELDOUT_SEEDS.stop - 1}; "
            "training data must use seeds below it"
        )


@dataclass
class BenchmarkTurn:
    instruction: str
    kind: str
    objects: tuple[str, ...]
    state: SceneState  # expected state after the turn
    image: np.ndarray  # uint8 (H, W, 3) exact expected frame
    roe: RoE  # expected change region (src at the previous state, dst at this one)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkSession:
    id: str
    seed: int
    size: tuple[int, int]  # (W, H)
    start_state: SceneState
    start_image: np.ndarray
    turns: list[BenchmarkTurn]

    @property
    def instructions(self) -> list[str]:
        return [t.instruction for t in self.turns]


def _size(size: int | tuple[int, int] | str) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, str):
        w, _, h = size.lower().partition("x")
        return (int(w), int(h or w))
    return (int(size[0]), int(size[1]))


def make_session(
    seed: int, size: int | tuple[int, int] = 256, turns: int = 5, kinds: tuple[str, ...] = BENCH_KINDS
) -> BenchmarkSession:
    """One benchmark session for `seed` (deterministic).

    Every turn is checked with the scorer before it is accepted: the exact expected frame must
    pass and the unchanged input must fail (e.g. a rotation too small to see at this size is
    drawn again), so the benchmark gives 100% to exact frames and 0% to doing nothing.
    """
    from vincie_cli.synth.scorer import TurnJudge

    W, H = _size(size)
    cfg = SynthConfig(width=W, height=H, min_objects=1, max_objects=5, event_kinds=tuple(kinds), camera=False)
    rng = Rng(f"synth-bench:{seed}")
    world = World(rng, cfg)
    renderer = Renderer((W, H))
    judge = TurnJudge((W, H))
    state = start_state = world.sample_scene(n_objects=rng.randint(2, 4))
    image = start_image = renderer.render(state)[0]
    masks_prev = render_masks(state, (W, H))
    out_turns: list[BenchmarkTurn] = []
    history = [state]
    for k in range(turns):
        accepted = None
        for _attempt in range(40):
            kind = rng.choice(kinds)
            result = world.propose(kind, state)
            if result is None:
                continue
            new_state, params = result
            changes = diff_states(state, new_state, (W, H))
            if len(changes) != 1 or new_state in history:
                continue  # one change per turn, and never simply undo an earlier turn
            new_image = renderer.render(new_state)[0]
            change = {"kind": kind, "objects": list(params.get("objects", ()))}
            exact_ok = judge.turn(state, new_state, change, image, new_image, new_image)[0]
            still_ok = judge.turn(state, new_state, change, image, image, new_image)[0]
            if exact_ok and not still_ok:
                accepted = kind, new_state, params, changes, new_image
                break
        if accepted is None:
            raise RuntimeError(f"benchmark seed {seed}: no verifiable edit at turn {k + 1}")
        kind, new_state, params, changes, new_image = accepted
        masks = render_masks(new_state, (W, H))
        out_turns.append(
            BenchmarkTurn(
                instruction=summarize(changes, seed=f"bench:{seed}:{k}"),
                kind=kind,
                objects=tuple(params.get("objects", ())),
                state=new_state,
                image=new_image,
                roe=roe_from_changes(changes, masks_prev, masks, (W, H)),
                params={p: v for p, v in params.items() if p != "objects"},
            )
        )
        state, image, masks_prev = new_state, new_image, masks
        history.append(state)
    return BenchmarkSession(f"s{seed}", seed, (W, H), start_state, start_image, out_turns)


def make_benchmark(
    n_sessions: int, size: int | tuple[int, int] = 256, seed_offset: int = 0, turns: int = 5
) -> list[BenchmarkSession]:
    """`n_sessions` held-out sessions with seeds HELDOUT_SEEDS.start + seed_offset + i."""
    return [make_session(split_seed("heldout", seed_offset + i), size, turns) for i in range(n_sessions)]


# --------------------------------------------------------------------------------------------
# files


def _png(arr: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    if arr.dtype == bool:
        Image.fromarray(arr).convert("1").save(buf, format="PNG")
    else:
        Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _read_png(path: Path, mask: bool = False) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 127 if mask else np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise BadInputError(f"{path}: cannot read image ({e})") from None


def session_to_record(session: BenchmarkSession) -> dict[str, Any]:
    """The sessions.jsonl line of a session (paths relative to the benchmark folder)."""
    sid = session.id
    turns = []
    for k, t in enumerate(session.turns, 1):
        has = t.roe.src is not None
        turns.append(
            {
                "instruction": t.instruction,
                "kind": t.kind,
                "objects": list(t.objects),
                "params": t.params,
                "state": t.state.to_dict(),
                "image": f"images/{sid}/turn{k}.png",
                "roe": {
                    "rule": t.roe.rule,
                    "entities": list(t.roe.entities),
                    "src_mask": f"masks/{sid}/turn{k}_src.png" if has else None,
                    "dst_mask": f"masks/{sid}/turn{k}_dst.png" if has else None,
                },
            }
        )
    return {
        "type": "synth_session",
        "id": sid,
        "seed": session.seed,
        "width": session.size[0],
        "height": session.size[1],
        "start_state": session.start_state.to_dict(),
        "start_image": f"images/{sid}/start.png",
        "instructions": session.instructions,
        "turns": turns,
    }


def save_benchmark(sessions: list[BenchmarkSession], folder: str | os.PathLike) -> Path:
    """Write sessions as a benchmark folder (PNG images and masks + sessions.jsonl); returns the folder."""
    root = Path(folder)
    records = []
    for s in sessions:
        rec = session_to_record(s)
        atomic_write_bytes(root / rec["start_image"], _png(s.start_image))
        for t, tr in zip(s.turns, rec["turns"]):
            atomic_write_bytes(root / tr["image"], _png(t.image))
            if tr["roe"]["src_mask"]:
                atomic_write_bytes(root / tr["roe"]["src_mask"], _png(t.roe.src))
                atomic_write_bytes(root / tr["roe"]["dst_mask"], _png(t.roe.dst))
        records.append(rec)
    write_jsonl(root / "sessions.jsonl", records)
    size = sessions[0].size if sessions else None
    atomic_write_json(
        root / "benchmark.json",
        {
            "type": BENCH_TYPE,
            "version": BENCH_VERSION,
            "sessions": len(sessions),
            "size": list(size) if size else None,
            "seeds": [s.seed for s in sessions],
            "heldout_seeds": [HELDOUT_SEEDS.start, HELDOUT_SEEDS.stop - 1],
        },
    )
    return root


def load_benchmark(folder: str | os.PathLike) -> list[BenchmarkSession]:
    """Read a benchmark folder written by `save_benchmark`. Raises BadInputError naming the file."""
    root = Path(folder)
    meta = root / "benchmark.json"
    if not meta.is_file():
        raise BadInputError(f"{root}: not a synthetic benchmark folder (no benchmark.json)")
    sessions = []
    path = root / "sessions.jsonl"
    for i, rec in enumerate(read_jsonl(path, strict=True), 1):
        where = f"{path}:{i}"
        try:
            size = (int(rec["width"]), int(rec["height"]))
            turns = []
            prev_state = SceneState.from_dict(rec["start_state"])
            for tr in rec["turns"]:
                r = tr["roe"]
                roe = RoE(
                    r["rule"],
                    _read_png(root / r["src_mask"], mask=True) if r.get("src_mask") else None,
                    _read_png(root / r["dst_mask"], mask=True) if r.get("dst_mask") else None,
                    tuple(r.get("entities", ())),
                )
                state = SceneState.from_dict(tr["state"])
                turns.append(
                    BenchmarkTurn(
                        tr["instruction"],
                        tr["kind"],
                        tuple(tr["objects"]),
                        state,
                        _read_png(root / tr["image"]),
                        roe,
                        tr.get("params", {}),
                    )
                )
                prev_state = state
            del prev_state
            sessions.append(
                BenchmarkSession(
                    str(rec["id"]),
                    int(rec["seed"]),
                    size,
                    SceneState.from_dict(rec["start_state"]),
                    _read_png(root / rec["start_image"]),
                    turns,
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BadInputError(f"{where}: malformed session ({type(e).__name__}: {e})") from None
    return sessions
