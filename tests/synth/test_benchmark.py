import json

import numpy as np
import pytest

from vincie_cli.records import ROE_RULES
from vincie_cli.synth.benchmark import (
    BENCH_KINDS,
    HELDOUT_SEEDS,
    TRAIN_SEEDS,
    check_train_seeds,
    load_benchmark,
    make_benchmark,
    make_session,
    save_benchmark,
    split_seed,
)
from vincie_cli.synth.oracle import diff_states, summarize
from vincie_cli.synth.render import render_state
from vincie_cli.synth.scorer import TurnJudge, aggregate, by_kind, score_session
from vincie_cli.synth.world import PALETTE
from vincie_cli.utils.io import BadInputError, UsageError


@pytest.fixture(scope="module")
def bench64():
    return make_benchmark(8, 64)


def test_seed_split():
    assert TRAIN_SEEDS.stop == HELDOUT_SEEDS.start == 1_000_000
    assert split_seed("train", 5) == 5 and split_seed("heldout", 5) == 1_000_005
    check_train_seeds([0, 999_999])
    with pytest.raises(UsageError, match="held-out"):
        check_train_seeds([3, 1_000_000])
    with pytest.raises(UsageError, match="outside the train split"):
        split_seed("train", 1_000_000)


def test_sessions_are_deterministic_and_well_formed(bench64):
    again = make_benchmark(2, 64)
    for a, b in zip(bench64, again):
        assert a.instructions == b.instructions and a.seed == b.seed
        np.testing.assert_array_equal(a.turns[-1].image, b.turns[-1].image)
    kinds = set()
    for s in bench64:
        assert s.seed in HELDOUT_SEEDS and s.size == (64, 64) and len(s.turns) == 5
        prev = s.start_state
        np.testing.assert_array_equal(s.start_image, render_state(prev, (64, 64)))
        for k, t in enumerate(s.turns):
            kinds.add(t.kind)
            assert t.kind in BENCH_KINDS and t.roe.rule in ROE_RULES
            changes = diff_states(prev, t.state, (64, 64))
            assert len(changes) == 1  # one change per turn
            # the instruction is the oracle's summary_change for the turn (same phrasing family)
            assert t.instruction == summarize(changes, seed=f"bench:{s.seed}:{k}")
            np.testing.assert_array_equal(t.image, render_state(t.state, (64, 64)))
            if t.kind == "background":
                assert t.roe.rule == "global"
            else:
                assert t.roe.rule == "entities" and (t.roe.src.any() or t.roe.dst.any())
            prev = t.state
    assert len(kinds) >= 6


@pytest.mark.parametrize("size", [64, 256])
def test_exact_frames_score_100_and_doing_nothing_scores_0(bench64, size):
    sessions = bench64 if size == 64 else make_benchmark(2, 256, seed_offset=100)
    exact = [
        score_session(s, [t.image for t in s.turns], masks=[(t.roe.src, t.roe.dst) for t in s.turns]) for s in sessions
    ]
    table = aggregate(exact)
    assert [r["success_rate"] for r in table] == [1.0] * 5
    assert all(r["psnr"] == 100.0 and r["ssim"] == pytest.approx(1.0) for r in table)
    assert all(r["iou_dst"] == 1.0 and r["iou_src"] == 1.0 for r in table)
    assert all(r["edited_right"] == 1.0 and r["kept_intact"] == 1.0 for r in table)
    nothing = [score_session(s, [s.start_image] * 5) for s in sessions]
    assert all(r["success_rate"] == 0.0 and r["turn_success_rate"] == 0.0 for r in aggregate(nothing))
    # object by object at turn 1: nothing the instruction changes is right, everything it keeps is intact
    first = aggregate(nothing)[0]
    assert first["edited_right"] == 0.0 and first["kept_intact"] == 1.0, first
    # each turn alone: the model returns its input unchanged -> that turn fails
    judge = TurnJudge(sessions[0].size)
    for s in sessions:
        prev_state, prev_img = s.start_state, s.start_image
        for t in s.turns:
            change = {"kind": t.kind, "objects": list(t.objects)}
            assert not judge.turn(prev_state, t.state, change, prev_img, prev_img, t.image)[0], (s.id, t.instruction)
            prev_state, prev_img = t.state, t.image


def test_by_kind_separates_the_edit_from_its_side_effects(bench64):
    exact = [score_session(s, [t.image for t in s.turns]) for s in bench64]
    rows = by_kind(exact)
    assert sum(r["turns"] for r in rows.values()) == sum(len(s.turns) for s in bench64)
    assert set(rows) == {t.kind for s in bench64 for t in s.turns} and len(rows) >= 5
    for r in rows.values():
        assert (r["success_rate"], r["edit_ok_rate"], r["unexpected_rate"]) == (1.0, 1.0, 0.0)
        assert r["kept_intact"] in (1.0, None)
    # every turn returns its (right) input unchanged: no edit is right
    nothing = by_kind([score_session(s, [s.start_image] + [t.image for t in s.turns[:-1]]) for s in bench64])
    assert all(r["success_rate"] == 0.0 and r["edit_ok_rate"] == 0.0 for r in nothing.values())
    # the right edit with a stray blob of a colour no object has: edit right, turn failed, counted as unexpected
    s = next(s for s in bench64 if s.turns[0].kind not in ("background",) and not s.turns[0].kind.startswith("camera"))
    used = {o.colour for o in s.turns[0].state.objects} | {o.colour for o in s.start_state.objects}
    colour = next(c for c in PALETTE if c not in used)
    img = np.array(s.turns[0].image)
    img[2:12, 2:12] = PALETTE[colour]
    sc = score_session(s, [img] + [t.image for t in s.turns[1:]])
    t1 = sc.turns[0]
    assert not t1.success and t1.edit_ok and t1.extra == [colour]
    r = by_kind([sc])[t1.kind]
    assert r["unexpected_rate"] > 0 and r["success_rate"] < 1.0 and r["edit_ok_rate"] == 1.0
    assert not score_session(s, [s.start_image] * 5).turns[0].edit_ok
    assert score_session(s, [None] * 5).turns[0].edit_ok is False  # no image


