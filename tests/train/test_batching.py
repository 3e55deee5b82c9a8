"""Preprocessing, token-budget packing, aspect-ratio buckets, and the latent cache."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.train.helpers import synth_session, tiny_overrides
from vincie_cli.model.layouts import LayoutSpec, pack_samples, training_samples
from vincie_cli.train import loop as L
from vincie_cli.train.batching import Preparer, TokenBatcher, bucket_of
from vincie_cli.train.recipe import load_recipe
from vincie_cli.utils.io import UsageError, VincieError

SPECS = [
    LayoutSpec("released"),
    LayoutSpec("paper", "full", "interleaved"),
    LayoutSpec("paper", "block_causal", "interleaved"),
]


def preparer(tiny_recipe, spec, *sets):
    r = load_recipe(tiny_recipe, ["tasks.drop_current_frame=0.5", *sets])
    return Preparer(r, spec, lambda t: len(t.encode()) // 4 + 1, factor=8, patch=(2, 2))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind + "-" + s.attention)
def test_token_count_is_what_the_layout_packs(tiny_recipe, spec):
    prep = preparer(tiny_recipe, spec)
    for seed in range(4):
        p = prep.prepare(synth_session(seed))
        h, w = p.latent_hw
        assert (h, w) == (4, 4) and all(x.shape == (3, 32, 32) for x in p.pixels)
        lat = [torch.zeros(h, w, 16) for _ in p.pixels]
        states = [torch.zeros(n - 1, 32) for n in p.step_lens]
        times = {j: 500.0 for j in p.comp.targets}
        g = torch.Generator().manual_seed(0)
        samples = training_samples(spec, lat, p.comp.hidden, p.comp.targets, p.comp.tasks, p.step_lens, times, g,
                                   (2, 2), {})  # fmt: skip
        packed = pack_samples(samples, [states], [0] * len(samples), spec, "cpu")
        real = sum(s.num_tokens for s in samples)
        assert p.tokens == real > 0
        assert packed.num_tokens in (real, real + 2)  # + the 2-token single-sample pad of the paper layout


def test_masks_are_white_on_black_images(tiny_recipe):
    prep = preparer(tiny_recipe, SPECS[2], "tasks.roe_prob=1.0", "tasks.drop_current_mask=0.0")
    s = synth_session(1)
    p = prep.prepare(s)
    for ref, x in zip(p.comp.frames, p.pixels):
        if ref.kind == "mask_src":
            m = torch.from_numpy(s.src_masks[ref.index])
            assert torch.allclose(x[0][m], torch.ones(()), atol=0.05) and torch.allclose(
                x[:, ~m], -torch.ones(()), atol=0.05
            )
            return
    pytest.fail("no mask frame was composed")


def test_budget_order_and_resume_position(tiny_recipe):
    prep = preparer(tiny_recipe, SPECS[2])
    source = L.ListSource([synth_session(i) for i in range(5)])
    sizes = [prep.prepare(s).tokens for s in source.sessions]
    budget = max(sizes[:3]) + 10
    b = TokenBatcher(iter(source), prep, budget, source.state_dict)
    seen = 0
    for _ in range(6):
        batch = b.next_batch()
        assert sum(p.tokens for p in batch) <= budget
        seen += len(batch)
        # the position to resume from is the first session not yet handed out
        assert b.resume_state()["position"] == seen
        for p in batch:
            assert p.session.meta["position"]["index"] == (seen - len(batch) + batch.index(p)) % 5


def test_a_session_over_budget_is_cut_to_fewer_turns(tiny_recipe):
    prep = preparer(tiny_recipe, SPECS[0], "data.max_turns=3")
    s = synth_session(2)
    full = prep.prepare(s)
    b = TokenBatcher(iter([s]), prep, budget=full.tokens - 1)
    (p,) = b.next_batch()
    assert p.comp.window[1] < 3 and p.tokens <= full.tokens - 1


def test_adaptive_aspect_buckets(tiny_recipe):
    assert bucket_of(24, 48, ["1:1", "16:9", "9:16"]) == "16:9" and bucket_of(50, 48, ["1:1", "16:9"]) == "1:1"
    prep = preparer(
        tiny_recipe, SPECS[2], "data.aspect=adaptive", "data.aspect_buckets=['1:1', '16:9']", "data.resolution=48"
    )
    s = synth_session(3)
    s.frames = [np.ascontiguousarray(np.concatenate([f, f], axis=1)) for f in s.frames]  # 32 x 64: 2:1
    s.src_masks = [np.concatenate([m, m], axis=1) for m in s.src_masks]
    s.dst_masks = [np.concatenate([m, m], axis=1) for m in s.dst_masks]
    p = prep.prepare(s)
    assert {tuple(x.shape) for x in p.pixels} == {(3, 32, 64)}  # the 16:9 bucket at area 48², multiples of 16


@pytest.fixture
def cached_shards(tmp_path, shards):
    """Two saved tiny models and a copy of the shards with a float32 latent cache made by model A."""
    from vincie_cli.model.presets import build_model
    from vincie_cli.sessions.cache import CacheOptions, build_cache

    a, b = tmp_path / "model-a", tmp_path / "model-b"
    build_model("tiny", seed=0).save_pretrained(a)
    build_model("tiny", seed=1).save_pretrained(b)
    sh = tmp_path / "shards"
    shutil.copytree(shards, sh)
    list(build_cache(sh, CacheOptions(model=str(a), resolution=32, dtype="float32")))
    return sh, a, b


def test_latent_cache_is_used_and_equals_encoding(tiny_recipe, cached_shards, tmp_path):
    sh, a, _ = cached_shards
    r = load_recipe(tiny_recipe, tiny_overrides(sh, **{"model.init": a, "data.use_cache": "true"}))
    state = L.setup(r, out_dir=tmp_path / "run")
    state.lock.release()
    batch = state.batcher.next_batch()
    assert batch and all(p.latents is not None and p.pixels is None for p in batch)
    for p in batch[:2]:
        pixels = state.preparer._pixels(p.session, p.comp)
        with torch.no_grad():
            z = state.model.vae.encode(torch.stack(pixels))
        torch.testing.assert_close(torch.stack(p.latents), z, atol=1e-5, rtol=1e-5)


def test_cache_of_another_model_or_resolution_is_refused(tiny_recipe, cached_shards, tmp_path):
    sh, a, b = cached_shards
    r = load_recipe(tiny_recipe, tiny_overrides(sh, **{"model.init": b, "data.use_cache": "true"}))
    with pytest.raises(VincieError, match="stale cache: it was computed by another model"):
        L.setup(r, out_dir=tmp_path / "run-b")
    r = load_recipe(
        tiny_recipe, tiny_overrides(sh, **{"model.init": a, "data.use_cache": "true", "data.resolution": 64})
    )
    state = L.setup(r, out_dir=tmp_path / "run-a")
    state.lock.release()
    with pytest.raises(UsageError, match=r"made at 32 px.*data.resolution=64"):
        state.batcher.next_batch()
    r = load_recipe(tiny_recipe, tiny_overrides(sh, **{"data.use_cache": "true"}))
    with pytest.raises(UsageError, match="data.use_cache needs model.init"):
        L.setup(r, out_dir=tmp_path / "run-c")
