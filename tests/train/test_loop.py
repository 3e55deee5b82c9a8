"""The tiny recipe end to end on synthetic shards: the loss falls, checkpoints load, --resume is exact,
and every failure mode ends with one clear message and the previous checkpoint intact."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from tests.train.helpers import tiny_overrides
from vincie_cli.train import loop as L
from vincie_cli.train.recipe import load_recipe
from vincie_cli.utils.io import BadInputError, UsageError, VincieError

STEPS = 40


def recipe(tiny_recipe, shards, *extra):
    return load_recipe(tiny_recipe, tiny_overrides(shards) + [f"train.max_steps={STEPS}", *extra])


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, shards):
    """One uninterrupted 40-step run (checkpoints at 20 and 40, keep_last 1)."""
    from tests.train.conftest import REPO_RECIPES

    out = tmp_path_factory.mktemp("run-a")
    events = []
    r = recipe(REPO_RECIPES / "tiny.yaml", shards, "train.checkpoint_every=20", "train.keep_last=1")
    state = L.train(r, out_dir=out, emit=events.append)
    return state, out, events


def test_loss_falls_clearly(run_a):
    state, _, _ = run_a
    losses = [h["loss"] for h in state.history]
    assert len(losses) == STEPS and all(h["finite"] for h in state.history)
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < 0.85 * first, (first, last)
    tasks = set().union(*(h["losses"] for h in state.history))
    assert {"nip", "csp", "nsp"} <= tasks  # every proxy task trained and logged


def test_events_and_checkpoint_folder(run_a, tiny_recipe, shards):
    from vincie_cli.model.pipeline import VincieModel
    from vincie_cli.model.weights import load_safetensors

    state, out, events = run_a
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [10, 20, 30, 40]
    for e in steps:
        assert e["type"] == "train_event" and e["tokens_per_s"] > 0 and 0 < e["lr"] <= 1e-3 and e["loss"] > 0
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [20, 40]
    done = events[-1]
    assert done["event"] == "done" and done["step"] == STEPS and done["checkpoint"].endswith("step-00000040")
    # keep_last 1: only the newest checkpoint remains, `latest` names it
    assert sorted(p.name for p in out.glob("step-*")) == ["step-00000040"]
    assert (out / "latest").read_text().strip() == "step-00000040"
    ck = out / "step-00000040"
    for f in ("model_config.json", "dit.safetensors", "dit_raw.safetensors", "vae.safetensors", "text_encoder",
              "trainer_state.safetensors", "trainer_state.json", "recipe.yaml", "meta.json"):  # fmt: skip
        assert (ck / f).exists(), f
    cfg = json.loads((ck / "model_config.json").read_text())
    assert cfg["layout"] == {"kind": "paper", "attention": "block_causal", "rope": "interleaved", "condition": "source"}
    r = load_recipe(ck / "recipe.yaml")
    assert cfg["sampling"] == {
        "steps": r.eval.steps, "shift": r.eval.shift, "guidance": r.eval.cfg_scale, "resolution": r.data.resolution
    }  # fmt: skip
    assert load_recipe(ck / "recipe.yaml") == recipe(
        tiny_recipe, shards, "train.checkpoint_every=20", "train.keep_last=1"
    )
    # the folder is a model: EMA weights are its default, the raw weights sit beside them
    model = VincieModel.from_pretrained(ck)
    ema = load_safetensors(ck / "dit.safetensors")
    raw = load_safetensors(ck / "dit_raw.safetensors")
    for k, p in model.dit.state_dict().items():
        assert torch.equal(p, ema[k]), k
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)
    for k, p in state.model.dit.state_dict().items():
        assert torch.equal(p.cpu(), raw[k]), k
    # the checkpoint's loss on the same data equals... its recorded step
    js = json.loads((ck / "trainer_state.json").read_text())
    assert js["step"] == STEPS and js["tokens"] == state.tokens and js["data"][0]["format"]


def test_resume_continues_exactly(run_a, tiny_recipe, shards, tmp_path, monkeypatch):
    """Interrupted at step 23 (Ctrl-C saves step 23), resumed: the same losses step for step."""
    state_a, _, _ = run_a
    r = recipe(tiny_recipe, shards, "train.checkpoint_every=20", "train.keep_last=1")
    real_step = L.train_step

    def interrupting(state):
        if state.step == 23:
            raise KeyboardInterrupt
        return real_step(state)

    monkeypatch.setattr(L, "train_step", interrupting)
    first = L.setup(r, out_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        L.fit(first)
    assert (tmp_path / "latest").read_text().strip() == "step-00000023"
    monkeypatch.setattr(L, "train_step", real_step)
    with pytest.raises(UsageError, match="--resume"):
        L.setup(r, out_dir=tmp_path)  # a folder with checkpoints needs --resume
    second = L.train(r, out_dir=tmp_path, resume=True)
    losses = [h["loss"] for h in first.history] + [h["loss"] for h in second.history]
    assert losses == [h["loss"] for h in state_a.history]
    a = state_a.model.dit.state_dict()
    for k, p in second.model.dit.state_dict().items():
        assert torch.equal(p, a[k]), k


def test_checkpoint_of_another_architecture(run_a, tiny_recipe, shards, tmp_path):
    import shutil

    _, out, _ = run_a
    shutil.copytree(out / "step-00000040", tmp_path / "step-00000040")
    (tmp_path / "latest").write_text("step-00000040\n")
    r = recipe(tiny_recipe, shards, "model.dit.num_layers=3")
    with pytest.raises(BadInputError, match=r"architecture.*dit\.num_layers 3 vs 2"):
        L.setup(r, out_dir=tmp_path, resume=True)
    r = recipe(tiny_recipe, shards, "model.dit.vid_dim=48", f"model.init={out / 'step-00000040'}")
    with pytest.raises(BadInputError, match=r"differs.*dit\.vid_dim 48 vs 32"):
        L.setup(r, out_dir=tmp_path / "other")


def test_missing_shards_and_sources(tiny_recipe, tmp_path):
    r = load_recipe(tiny_recipe, tiny_overrides(tmp_path / "nowhere"))
    with pytest.raises(BadInputError, match="nowhere: no such shard"):
        L.setup(r, out_dir=tmp_path / "run")
    r = load_recipe(tiny_recipe, ["data.sources=[]"])
    with pytest.raises(UsageError, match="data.sources"):
        L.setup(r, out_dir=tmp_path / "run")


def test_disk_full_keeps_the_previous_checkpoint(tiny_recipe, shards, tmp_path, monkeypatch):
    import vincie_cli.model.weights as W

    r = recipe(tiny_recipe, shards, "train.max_steps=4", "train.checkpoint_every=2")
    state = L.setup(r, out_dir=tmp_path)
    L.train_step(state)
    L.train_step(state)
    L.save_checkpoint(state)
    before = sorted(p.name for p in tmp_path.iterdir())
    L.train_step(state)
    real = W.save_state_dict
    calls = {"n": 0}

    def full_disk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(W, "save_state_dict", full_disk)
    with pytest.raises(VincieError, match=r"could not write checkpoint step-00000003 \(No space left on device\); "
                                          r"the previous checkpoint step-00000002 is intact"):  # fmt: skip
        L.save_checkpoint(state)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp folder left, latest untouched
    assert (tmp_path / "latest").read_text().strip() == "step-00000002"
    from vincie_cli.model.pipeline import VincieModel, folder_sha256

    VincieModel.from_pretrained(tmp_path / "step-00000002")
    # with space again, the next save works; the frozen autoencoder and text encoder files are hard links
    monkeypatch.setattr(W, "save_state_dict", real)
    new = L.save_checkpoint(state)
    state.lock.release()
    old = tmp_path / "step-00000002"
    for rel in [
        "vae.safetensors",
        *(p.relative_to(old).as_posix() for p in (old / "text_encoder").rglob("*") if p.is_file()),
    ]:
        assert (new / rel).stat().st_ino == (old / rel).stat().st_ino, rel
    meta = json.loads((new / "meta.json").read_text())
    assert meta["sha256"] == folder_sha256(new, verify=True)  # recorded hashes are right for linked files too
    VincieModel.from_pretrained(new)


def test_non_finite_steps_are_skipped_then_stop(tiny_recipe, shards, tmp_path, monkeypatch):
    real = L.make_inputs
    poison = {2, 3}

    def maybe_nan(state, batch, gen):
        packed = real(state, batch, gen)
        if state.step in poison:
            packed.target[0, 0] = float("nan")
        return packed

    monkeypatch.setattr(L, "make_inputs", maybe_nan)
    events = []
    r = recipe(tiny_recipe, shards, "train.max_steps=6", "train.checkpoint_every=100", "train.max_bad_steps=3")
    state = L.setup(r, out_dir=tmp_path / "a", emit=events.append)
    snapshots = []
    for _ in range(6):
        snapshots.append({k: p.detach().clone() for k, p in state.trainable.items()})
        L.train_step(state)
    state.lock.release()

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert state.bad_total == 2 and state.bad_run == 0
    assert [e["step"] for e in events if e.get("event") == "bad_step"] == [3, 4]
    # the poisoned steps (3rd and 4th) left the weights alone; the good ones moved them
    assert same(snapshots[2], snapshots[3]) and same(snapshots[3], snapshots[4])
    assert not same(snapshots[1], snapshots[2]) and not same(snapshots[4], snapshots[5])
    assert all(torch.isfinite(p).all() for p in state.trainable.values())
    poison.update(range(100))
    r = recipe(tiny_recipe, shards, "train.max_steps=10", "train.max_bad_steps=3")
    with pytest.raises(VincieError, match="3 non-finite steps in a row"):
        L.train(r, out_dir=tmp_path / "b")


def test_validation_sessions_are_edited_and_saved_as_a_grid(tiny_recipe, shards, tmp_path):
    from PIL import Image

    sets = ["train.max_steps=2", "eval.every=2", "eval.sessions=2", "eval.turns=2", "eval.steps=2",
            "eval.cfg_scale=2.0", f"data.val_sources=[{shards}]"]  # fmt: skip
    events = []
    L.train(recipe(tiny_recipe, shards, *sets), out_dir=tmp_path, emit=events.append)
    (val,) = [e for e in events if e["event"] == "validation"]
    assert val["step"] == 2 and val["sessions"] == 2
    assert set(val) >= {"psnr", "psnr_turn1", "psnr_turn2"} and 0 < val["psnr"] < 99
    grid = Image.open(val["path"])
    assert grid.size == (3 * 34, 4 * 34)  # 2 sessions x (truth, generated) rows, input + 2 turns


def test_loaded_checkpoint_knows_its_conditioning_layout(run_a):
    from vincie_cli.model.pipeline import VincieModel

    _, out, _ = run_a
    model = VincieModel.from_pretrained(out / "step-00000040")
    assert model.config.layout == {
        "kind": "paper", "attention": "block_causal", "rope": "interleaved", "condition": "source"
    }  # fmt: skip


@pytest.mark.parametrize(
    "sets",
    [
        ["model.layout=released", "tasks.context_loss_weight=0.1", "tasks.max_targets=2"],
        ["model.attention=full", "model.rope=text_then_image"],
        ["train.precision=bf16", "data.aspect=adaptive", "train.grad_accum=2"],
        ["model.condition=source", "model.prediction=x0_source", "flow.loss=x0"],
    ],
    ids=["released", "full-text_then_image", "bf16-adaptive-accum", "x0"],
)
def test_training_options_run(tiny_recipe, shards, tmp_path, sets):
    state = L.train(
        recipe(tiny_recipe, shards, "train.max_steps=3", "train.checkpoint_every=3", *sets), out_dir=tmp_path
    )
    assert len(state.history) == 3 and all(h["finite"] for h in state.history)
    if "model.layout=released" in sets:
        assert "context" in state.history[0]["losses"]
    if "flow.loss=x0" in sets:  # recorded, so `vincie edit` converts the output the same way
        ckpt = tmp_path / (tmp_path / "latest").read_text().strip()
        cfg = json.loads((ckpt / "model_config.json").read_text())
        assert cfg["layout"]["prediction"] == "x0_source"


def test_activation_checkpointing_gives_the_same_losses(tiny_recipe, shards, tmp_path):
    runs = []
    for i, flag in enumerate(("false", "true")):
        r = recipe(tiny_recipe, shards, "train.max_steps=3", f"model.gradient_checkpointing={flag}")
        runs.append([h["loss"] for h in L.train(r, out_dir=tmp_path / str(i)).history])
    assert runs[0] == runs[1]


def test_x0_source_training_starts_from_the_linear_guess(tiny_recipe, shards, tmp_path):
    """A from-scratch x0_source model starts with a zero output projection (its prediction is the linear guess)."""
    r = recipe(tiny_recipe, shards, "model.condition=source", "model.prediction=x0_source", "flow.loss=x0")
    state = L.setup(r, out_dir=tmp_path)
    state.lock.release()
    assert torch.count_nonzero(state.dit.vid_out.proj.weight) == 0
    assert torch.count_nonzero(state.dit.vid_out.proj.bias) == 0
    assert torch.count_nonzero(state.dit.blocks[0].attn.proj_qkv.vid.weight) > 0


def test_training_timesteps_follow_the_recipe(tiny_recipe, shards, tmp_path):
    from vincie_cli.flow.schedule import training_timesteps

    sets = ["flow.timestep_dist=uniform", "flow.timestep_shift=3.0", "train.max_steps=1"]
    state = L.setup(recipe(tiny_recipe, shards, *sets), tmp_path)
    batch = state.batcher.next_batch()
    packed = L.make_inputs(state, batch, torch.Generator().manual_seed(5))
    n = sum(len(p.comp.targets) for p in batch)
    want = training_timesteps(n, torch.Generator().manual_seed(5), "uniform", shift=3.0)
    got = packed.row_timesteps()[packed.loss_rows].unique()
    torch.testing.assert_close(got.sort().values, want.unique().sort().values)
    with pytest.raises(UsageError, match=r"flow\.timestep_shift: expected > 0"):
        recipe(tiny_recipe, shards, "flow.timestep_shift=0")
    with pytest.raises(UsageError, match=r"flow\.timestep_dist: expected one of"):
        recipe(tiny_recipe, shards, "flow.timestep_dist=beta")
    with pytest.raises(UsageError, match=r"flow\.timestep_grid_steps: expected >= 1"):
        recipe(tiny_recipe, shards, "flow.timestep_grid_steps=0")
    # "grid": every target at a point of the sampler's grid (2 steps, shift 3: t = 1000 or 750)
    state = L.setup(recipe(tiny_recipe, shards, "flow.timestep_dist=grid", *sets[1:]), tmp_path / "grid")
    packed = L.make_inputs(state, state.batcher.next_batch(), torch.Generator().manual_seed(5))
    assert set(packed.row_timesteps()[packed.loss_rows].unique().tolist()) <= {750.0, 1000.0}


def state_and_batch(tiny_recipe, shards, out, *sets):
    """A set-up loop (lock released) and its first batch, which has a session with two or more images."""
    state = L.setup(recipe(tiny_recipe, shards, "model.condition=source", "train.max_steps=1", *sets), out)
    state.lock.release()
    batch = state.batcher.next_batch()
    assert any(sum(q.comp.tasks[j - 1] == "nip" for j in q.comp.targets) >= 2 for q in batch)
    return state, batch


def test_degrade_context_reaches_the_packed_inputs_and_leaves_targets_clean(tiny_recipe, shards, tmp_path):
    """tasks.degrade_context: the same batch and generator seed pack the same loss targets, but the inputs
    differ (later images seen drifted); with 0 the inputs are those of a recipe without the setting."""
    packs = {}
    for p in ("0.0", "1.0"):
        state, batch = state_and_batch(tiny_recipe, shards, tmp_path / p, f"tasks.degrade_context={p}")
        packs[p] = L.make_inputs(state, batch, torch.Generator().manual_seed(3))
    off, on = packs["0.0"], packs["1.0"]
    assert off.vid.shape == on.vid.shape and not torch.equal(off.vid, on.vid)
    torch.testing.assert_close(off.target, on.target)  # eps - x0 of the clean latents (the same noise)
    # tasks.degrade_erase blanks a rectangle on top of the same fade: other inputs, the same targets
    sets = ("tasks.degrade_context=1.0", "tasks.degrade_erase=0.5")
    state, batch = state_and_batch(tiny_recipe, shards, tmp_path / "erase", *sets)
    erased = L.make_inputs(state, batch, torch.Generator().manual_seed(3))
    assert not torch.equal(erased.vid, on.vid)
    torch.testing.assert_close(erased.target, on.target)


def test_self_context_shows_later_targets_the_models_own_outputs(tiny_recipe, shards, tmp_path):
    """tasks.self_context: a model whose velocity is exact at t = 1000 returns the clean frames, so the pack
    equals the one without the setting (the rows and the x0 conversion line up); a model that outputs zeros
    returns pure noise there, which later targets then see, while the loss targets stay clean."""
    state, batch = state_and_batch(tiny_recipe, shards, tmp_path / "off")
    off = L.make_inputs(state, batch, torch.Generator().manual_seed(3))
    state, batch = state_and_batch(tiny_recipe, shards, tmp_path / "on", "tasks.self_context=1.0")
    calls = []

    def exact(packed):
        calls.append(packed)
        out = torch.zeros(packed.vid.shape[0], packed.target.shape[1])
        out[packed.loss_rows] = packed.target  # eps - x0: the true velocity
        return out

    state.trainer = exact
    same = L.make_inputs(state, batch, torch.Generator().manual_seed(3))
    assert len(calls) == 1 and set(calls[0].row_timesteps()[calls[0].loss_rows].tolist()) == {1000.0}
    torch.testing.assert_close(same.vid, off.vid, atol=1e-5, rtol=0)
    state.trainer = lambda packed: torch.zeros(packed.vid.shape[0], packed.target.shape[1])
    noise = L.make_inputs(state, batch, torch.Generator().manual_seed(3))
    assert noise.vid.shape == off.vid.shape and (noise.vid - off.vid).abs().max() > 0.5
    torch.testing.assert_close(noise.target, off.target)


def test_loss_norm_l1_measures_the_absolute_clean_latent_error(tiny_recipe, shards, tmp_path):
    """flow.loss_norm=l1: each target row's loss is its mean absolute velocity error times max(t/T, X0_T_MIN)
    (flow.loss=x0: the absolute clean-latent error; l2 squares both); the loop passes the option on and a bad
    value is named."""
    from vincie_cli.flow.loss import token_l1, token_mse
    from vincie_cli.model.layouts import X0_T_MIN

    sets = ["model.condition=source", "model.prediction=x0_source", "flow.loss=x0", "train.max_steps=1"]
    state = L.setup(recipe(tiny_recipe, shards, *sets, "flow.loss_norm=l1"), tmp_path)
    assert state.recipe.flow.loss_norm == "l1"
    packed = L.make_inputs(state, state.batcher.next_batch(), torch.Generator().manual_seed(3))
    out = torch.randn(packed.vid.shape[0], packed.target.shape[1], generator=torch.Generator().manual_seed(0))
    s = (packed.row_timesteps()[packed.loss_rows] / 1000.0).clamp(min=X0_T_MIN)
    pred = out[packed.loss_rows]
    _, g1, present = L.target_loss(out, packed, "x0", row_weights=False, norm="l1")
    _, g2, _ = L.target_loss(out, packed, "x0", row_weights=False)
    for g in range(len(present)):
        rows = packed.groups == g
        if present[g]:
            l1 = token_l1(pred[rows], packed.target[rows]) * s[rows]
            l2 = token_mse(pred[rows], packed.target[rows]) * s[rows] ** 2
            assert float(g1[g]) == pytest.approx(float(l1.mean()), rel=1e-5)
            assert float(g2[g]) == pytest.approx(float(l2.mean()), rel=1e-5)
    assert float(g1[0]) != pytest.approx(float(g2[0]), rel=1e-3)
    with pytest.raises(VincieError, match="flow.loss_norm"):
        L.target_loss(out, packed, "x0", norm="huber")
    state.lock.release()
    # the loop trains with it: one step each way from the same seed, finite and different
    a, b = (
        L.train(recipe(tiny_recipe, shards, *sets, f"flow.loss_norm={n}"), out_dir=tmp_path / n).history[0]
        for n in ("l1", "l2")
    )
    assert a["finite"] and b["finite"] and a["loss"] != pytest.approx(b["loss"], rel=1e-3)
    with pytest.raises(UsageError, match="flow.loss_norm: expected one of 'l2', 'l1', got 'huber'"):
        recipe(tiny_recipe, shards, "flow.loss_norm=huber")


def test_changed_share_weights_the_loss_toward_what_the_edit_changed(tiny_recipe, shards, tmp_path):
    """flow.changed_share: the image targets' per-position losses are weighted by the packed row weights (mean
    1 per target); `target_loss(..., row_weights=False)` gives the plain loss of the same batch."""
    from vincie_cli.flow.loss import token_mse

    sets = ["model.condition=source", "flow.changed_share=0.75", "train.max_steps=2"]
    state = L.setup(recipe(tiny_recipe, shards, *sets), tmp_path)
    batch = state.batcher.next_batch()
    packed = L.make_inputs(state, batch, torch.Generator().manual_seed(3))
    state.lock.release()
    assert packed.row_weights is not None and packed.row_changed is not None
    assert packed.row_changed.any() and float(packed.row_weights.max()) > 1.0
    out = torch.randn(packed.vid.shape[0], packed.target.shape[1], generator=torch.Generator().manual_seed(0))
    per = token_mse(out[packed.loss_rows], packed.target)
    weighted, groups, _ = L.target_loss(out, packed)
    plain, plain_groups, _ = L.target_loss(out, packed, row_weights=False)
    nip = packed.groups == 0
    assert float(groups[0]) == pytest.approx(float((per * packed.row_weights)[nip].mean()), rel=1e-5)
    assert float(plain_groups[0]) == pytest.approx(float(per[nip].mean()), rel=1e-5)
    assert float(weighted) != pytest.approx(float(plain), rel=1e-4)
    # off by default (the positions are still marked, for diagnostics); the share is checked
    off = L.setup(recipe(tiny_recipe, shards, "train.max_steps=2"), tmp_path / "off")
    p_off = L.make_inputs(off, batch, torch.Generator().manual_seed(3))
    off.lock.release()
    assert p_off.row_weights is None and p_off.row_changed is not None
    with pytest.raises(UsageError, match=r"flow\.changed_share: expected in \[0, 1\)"):
        recipe(tiny_recipe, shards, "flow.changed_share=1.0")


def test_changed_against_seen_marks_what_degraded_sources_lost(tiny_recipe, shards, tmp_path):
    """flow.changed_against: seen marks, besides each edit, what a degraded source lost (here every later
    image is blanked in one rectangle): a superset of the marks against the clean source; a bad value is named."""
    base = ["model.condition=source", "flow.changed_share=0.5", "train.max_steps=2", "tasks.degrade_context=1.0",
            "tasks.degrade_erase=0.5", "tasks.degrade_noise=0.0", "tasks.degrade_fade=0.0"]  # fmt: skip
    marks, batch = {}, None
    for against in ("source", "seen"):
        state = L.setup(recipe(tiny_recipe, shards, *base, f"flow.changed_against={against}"), tmp_path / against)
        batch = batch or state.batcher.next_batch()  # the same sessions both ways
        marks[against] = L.make_inputs(state, batch, torch.Generator().manual_seed(3)).row_changed
        state.lock.release()
    src, seen = marks["source"], marks["seen"]
    assert src is not None and seen is not None and src.shape == seen.shape
    assert bool((seen | src).eq(seen).all())  # every edit mark stays
    assert int(seen.sum()) > int(src.sum())  # and the blanked positions are added
    with pytest.raises(UsageError, match=r"flow\.changed_against: expected one of 'source', 'seen', got 'clean'"):
        recipe(tiny_recipe, shards, "flow.changed_against=clean")


def test_degrade_erase_at_kept_moves_the_blank_and_needs_erase(tiny_recipe, shards, tmp_path):
    """tasks.degrade_erase_at reaches the layouts: "kept" draws the rectangles elsewhere than "anywhere" with
    the same seed, changes nothing when no rectangle is erased; a bad value is named."""
    base = ["model.condition=source", "train.max_steps=2", "tasks.degrade_context=1.0", "tasks.degrade_noise=0.0",
            "tasks.degrade_fade=0.0"]  # fmt: skip
    vids, batch = {}, None
    for erase in ("0.5", "0.0"):
        for at in ("anywhere", "kept"):
            extra = [f"tasks.degrade_erase={erase}", f"tasks.degrade_erase_at={at}"]
            state = L.setup(recipe(tiny_recipe, shards, *base, *extra), tmp_path / f"{erase}-{at}")
            batch = batch or state.batcher.next_batch()  # the same sessions every way
            vids[erase, at] = L.make_inputs(state, batch, torch.Generator().manual_seed(3)).vid
            state.lock.release()
    assert not torch.equal(vids["0.5", "anywhere"], vids["0.5", "kept"])
    assert torch.equal(vids["0.0", "anywhere"], vids["0.0", "kept"])
    with pytest.raises(UsageError, match=r"tasks\.degrade_erase_at: expected one of 'anywhere', 'kept', got 'object'"):
        recipe(tiny_recipe, shards, "tasks.degrade_erase_at=object")


def test_source_sigma_is_recorded_and_a_new_sigma_keeps_the_prediction_at_t_max(tiny_recipe, shards, tmp_path):
    from vincie_cli.model.layouts import LayoutSpec
    from vincie_cli.model.pipeline import VincieModel

    x0s = ["model.prediction=x0_source", "flow.loss=x0", "train.max_steps=2", "train.checkpoint_every=2"]
    L.train(recipe(tiny_recipe, shards, *x0s), out_dir=tmp_path / "a")
    a = tmp_path / "a" / (tmp_path / "a" / "latest").read_text().strip()
    assert "source_sigma" not in json.loads((a / "model_config.json").read_text())["layout"]  # the default, 0.1
    before = VincieModel.from_pretrained(a).dit.vid_out.proj.weight.detach().clone()
    state = L.setup(recipe(tiny_recipe, shards, *x0s, f"model.init={a}", "model.source_sigma=0.4"), tmp_path / "b")
    torch.testing.assert_close(state.dit.vid_out.proj.weight.detach(), before * 0.25)  # 0.1 * w = 0.4 * (w / 4)
    packed = L.make_inputs(state, state.batcher.next_batch(), torch.Generator().manual_seed(0), timestep=1000.0)
    assert packed.source_sigma == 0.4
    state.lock.release()
    L.train(recipe(tiny_recipe, shards, *x0s, f"model.init={a}", "model.source_sigma=0.4"), out_dir=tmp_path / "c")
    c = tmp_path / "c" / (tmp_path / "c" / "latest").read_text().strip()
    layout = json.loads((c / "model_config.json").read_text())["layout"]
    assert layout["source_sigma"] == 0.4 and LayoutSpec.of(layout).source_sigma == 0.4
    with pytest.raises(UsageError, match=r"model\.source_sigma: expected > 0"):
        recipe(tiny_recipe, shards, "model.source_sigma=0")


def test_cpu_bf16_support_is_read_from_the_cpu_flags(tmp_path):
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    zen4 = tmp_path / "zen4"
    zen4.write_text("flags\t\t: avx2 avx512f avx512_bf16\n")
    assert L.cpu_has_native_bf16(avx2) is False
    assert L.cpu_has_native_bf16(amx) is True
    assert L.cpu_has_native_bf16(zen4) is True
    assert L.cpu_has_native_bf16(tmp_path / "missing") is None


@pytest.mark.parametrize("native", [False, True, None])
def test_bf16_on_a_cpu_without_it_warns(tiny_recipe, shards, tmp_path, monkeypatch, native):
    said: list[str] = []
    monkeypatch.setattr(L, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(L.log, "warning", lambda msg, *a: said.append(msg % a if a else msg))
    monkeypatch.setattr(L.torch.cuda, "is_available", lambda: False)
    L._accelerator(recipe(tiny_recipe, shards, "train.precision=bf16"), tmp_path)
    warned = [m for m in said if "train.precision bf16" in m]
    assert len(warned) == (1 if native is False else 0)
    if warned:
        assert "train.precision=fp32" in warned[0]
    said.clear()
    L._accelerator(recipe(tiny_recipe, shards, "train.precision=fp32"), tmp_path)
    assert not [m for m in said if "train.precision bf16" in m]
