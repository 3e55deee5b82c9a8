"""Context composition: the plan matches `plan_session` (what edit uses), and the statistics match the recipe."""

from __future__ import annotations

import math
import random

import numpy as np

from vincie_cli.prompts import TurnSpec, plan_session
from vincie_cli.records import camera_tag
from vincie_cli.sessions.session import Session
from vincie_cli.train.composition import compose, session_rng
from vincie_cli.train.recipe import TasksSection


def fake_session(turns: int = 4, masks: bool = True, key: str = "k") -> Session:
    m = np.zeros((8, 8), bool)
    return Session(
        key=key,
        frames=[np.full((8, 8, 3), i, np.uint8) for i in range(turns + 1)],
        texts=[f"edit number {k}." for k in range(turns)],
        cameras=["pan-left"] * turns,
        src_masks=[m if masks else None] * turns,
        dst_masks=[m if masks else None] * turns,
        roe_rules=["entities"] * turns,
        meta={},
    )


def within(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


def test_statistics_match_the_recipe():
    tasks = TasksSection(
        roe_prob=0.6, drop_current_frame=0.25, drop_current_mask=0.7, drop_next_mask=0.4, text_dropout=0.15
    )
    s = fake_session(turns=4)
    rng = random.Random(0)
    n_sessions, roe, text_drop, turns, src, dst, hidden = 3000, 0, 0, 0, 0, 0, 0
    for _ in range(n_sessions):
        c = compose(s, tasks, rng, max_turns=4)
        roe += c.roe
        text_drop += c.text_dropped
        turns += c.window[1]
        if c.roe:
            src += c.stats["csp"]
            dst += c.stats["nsp"]
        hidden += c.stats["hidden"]
        assert c.targets == list(range(1, c.num_frames))  # the image or mask to generate is always there
        assert c.tasks.count("csp") == c.stats["csp"] and c.tasks.count("nsp") == c.stats["nsp"]
        if not c.roe:
            assert c.stats["csp"] == c.stats["nsp"] == 0
    roe_turns = turns * roe / n_sessions
    assert within(roe, n_sessions, 0.6)
    assert within(text_drop, n_sessions, 0.15)
    assert within(hidden, turns, 0.25)
    assert within(src, int(roe_turns), 0.3)
    assert within(dst, int(roe_turns), 0.6)


def test_sessions_without_masks_never_get_segmentation_steps():
    tasks = TasksSection(roe_prob=1.0, drop_current_mask=0.0, drop_next_mask=0.0)
    c = compose(fake_session(masks=False), tasks, random.Random(1), max_turns=4)
    assert set(c.tasks) == {"nip"} and not c.roe and [f.kind for f in c.frames] == ["image"] * 5


def test_plan_is_plan_session_and_hidden_frames_are_source_images():
    tasks = TasksSection(
        roe_prob=1.0, drop_current_frame=0.5, drop_current_mask=0.5, drop_next_mask=0.5, text_dropout=0.0
    )
    s = fake_session(turns=5)
    for seed in range(40):
        c = compose(s, tasks, random.Random(seed), max_turns=3)
        start, n = c.window
        assert n == 3 and 0 <= start <= 2
        specs = []
        for k in range(start, start + n):
            kinds = [f.kind for f in c.frames if f.index == k and f.kind != "image"]
            specs.append(TurnSpec(s.texts[k], camera_tag("pan-left"), "mask_src" in kinds, "mask_dst" in kinds))
        frames, steps = plan_session(specs)
        assert c.texts == [st.text for st in steps] and c.tasks == [st.task for st in steps]
        assert [f.role for f in frames] == [f.kind for f in c.frames]
        images = [f.index for f in c.frames if f.kind == "image"]
        assert images == list(range(start, start + n + 1))
        for i, h in enumerate(c.hidden):
            if h:  # only the source image of a turn (never the last image) is hidden
                assert c.frames[i].kind == "image" and c.frames[i].index < start + n
        assert "[###CAMERA: pan-left###]" in c.texts[-1] and c.texts[-1].endswith(f"Output <IMG{c.num_frames - 1}>: ")


def test_text_dropout_empties_every_step_and_rng_follows_the_stream_position():
    tasks = TasksSection(text_dropout=1.0)
    c = compose(fake_session(), tasks, random.Random(0), max_turns=4)
    assert c.texts and all(t == "" for t in c.texts)
    s = fake_session()
    s.meta = {"position": {"consumer": 0, "epoch": 2, "index": 5}}
    a = compose(s, TasksSection(), session_rng(7, s), 4)
    b = compose(s, TasksSection(), session_rng(7, s), 4)
    assert a.texts == b.texts and a.hidden == b.hidden and a.frames == b.frames
    first = session_rng(7, s).random()
    assert first != session_rng(8, s).random()  # another seed
    s.meta = {"position": {"consumer": 0, "epoch": 3, "index": 5}}
    assert first != session_rng(7, s).random()  # the next epoch composes the session anew