def test_exact_inputs_judge_each_turn_against_the_exact_frame_before_it(bench64):
    """Images made from the exact earlier frames (--true-history): turn k's kept objects are judged against the
    exact frame k-1, not against the results' turn k-1 image."""
    for s in bench64[:10]:
        frames = [s.start_image] + [t.image for t in s.turns]
        sc = score_session(s, frames[1:], exact_inputs=True)
        assert all(t.success for t in sc.turns)
        # each turn returns the frame it was given: nothing edited, everything kept intact
        copied = score_session(s, frames[:-1], exact_inputs=True)
        for t in copied.turns:
            assert all(d.ok for d in t.objects if d.role == "kept"), (s.id, t.turn, t.reason)
            assert not t.success
        # a wrong turn 1 does not move the reference of turn 2
        wrong = score_session(s, [s.start_image] + frames[2:], exact_inputs=True)
        assert not wrong.turns[0].success and all(t.success for t in wrong.turns[1:])
        missing = score_session(s, [None] + frames[2:], exact_inputs=True)
        assert not missing.turns[0].success and all(t.success for t in missing.turns[1:])
    # judged against the results' own earlier images instead, copying the frame before fails kept objects
    # wherever an earlier turn moved or added one
    own = [score_session(s, [s.start_image] + [t.image for t in s.turns[:-1]]) for s in bench64]
    kept = [d.ok for sc in own for t in sc.turns[1:] for d in t.objects if d.role == "kept"]
    assert not all(kept)


def test_cumulative_counting_and_missing_images(bench64):
    s = bench64[0]
    images = [t.image for t in s.turns]
    images[1] = images[0]  # turn 2 not done
    sc = score_session(s, images)
    assert [t.counted for t in sc.turns] == [True, False, False, False, False]
    assert sc.turns[0].success and not sc.turns[1].success and sc.successful_turns == 1
    assert sc.turns[1].reason  # says why
    short = score_session(s, [t.image for t in s.turns[:2]])
    assert [t.counted for t in short.turns] == [True, True, False, False, False]
    assert short.turns[2].reason == "no image"
    table = aggregate([sc, short])
    assert table[0]["success_rate"] == 1.0 and table[1]["success_rate"] == 0.5 and table[2]["success_rate"] == 0.0
    # a wrong change (another turn's result) fails
    swapped = [t.image for t in s.turns]
    swapped[0] = s.turns[1].image
    assert not score_session(s, swapped).turns[0].success
    json.dumps(sc.to_dict())  # JSON-ready


def test_produced_images_are_resized_and_accepted_as_pil(bench64):
    from PIL import Image

    s = bench64[1]
    images = [Image.fromarray(t.image).resize((128, 128), Image.NEAREST) for t in s.turns]
    sc = score_session(s, images)
    assert sc.successful_turns == 5


def test_save_and_load_roundtrip(tmp_path, bench64):
    folder = save_benchmark(bench64[:3], tmp_path / "bench")
    assert (folder / "benchmark.json").is_file() and (folder / "sessions.jsonl").is_file()
    lines = (folder / "sessions.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["type"] == "synth_session"
    loaded = load_benchmark(folder)
    for a, b in zip(bench64[:3], loaded):
        assert a.id == b.id and a.instructions == b.instructions and a.start_state == b.start_state
        np.testing.assert_array_equal(a.start_image, b.start_image)
        for ta, tb in zip(a.turns, b.turns):
            assert ta.state == tb.state and ta.roe.rule == tb.roe.rule and ta.roe.entities == tb.roe.entities
            np.testing.assert_array_equal(ta.image, tb.image)
            if ta.roe.src is not None:
                np.testing.assert_array_equal(ta.roe.src, tb.roe.src)
                np.testing.assert_array_equal(ta.roe.dst, tb.roe.dst)
    assert score_session(loaded[0], [t.image for t in loaded[0].turns]).successful_turns == 5
    with pytest.raises(BadInputError, match="not a synthetic benchmark folder"):
        load_benchmark(tmp_path)
    (folder / "sessions.jsonl").write_text('{"type": "synth_session", "id": "x"}\n')
    with pytest.raises(BadInputError, match="sessions.jsonl:1: malformed session"):
        load_benchmark(folder)


def test_make_session_respects_kinds():
    s = make_session(1_000_123, 64, turns=3, kinds=("move", "recolour"))
    assert {t.kind for t in s.turns} <= {"move", "recolour"}
