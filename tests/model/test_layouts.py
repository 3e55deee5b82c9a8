"""Conditioning layouts: attention-mask correctness, train/inference consistency, the released path's parity."""

from __future__ import annotations

import pytest
import torch

from vincie_cli.model.conditioning import ReleasedDenoiser, build_condition
from vincie_cli.model.dit import assemble_session_text, build_dit
from vincie_cli.model.layouts import (
    CLEAN,
    NOISY,
    TEXT,
    ContextDegrade,
    LayoutSpec,
    dense_mask,
    kept_content,
    make_denoiser,
    pack_samples,
    run_dit,
    source_frame,
    step_positions,
    training_samples,
)
from vincie_cli.model.presets import get_preset
from vincie_cli.utils.io import BadInputError

C, H, W, F = 16, 4, 4, 5
TASKS = ["nip", "csp", "nip", "nsp"]
WEIGHTS = {"nip": 1.0, "csp": 1.0, "nsp": 1.0}


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    d = build_dit(get_preset("tiny").dit)
    d.attention = "fp32"
    return d.eval()


def session(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lat = [torch.randn(H, W, C, generator=g) for _ in range(F)]
    states = [torch.randn(3 + s, 32, generator=g) for s in range(F - 1)]
    return lat, states


def predict(dit, spec, lat, states, hidden=None, backend="dense", times=None):
    """Velocity of every target frame 1..F-1, (F-1, H*W, C)."""
    hidden = hidden or [False] * F
    times = times or {1: 100.0, 2: 300.0, 3: 500.0, 4: 900.0}
    g = torch.Generator().manual_seed(1)
    lens = [s.shape[0] + 1 for s in states]
    samples = training_samples(spec, lat, hidden, [1, 2, 3, 4], TASKS, lens, times, g, (2, 2), WEIGHTS)
    p = pack_samples(samples, [states], [0] * len(samples), spec, "cpu", backend)
    with torch.no_grad():
        out = run_dit(dit, p)
    return out[p.loss_rows].reshape(F - 1, H * W, C), p


PAPER = [LayoutSpec("paper", a, r) for a in ("full", "block_causal") for r in ("interleaved", "text_then_image")]
PAPER += [LayoutSpec("paper", a, "interleaved", "source") for a in ("full", "block_causal")]
PAPER += [LayoutSpec("paper", "block_causal", "interleaved", "source", p) for p in ("x0", "x0_source")]
PAPER += [LayoutSpec("paper", "block_causal", "interleaved", "source", "x0_source", source_sigma=0.5)]
IS_IMAGE = [True] + [t == "nip" for t in TASKS]


@pytest.mark.parametrize(
    "spec", PAPER, ids=lambda s: f"{s.attention}-{s.rope}-{s.condition}-{s.prediction}-{s.source_sigma}"
)
def test_later_images_and_texts_never_reach_earlier_targets(dit, spec):
    lat, states = session()
    hidden = [False, False, True, False, False]  # frame 2 hidden: its clean tokens are left out
    base, _ = predict(dit, spec, lat, states, hidden)
    for frame, step in ((3, 2), (4, 3), (2, 1)):
        lat2 = [z.clone() for z in lat]
        st2 = [s.clone() for s in states]
        lat2[frame] += 1.0
        st2[step] += 1.0
        got, _ = predict(dit, spec, lat2, st2, hidden)
        diff = (got - base).abs().amax(dim=(1, 2))
        # target j sees clean frames < j and steps < j only (and its own frame through x_t): targets
        # j < frame with j <= step are unchanged, bit for bit ...
        n = min(frame - 1, step)
        assert torch.all(diff[:n] == 0), (frame, step, diff)
        # ... and every later target does change (so the check can fail)
        assert diff[n:].min() > 1e-4, (frame, step, diff)


def test_hidden_frame_is_invisible(dit):
    spec = LayoutSpec("paper", "block_causal", "interleaved")
    lat, states = session()
    hidden = [False, True, False, False, False]
    base, _ = predict(dit, spec, lat, states, hidden)
    lat2 = [z.clone() for z in lat]
    lat2[1] += 3.0  # frame 1 is hidden as context, but still a target (its own x0 changes its own x_t)
    got, _ = predict(dit, spec, lat2, states, hidden)
    diff = (got - base).abs().amax(dim=(1, 2))
    assert diff[0] > 1e-3 and torch.all(diff[1:] == 0)


def test_block_causal_rule():
    roles = torch.tensor([CLEAN, CLEAN, TEXT, TEXT, NOISY, NOISY])
    index = torch.tensor([0, 1, 0, 1, 1, 2])
    m = dense_mask(roles, index)
    expect = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],  # clean 0: itself
            [1, 1, 1, 0, 0, 0],  # clean 1: clean <= 1, step 0
            [1, 0, 1, 0, 0, 0],  # step 0: clean 0, step 0
            [1, 1, 1, 1, 0, 0],  # step 1: clean <= 1, steps <= 1
            [1, 0, 1, 0, 1, 0],  # noisy 1: clean 0, step 0, itself
            [1, 1, 1, 1, 0, 1],  # noisy 2: clean < 2, steps < 2, itself
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, expect)


