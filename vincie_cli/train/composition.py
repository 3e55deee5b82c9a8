"""Context composition: which frames, masks and texts one training session holds (paper §3.3, §4.1).

A session of images I_0..I_K with K instructions becomes a frame stack laid out by `prompts.plan_session`,
the same plan `vincie edit` uses, so the model sees at inference exactly the texts it was trained on:

    I_0 ─[CSP text]─► M_0^src ─[NSP text]─► M_0^dst ─[NIP text]─► I_1 ─ ... ─► I_K

Per session: a random window of at most `data.max_turns` turns; the RoE masks are used with probability
`roe_prob`; all step texts become "" with probability `text_dropout` (the unconditional branch of
classifier-free guidance). Per turn, independently: the source mask (current-segmentation step) is kept
with probability 1 - `drop_current_mask` and the target mask (next-segmentation step) with 1 -
`drop_next_mask`, when the turn has them; the turn's source image is *hidden* with probability
`drop_current_frame`.

Decisions, where the paper is silent:
- A dropped mask is absent from the stack (plan_session without that step), exactly like inference
  without chain-of-editing. Every frame after the first is a generation target (so the image or mask
  to be generated is always kept).
- A hidden image keeps its place in the stack (texts and positions do not change) but its clean content
  is withheld from every target after it: the released layout marks it unknown (condition zeros, like a
  frame to be generated), the paper layout drops its clean tokens. It stays a target of its own step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from vincie_cli.prompts import TurnSpec, plan_session
from vincie_cli.records import camera_tag

FrameKind = Literal["image", "mask_src", "mask_dst"]


@dataclass(frozen=True)
class FrameRef:
    """Where a frame of the stack comes from: session image `index`, or the src/dst mask of turn `index`."""

    kind: FrameKind
    index: int


@dataclass
class Composition:
    """One composed training session (frame stack, step texts, what is hidden, what carries loss)."""

    key: str
    frames: list[FrameRef]
    texts: list[str]  # step s produces frame s + 1
    tasks: list[str]  # "nip" | "csp" | "nsp" per step
    hidden: list[bool]  # per frame
    targets: list[int]  # frame indices that carry loss (all >= 1)
    roe: bool = False
    text_dropped: bool = False
    window: tuple[int, int] = (0, 0)  # first turn, number of turns
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def task_of(self, frame: int) -> str:
        return self.tasks[frame - 1]


def compose(
    session,
    tasks,
    rng: random.Random,
    max_turns: int,
    max_targets: int = 0,
    turns_cap: int | None = None,
) -> Composition:
    """Compose one `Session` under a `TasksSection` with draws from `rng` (see the module docstring).

    turns_cap: cut the window further (the batcher uses it to fit a session into the token budget).
    max_targets: keep at most this many targets (random, > 0 only).
    """
    k_total = session.num_turns
    n = min(k_total, max_turns, turns_cap or k_total)
    start = rng.randrange(k_total - n + 1)
    use_roe = rng.random() < tasks.roe_prob
    drop_text = rng.random() < tasks.text_dropout
    has_masks = False
    specs: list[TurnSpec] = []
    hide: list[bool] = []
    for k in range(start, start + n):
        u_src, u_dst, u_cur = rng.random(), rng.random(), rng.random()
        src = use_roe and session.src_masks[k] is not None and u_src >= tasks.drop_current_mask
        dst = use_roe and session.dst_masks[k] is not None and u_dst >= tasks.drop_next_mask
        has_masks |= session.src_masks[k] is not None or session.dst_masks[k] is not None
        prefix = camera_tag(session.cameras[k]) if tasks.camera_prefix else ""
        specs.append(TurnSpec(session.texts[k], prefix, src_mask=src, dst_mask=dst))
        hide.append(u_cur < tasks.drop_current_frame)
    plan_frames, steps = plan_session(specs, template=tasks.template)

    frames = [
        FrameRef("image", start + f.turn + 1) if f.role == "image" else FrameRef(f.role, start + f.turn)
        for f in plan_frames
    ]
    hidden = [False] * len(frames)
    image_frames = [i for i, fr in enumerate(frames) if fr.kind == "image"]
    for k, h in enumerate(hide):  # turn k's source image is image frame k of the stack
        hidden[image_frames[k]] = h

    targets = list(range(1, len(frames)))
    if max_targets and len(targets) > max_targets:
        targets = sorted(rng.sample(targets, max_targets))
    texts = ["" if drop_text else s.text for s in steps]
    stats = {
        "turns": n,
        "csp": sum(s.src_mask for s in specs),
        "nsp": sum(s.dst_mask for s in specs),
        "hidden": sum(hide),
    }
    return Composition(
        key=session.key,
        frames=frames,
        texts=texts,
        tasks=[s.task for s in steps],
        hidden=hidden,
        targets=targets,
        roe=use_roe and has_masks,
        text_dropped=drop_text,
        window=(start, n),
        stats=stats,
    )


def session_rng(seed: int, session) -> random.Random:
    """The composition RNG of one session draw: a function of the recipe seed and the session's stream
    position (epoch and index when it came from a SessionDataset), so a resumed run composes the same way."""
    pos = session.meta.get("position") if session.meta else None
    where = f"{pos['consumer']}/{pos['epoch']}/{pos['index']}" if pos else "-"
    return random.Random(f"compose/{seed}/{session.key}/{where}")