def test_flex_attention_equals_dense_masks(dit):
    spec = LayoutSpec("paper", "block_causal", "interleaved")
    lat, states = session(3)
    dense, p1 = predict(dit, spec, lat, states)
    flex, p2 = predict(dit, spec, lat, states, backend="flex")
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
    assert p1.attended_pairs == p2.attended_pairs > 0


def test_interleaved_positions_of_a_prefix_do_not_depend_on_what_follows():
    lens = [5, 3, 7, 2]
    frames, texts = step_positions(lens, 5, "interleaved")
    pf, pt = step_positions(lens[:2], 3, "interleaved")
    assert frames[:3] == pf and all(torch.equal(a, b) for a, b in zip(texts[:2], pt))
    assert frames == [0.0, 6.0, 10.0, 18.0, 21.0]
    frames, texts = step_positions(lens, 5, "text_then_image")
    assert frames == [17.0 + f for f in range(5)] and texts[1].tolist() == [5.0, 6.0, 7.0]


@pytest.mark.parametrize(
    "spec",
    [*PAPER, LayoutSpec("released")],
    ids=lambda s: (
        s.kind if s.kind == "released" else f"{s.attention}-{s.rope}-{s.condition}-{s.prediction}-{s.source_sigma}"
    ),  # noqa: E501
)
def test_inference_denoiser_predicts_what_training_trained(dit, spec):
    """For target j, `make_denoiser` (the path `vincie edit` uses) gives the velocity the training forward gave."""
    lat, states = session(5)
    times = {1: 250.0, 2: 400.0, 3: 600.0, 4: 800.0}
    train_out, _ = predict(dit, spec, lat, states, times=times)
    lens = [s.shape[0] + 1 for s in states]
    g = torch.Generator().manual_seed(1)
    samples = training_samples(spec, lat, [False] * F, [1, 2, 3, 4], TASKS, lens, times, g, (2, 2), WEIGHTS)
    # block-causal + text-then-image places frames at L + f with L = every step's text in training, which
    # inference (steps < j) cannot know: equal only for the last target (docs/training.md: prefer interleaved)
    mismatch = spec.attention == "block_causal" and spec.rope == "text_then_image" and spec.kind == "paper"
    for j in (1, 3, 4):
        den = make_denoiser(dit, spec, lat[:j], states[:j], source=source_frame(j, IS_IMAGE, [False] * F))
        if spec.kind == "released":
            x_t = samples[j - 1].vid[:, :C]  # every frame noised at t, as in training
        elif spec.attention == "full":
            x_t = samples[j - 1].vid[-H * W :, :C]
        else:
            x_t = samples[0].vid[(F - 1 + j - 1) * H * W : (F - 1 + j) * H * W, :C]  # clean 0..3, then targets
        assert tuple(x_t.shape) == den.state_shape
        with torch.no_grad():
            v = den(x_t, torch.tensor(times[j]), ("pos",))[0]
        if mismatch and j < 4:
            assert not torch.allclose(den.target(v).reshape(-1, C), train_out[j - 1], atol=1e-3)
            continue
        torch.testing.assert_close(den.target(v).reshape(-1, C), train_out[j - 1], atol=2e-5, rtol=1e-4)


def test_released_layout_matches_the_released_denoiser(dit):
    """Our released-layout inference equals model/conditioning.py's ReleasedDenoiser (the parity path)."""
    lat, states = session(7)
    ctx = torch.stack(lat[:2])
    neg = [torch.randn(4, 32)]
    table = dit.prompt_id_embedding.embedding.weight
    txt_pos, pos_shape = assemble_session_text([states[:2]], table)
    txt_neg, neg_shape = assemble_session_text([neg], table)
    ref = ReleasedDenoiser(
        dit, build_condition(ctx).reshape(-1, C + 1), torch.tensor([[3, H, W]]), txt_pos, pos_shape, txt_neg, neg_shape
    )
    ours = make_denoiser(dit, LayoutSpec("released"), list(lat[:2]), states[:2], neg)
    x = torch.randn(3 * H * W, C)
    t = torch.tensor(640.0)
    with torch.no_grad():
        a = ref(x, t, ("pos", "neg"))
        b = ours(x, t, ("pos", "neg"))
        c = ours(x, t, ("neg",))
    for u, v in zip(a, b):
        torch.testing.assert_close(v, u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c[0], a[1], atol=1e-5, rtol=1e-5)


def test_denoiser_checks_its_inputs(dit):
    from vincie_cli.utils.io import BadInputError

    lat, states = session()
    with pytest.raises(BadInputError, match="2 context frames need 2 text steps"):
        make_denoiser(dit, LayoutSpec("paper", "full", "interleaved"), lat[:2], states[:1])
    with pytest.raises(BadInputError, match="channels"):
        make_denoiser(dit, LayoutSpec("released"), [torch.randn(H, W, 8)], states[:1])
    with pytest.raises(BadInputError, match="layout kind"):
        LayoutSpec.of({"kind": "sideways"})


@pytest.mark.parametrize("attention", ["full", "block_causal"])
def test_source_condition_puts_the_edited_image_in_the_target_channels(attention):
    """condition="source": target j carries the latest visible image before it (masks skipped), else zeros."""
    lat, states = session(2)
    lens = [s.shape[0] + 1 for s in states]
    hidden = [False, True, False, False, False]  # frame 1 (an image) dropped from the context
    times = {j: 500.0 for j in (1, 2, 3, 4)}
    samples = training_samples(
        LayoutSpec("paper", attention, "interleaved", "source"), lat, hidden, [1, 2, 3, 4], TASKS, lens, times,
        torch.Generator().manual_seed(0), (2, 2), WEIGHTS,
    )  # fmt: skip
    # frames: 0 image, 1 image (hidden), 2 mask, 3 image, 4 mask -> sources 0, 0, 0, 3
    expected = {1: 0, 2: 0, 3: 0, 4: 3}
    assert [source_frame(j, IS_IMAGE, hidden) for j in (1, 2, 3, 4)] == [0, 0, 0, 3]
    for j, src in expected.items():
        if attention == "full":
            rows = samples[j - 1].vid[-H * W :]
        else:
            clean = sum(not hidden[f] for f in range(4))
            rows = samples[0].vid[(clean + j - 1) * H * W : (clean + j) * H * W]
        torch.testing.assert_close(rows[:, C : 2 * C], lat[src].reshape(-1, C))
        assert torch.all(rows[:, 2 * C] == 0)  # still marked as a target, not a clean frame
    plain = training_samples(
        LayoutSpec("paper", attention, "interleaved"), lat, hidden, [1, 2, 3, 4], TASKS, lens, times,
        torch.Generator().manual_seed(0), (2, 2), WEIGHTS,
    )  # fmt: skip
    assert torch.all(plain[-1].vid[-H * W :, C:] == 0)


@pytest.mark.parametrize("attention", ["full", "block_causal"])
def test_degraded_context_shows_later_images_drifted_and_keeps_clean_targets(attention):
    """ContextDegrade: every image after the first reaches later targets faded and noised (context copy and
    source channels alike); the first image, the mask frames and every loss target stay clean."""
    lat, states = session(4)
    lens = [s.shape[0] + 1 for s in states]
    hidden = [False] * F
    times = {j: 500.0 for j in (1, 2, 3, 4)}
    spec = LayoutSpec("paper", attention, "interleaved", "source")

    def build(degrade):
        return training_samples(
            spec, lat, hidden, [1, 2, 3, 4], TASKS, lens, times, torch.Generator().manual_seed(0), (2, 2),
            WEIGHTS, degrade=degrade,
        )  # fmt: skip

    plain, off, on = build(None), build(ContextDegrade(prob=0.0)), build(ContextDegrade(1.0, noise=0.5, fade=0.5))
    for a, b in zip(plain, off):  # probability 0 draws nothing: the same samples as without
        assert torch.equal(a.vid, b.vid)
    for a, b in zip(plain, on):  # every loss target is the clean latent
        assert all(torch.equal(x[3], y[3]) for x, y in zip(a.loss, b.loss))
    frames = {0: lat[0], 1: lat[1], 2: lat[2], 3: lat[3]}  # frame 4 is a mask target, never context

    def context_rows(samples, f):  # clean frame f as the last target (frame 4) sees it
        return (samples[-1] if attention == "full" else samples[0]).vid[f * H * W : (f + 1) * H * W, :C]

    for f, z in frames.items():
        got = context_rows(on, f)
        if f in (0, 2):  # the first image and a mask frame: untouched
            torch.testing.assert_close(got, z.reshape(-1, C))
        else:  # images 1 and 3: z + a (mean - z) + n eps
            assert (got - z.reshape(-1, C)).abs().max() > 1e-3
    # target 4 (a mask) is edited from image 3: its source channels carry the same degraded frame
    rows = on[-1].vid[-H * W :] if attention == "full" else on[0].vid[(4 + 3) * H * W : (4 + 4) * H * W]
    torch.testing.assert_close(rows[:, C : 2 * C], context_rows(on, 3))
    # target 1's source is the first image: clean
    rows1 = on[0].vid[-H * W :] if attention == "full" else on[0].vid[4 * H * W : 5 * H * W]
    torch.testing.assert_close(rows1[:, C : 2 * C], lat[0].reshape(-1, C))


def test_context_degrade_erase_blanks_one_rectangle_to_the_frame_mean():
    z = torch.randn(8, 8, 3, generator=torch.Generator().manual_seed(0)) + 2.0
    mean = z.mean(dim=(0, 1))
    sizes = set()
    for seed in range(40):
        out = ContextDegrade(1.0, noise=0.0, fade=0.0, erase=0.5).apply(z, torch.Generator().manual_seed(seed))
        blank = (out - mean).abs().amax(-1) < 1e-6
        rows, cols = blank.any(1).nonzero().flatten(), blank.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert 1 <= h <= 4 and 1 <= w <= 4  # sides up to half the frame's
        assert blank.sum() == h * w and bool(blank[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all())
        torch.testing.assert_close(out[~blank], z[~blank])  # the rest is the frame (no fade, no noise)
        sizes.add((h, w))
    assert len(sizes) > 4  # the sides are drawn, not fixed
    # the rectangle is drawn after the fade and the noise: outside it, the same frame as without erase
    plain = ContextDegrade(1.0, 0.2, 0.3).apply(z, torch.Generator().manual_seed(3))
    erased = ContextDegrade(1.0, 0.2, 0.3, erase=0.5).apply(z, torch.Generator().manual_seed(3))
    same = (plain - erased).abs().amax(-1) < 1e-6
    assert 1 <= int((~same).sum()) <= 16
    torch.testing.assert_close(erased[same], plain[same])


def test_kept_content_points_at_what_the_first_image_holds_at_the_same_place():
    first = torch.zeros(8, 8, 3)
    first[1:3, 5:7] = 1.0  # an object in the first image
    z = first.clone()
    z[6, 1] = 1.0  # a new object, not in the first image
    w = kept_content(z, first, 0.01)
    assert w.shape == (8, 8)
    assert set(map(tuple, w.nonzero().tolist())) == {(1, 5), (1, 6), (2, 5), (2, 6)}
    torch.testing.assert_close(w[1:3, 5:7], torch.ones(2, 2))  # how far from the background (the median)
    moved = torch.roll(first, 3, dims=1)  # the object moved: nothing the first image holds at the same place
    assert not kept_content(moved, first, 0.01).any()


def test_context_degrade_erase_kept_blanks_over_the_kept_content():
    first = torch.zeros(16, 16, 3)
    first[2:5, 10:13] = 1.0
    z = first.clone()
    z[12:14, 2:4] = 1.0  # new in this frame: the context cannot give it back
    where = kept_content(z, first, 0.01)
    mean = z.mean(dim=(0, 1))
    for seed in range(30):
        out = ContextDegrade(1.0, 0.0, 0.0, 0.25, "kept").apply(z, torch.Generator().manual_seed(seed), where)
        blank = (out - mean).abs().amax(-1) < 1e-6
        assert blank[2:5, 10:13].any() and not blank[12:14, 2:4].any()
        assert int(blank.sum()) <= 16  # sides up to a quarter of the frame's
    # no kept content (all-zero weights) or no weights: the rectangle goes anywhere, with the old draws
    anywhere = ContextDegrade(1.0, 0.0, 0.0, 0.25)
    for w in (None, torch.zeros(16, 16)):
        out = anywhere.apply(z, torch.Generator().manual_seed(4), w)
        torch.testing.assert_close(out, anywhere.apply(z, torch.Generator().manual_seed(4)))


def test_training_samples_erase_kept_hides_content_the_first_image_holds():
    """degrade.erase_at "kept": the rectangle blanked in a context image is over content the session's first
    image holds at the same place (measured on the clean frames), so the context can give it back."""
    lat, states = session(4)
    lat[0] = torch.zeros(H, W, C)
    lat[0][0, 0] = 2.0  # the first image's one object
    lat[1] = lat[0].clone()
    lat[1][H - 1, W - 1] = 2.0  # image 1 adds another
    lens = [s.shape[0] + 1 for s in states]
    times = {j: 500.0 for j in (1, 2, 3, 4)}
    spec = LayoutSpec("paper", "block_causal", "interleaved", "source")
    for seed in range(10):
        degrade = ContextDegrade(1.0, 0.0, 0.0, 0.25, "kept")
        s = training_samples(
            spec, lat, [False] * F, [1, 2, 3, 4], TASKS, lens, times, torch.Generator().manual_seed(0), (2, 2),
            WEIGHTS, changed_threshold=0.01, degrade=degrade, degrade_generator=torch.Generator().manual_seed(seed),
        )[0]  # fmt: skip
        shown = s.vid[1 * H * W : 2 * H * W, :C].reshape(H, W, C)  # image 1 as later targets see it
        mean = lat[1].mean(dim=(0, 1))
        assert torch.allclose(shown[0, 0], mean)  # the kept object is blanked
        torch.testing.assert_close(shown[H - 1, W - 1], lat[1][H - 1, W - 1])  # the new one is not


@pytest.mark.parametrize("attention", ["full", "block_causal"])
def test_seen_frames_replace_what_later_targets_see_and_keep_clean_targets(attention):
    """seen_frames (tasks.self_context): later targets see the given frame in its context copy and source
    channels; the other frames and every loss target stay as they are; a wrong shape is refused."""
    lat, states = session(5)
    lens = [s.shape[0] + 1 for s in states]
    hidden = [False] * F
    times = {j: 1000.0 for j in (1, 2, 3, 4)}
    spec = LayoutSpec("paper", attention, "interleaved", "source")
    mine = torch.full_like(lat[3], 0.25)

    def build(seen):
        return training_samples(
            spec, lat, hidden, [1, 2, 3, 4], TASKS, lens, times, torch.Generator().manual_seed(0), (2, 2),
            WEIGHTS, seen_frames=seen,
        )  # fmt: skip

    plain, on = build(None), build({3: mine})
    for a, b in zip(plain, on):
        assert all(torch.equal(x[3], y[3]) and torch.equal(x[4], y[4]) for x, y in zip(a.loss, b.loss))
    last = on[-1] if attention == "full" else on[0]
    plain_last = plain[-1] if attention == "full" else plain[0]
    torch.testing.assert_close(last.vid[3 * H * W : 4 * H * W, :C], mine.reshape(-1, C))  # the context copy
    torch.testing.assert_close(last.vid[: 3 * H * W], plain_last.vid[: 3 * H * W])  # frames 0-2 untouched
    rows = last.vid[-H * W :] if attention == "full" else last.vid[(4 + 3) * H * W : (4 + 4) * H * W]
    torch.testing.assert_close(rows[:, C : 2 * C], mine.reshape(-1, C))  # target 4's source channels
    with pytest.raises(BadInputError, match=r"seen_frames\[3\]: shape"):
        build({3: mine[:2]})


def test_context_degrade_fades_toward_the_mean_and_adds_noise():
    z = torch.randn(4, 4, 3, generator=torch.Generator().manual_seed(0)) + 2.0
    faded = ContextDegrade(1.0, noise=0.0, fade=1.0).apply(z, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    torch.rand((), generator=g)  # whether to degrade
    frac = float(torch.rand(2, generator=g)[0])  # the fade drawn for this frame, in [0, 1)
    mean = z.mean(dim=(0, 1), keepdim=True)
    torch.testing.assert_close(faded, z + frac * (mean - z), atol=1e-5, rtol=0)
    assert torch.equal(ContextDegrade(0.0).apply(z, torch.Generator()), z)
    noisy = ContextDegrade(1.0, noise=1.0, fade=0.0).apply(z, torch.Generator().manual_seed(1))
    assert 0 < (noisy - z).std() < 1.0 and torch.allclose(noisy.mean(), z.mean(), atol=0.5)


@pytest.mark.parametrize("attention", ["full", "block_causal"])
def test_changed_positions_are_marked_against_the_source_and_weighted(attention):
    """changed_threshold marks, per image target, the positions that differ from the image it is edited
    from (masks get no marks); pack_samples turns the marks into per-row weights with mean 1 per target."""
    lat, states = session(3)
    lat[3] = lat[0].clone()
    lat[3][1, 2] += 1.0  # image 3 is image 0 with one position changed (its source: frame 0, 1 is hidden)
    lens = [s.shape[0] + 1 for s in states]
    hidden = [False, True, False, False, False]
    times = {j: 500.0 for j in (1, 2, 3, 4)}
    spec = LayoutSpec("paper", attention, "interleaved", "source")

    def build(threshold, share):
        samples = training_samples(
            spec, lat, hidden, [1, 2, 3, 4], TASKS, lens, times, torch.Generator().manual_seed(0), (2, 2), WEIGHTS,
            changed_threshold=threshold,
        )  # fmt: skip
        return samples, pack_samples(samples, [states], [0] * len(samples), spec, "cpu", changed_share=share)

    samples, p = build(0.01, 0.5)
    marks = [e[5] for s in samples for e in s.loss]  # targets 1..4 in order
    expect3 = torch.zeros(H * W, dtype=torch.bool)
    expect3[1 * W + 2] = True
    assert marks[1] is None and marks[3] is None  # the mask targets
    assert marks[0] is not None and marks[0].all()  # frame 1: random, every position differs from frame 0
    assert marks[2] is not None and torch.equal(marks[2], expect3)
    assert p.row_changed is not None and p.row_weights is not None
    assert torch.equal(p.row_changed, torch.cat([marks[0], torch.zeros(H * W, dtype=torch.bool), expect3,
                                                 torch.zeros(H * W, dtype=torch.bool)]))  # fmt: skip
    # frame 1 changed everywhere and the masks: weight 1; frame 3: half its loss on its one changed position
    w = p.row_weights.reshape(4, H * W)
    assert torch.all(w[[0, 1, 3]] == 1)
    assert float(w[2, 1 * W + 2]) == pytest.approx(0.5 * H * W)
    assert float(w[2, 0]) == pytest.approx(0.5 * H * W / (H * W - 1))
    assert float(w[2].mean()) == pytest.approx(1.0)
    # with share 0 the marks stay (diagnostics) but nothing is weighted; without a threshold nothing is marked
    _, p0 = build(0.01, 0.0)
    assert p0.row_weights is None and torch.equal(p0.row_changed, p.row_changed)
    _, pn = build(None, 0.5)
    assert pn.row_changed is None and pn.row_weights is None


@pytest.mark.parametrize("attention", ["full", "block_causal"])
def test_changed_against_seen_marks_what_a_shown_source_lost(attention):
    """changed_against_seen (flow.changed_against: seen): a target's changed positions are measured against its
    source as the target is shown it, so a position that was spoiled in the shown source and is back in the
    target is marked; against the clean source (the default) only the edit is."""
    lat, states = session(3)
    lat[1] = lat[0].clone()  # image 1 is image 0 unchanged (frames 2 and 4 are masks)
    lat[3] = lat[1].clone()
    lat[3][0, 1] += 1.0  # image 3: image 1 with one position edited
    lens = [s.shape[0] + 1 for s in states]
    hidden = [False] * F
    times = {j: 500.0 for j in (1, 2, 3, 4)}
    spec = LayoutSpec("paper", attention, "interleaved", "source")
    shown = lat[1].clone()
    shown[1, 1] = shown.mean(dim=(0, 1)) + 1.0  # what target 3 is shown of its source: one position spoiled

    def marks(against_seen):
        samples = training_samples(
            spec, lat, hidden, [1, 2, 3, 4], TASKS, lens, times, torch.Generator().manual_seed(0), (2, 2), WEIGHTS,
            changed_threshold=0.01, seen_frames={1: shown}, changed_against_seen=against_seen,
        )  # fmt: skip
        return [e[5] for s in samples for e in s.loss]

    edit = torch.zeros(H * W, dtype=torch.bool)
    edit[0 * W + 1] = True
    spoiled = torch.zeros(H * W, dtype=torch.bool)
    spoiled[1 * W + 1] = True
    clean, seen = marks(False), marks(True)
    assert torch.equal(clean[2], edit)  # the clean source: the edit only
    assert torch.equal(seen[2], edit | spoiled)  # the shown source: the spoiled position is to be put back too
    assert not clean[0].any() and not seen[0].any()  # target 1 sees frame 0 clean: nothing changed either way
    assert clean[1] is None and seen[3] is None  # mask targets are never marked


def test_x0_prediction_turns_the_network_output_into_a_velocity(dit):
    """prediction="x0": run_dit returns (x_t - out) / max(t/T, X0_T_MIN) for every row, so a network that
    outputs the true clean latent has zero velocity loss, and the spec round-trips through model_config."""
    from vincie_cli.model.layouts import X0_T_MIN, velocity_from_x0

    spec = LayoutSpec("paper", "block_causal", "interleaved", "source", "x0")
    assert LayoutSpec.of(spec.to_dict()) == spec and spec.to_dict()["prediction"] == "x0"
    assert "prediction" not in LayoutSpec("paper").to_dict()
    lat, states = session(3)
    times = {1: 10.0, 2: 300.0, 3: 500.0, 4: 900.0}
    v_x0, p = predict(dit, spec, lat, states, times=times)
    raw, _ = predict(dit, LayoutSpec("paper", "block_causal", "interleaved", "source"), lat, states, times=times)
    x_t = p.vid[p.loss_rows, :C].reshape(F - 1, H * W, C)
    row_t = p.row_timesteps()
    assert row_t.shape == (p.vid.shape[0],) and torch.equal(
        row_t[p.loss_rows].unique(), torch.tensor(list(times.values()))
    )
    assert torch.all(row_t[: 4 * H * W] == 0)  # the clean context frames 0..3
    for k, t in enumerate(times.values()):
        torch.testing.assert_close(v_x0[k], (x_t[k] - raw[k]) / max(t / 1000, X0_T_MIN))
    # the true x0 gives the true velocity eps - x0 (t >= X0_T_MIN * T)
    x0, eps = torch.randn(6, C), torch.randn(6, C)
    t = torch.full((6,), 700.0)
    x_t = 0.3 * x0 + 0.7 * eps
    torch.testing.assert_close(velocity_from_x0(x_t, x0, t), eps - x0)
    with pytest.raises(BadInputError, match="prediction"):
        LayoutSpec("paper", prediction="eps")
    with pytest.raises(BadInputError, match="released layout"):
        LayoutSpec("released", prediction="x0")
    with pytest.raises(BadInputError, match='needs condition "source"'):
        LayoutSpec("paper", prediction="x0_source")


def test_x0_source_prediction_starts_from_the_linear_guess():
    """prediction="x0_source": an output of 0 is the posterior mean under x0 ~ N(src, sigma^2): x_t at t = 0,
    the source at t = T, and in between the exact linear estimate; the output moves x0_hat by the posterior std."""
    from vincie_cli.model.layouts import SOURCE_SIGMA, output_velocity, x0_from_source

    g = torch.Generator().manual_seed(0)
    src = torch.randn(5, C, generator=g)
    x_t = torch.randn(5, C, generator=g)
    zero, one = torch.zeros(5, C), torch.ones(5, C)
    torch.testing.assert_close(x0_from_source(x_t, src, zero, torch.zeros(5)), x_t)
    torch.testing.assert_close(x0_from_source(x_t, src, one, torch.full((5,), 1000.0)), src + SOURCE_SIGMA)
    # t = T/2: x_t = x0/2 + eps/2, prior var s2 -> mean = src + (s2/2)/(s2/4 + 1/4) (x_t - src/2)
    s2 = SOURCE_SIGMA**2
    expected = src + (s2 / 2) / (s2 / 4 + 0.25) * (x_t - src / 2)
    torch.testing.assert_close(x0_from_source(x_t, src, zero, torch.full((5,), 500.0)), expected)
    # statistically: with x0 = src + sigma*n the zero output is the least-squares estimate (beats x_t and src)
    n = 20000
    src = torch.randn(n, 1, generator=g)
    x0 = src + SOURCE_SIGMA * torch.randn(n, 1, generator=g)
    x_t = 0.4 * x0 + 0.6 * torch.randn(n, 1, generator=g)
    t = torch.full((n,), 600.0)
    guess = x0_from_source(x_t, src, torch.zeros(n, 1), t)
    err = ((guess - x0) ** 2).mean()
    assert err < ((src - x0) ** 2).mean() and err < ((x_t / 0.4 - x0) ** 2).mean()
    # the velocity goes through the same rows layout as training: [x_t | src | flag]
    vid = torch.cat([x_t, src, torch.zeros(n, 1)], dim=1)
    torch.testing.assert_close(output_velocity("x0_source", vid, torch.zeros(n, 1), t), (x_t - guess) / 0.6)
    assert output_velocity("velocity", vid, x_t, t) is x_t


def test_source_sigma_scales_the_correction_and_is_recorded():
    from vincie_cli.model.layouts import output_velocity, x0_from_source

    g = torch.Generator().manual_seed(1)
    src, x_t, out = (torch.randn(4, C, generator=g) for _ in range(3))
    T = torch.full((4,), 1000.0)
    torch.testing.assert_close(x0_from_source(x_t, src, out, T, sigma=0.5), src + 0.5 * out)
    # t = T/2 with sigma 0.5: mean = src + (0.25/2)/(0.25/4 + 1/4) (x_t - src/2), std = 0.5*0.5/sqrt(0.3125)
    half = torch.full((4,), 500.0)
    mean = src + (0.125 / 0.3125) * (x_t - src / 2)
    torch.testing.assert_close(x0_from_source(x_t, src, out, half, sigma=0.5), mean + 0.25 / 0.3125**0.5 * out)
    vid = torch.cat([x_t, src, torch.zeros(4, 1)], dim=1)
    v = output_velocity("x0_source", vid, out, half, 0.5)
    torch.testing.assert_close(v, (x_t - x0_from_source(x_t, src, out, half, sigma=0.5)) / 0.5)
    # recorded only where it differs from the default, so earlier model_config.json files are unchanged
    spec = LayoutSpec("paper", condition="source", prediction="x0_source", source_sigma=0.3)
    assert spec.to_dict()["source_sigma"] == 0.3 and LayoutSpec.of(spec.to_dict()) == spec
    assert "source_sigma" not in LayoutSpec("paper", condition="source", prediction="x0_source").to_dict()
    with pytest.raises(BadInputError, match="source_sigma must be > 0"):
        LayoutSpec("paper", condition="source", prediction="x0_source", source_sigma=0.0)
