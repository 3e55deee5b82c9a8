"""Editing sessions end to end on a tiny random-weight model: outputs and metadata, determinism, resume and
branch equivalence, context window, chain-of-editing, mask and drag control, composition, speed options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.edit.conftest import make_image
from vincie_cli.edit import session as session_mod
from vincie_cli.edit.control import binarize, drag_mask
from vincie_cli.edit.models import load_model
from vincie_cli.edit.session import EditSession, read_session, replay
from vincie_cli.edit.settings import Drag, TurnControl
from vincie_cli.model.images import load_image, to_tensor
from vincie_cli.prompts import composition_text, dst_mask_text, edit_text, input_label_text, src_mask_text
from vincie_cli.utils.io import BadInputError, UsageError, sha256_file

PROMPTS = ["add a red hat", "make it snow", "turn the sky purple"]


def _shas(out, n):
    return [sha256_file(out / f"turn{k}.png") for k in range(1, n + 1)]


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_outputs_and_session_record(model, settings, image, tmp_path):
    out = tmp_path / "s"
    sess = EditSession.create(model, [image], out, settings)
    seen = []
    recs = sess.run(PROMPTS[:2], on_turn=seen.append)
    assert [r["turn"] for r in recs] == [1, 2] and seen == recs
    for k in (1, 2):
        img = Image.open(out / f"turn{k}.png")
        assert img.size == (64, 48) and img.mode == "RGB"
    record = read_session(out / "session.json")
    assert record["model"] == model.identity() and record["frame_size"] == [64, 48]
    assert record["inputs"][0]["sha256"] == sha256_file(image) and (out / record["inputs"][0]["path"]).is_file()
    t1, t2 = record["turns"]
    assert t1["texts"] == [edit_text(0, 1, PROMPTS[0])]
    assert t2["texts"] == [edit_text(0, 1, PROMPTS[0]), edit_text(1, 2, PROMPTS[1])]
    assert t2["sha256"] == sha256_file(out / "turn2.png") and t2["seed"] == settings.seed
    assert t2["settings"] == settings.to_dict() and t2["context_frames"] == 2
    assert t1["dit_calls"] == 2 * settings.steps  # two guidance passes per step
    assert t1["seconds"]["total"] > 0 and t1["negative_prompt_official"] is False
    latents = load_file(str(out / "latents" / "turn2.safetensors"))
    assert latents["image"].shape == (6, 8, 16)  # 48x64 px / 8, 16 channels
    assert load_file(str(out / "latents" / "inputs.safetensors"))["input0"].shape == (6, 8, 16)


def test_same_seed_same_images_other_seed_differs(model, settings, image, tmp_path):
    shas = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        EditSession.create(model, [image], tmp_path / name, settings.updated(seed=seed)).run(PROMPTS[:2])
        shas.append(_shas(tmp_path / name, 2))
    assert shas[0] == shas[1] and shas[0][0] != shas[2][0]


@pytest.mark.parametrize("roundtrip", ["latent", "png"])
def test_resume_gives_identical_images(model, settings, image, tmp_path, roundtrip):
    s = settings.updated(roundtrip=roundtrip)
    EditSession.create(model, [image], tmp_path / "once", s).run(PROMPTS)
    EditSession.create(model, [image], tmp_path / "twice", s).run(PROMPTS[:2])
    model.clear_text_cache()  # as in a new process
    resumed = EditSession.open(model, tmp_path / "twice" / "session.json")
    resumed.run(PROMPTS[2:])
    assert _shas(tmp_path / "once", 3) == _shas(tmp_path / "twice", 3)
    assert [t["prompt"] for t in read_session(tmp_path / "twice" / "session.json")["turns"]] == PROMPTS
    assert (tmp_path / "twice" / "latents").is_dir() == (roundtrip == "latent")


def test_png_roundtrip_differs_from_latent(model, settings, image, tmp_path):
    for rt in ("latent", "png"):
        EditSession.create(model, [image], tmp_path / rt, settings.updated(roundtrip=rt)).run(PROMPTS[:2])
    a, b = (_shas(tmp_path / rt, 2) for rt in ("latent", "png"))
    assert a[0] == b[0] and a[1] != b[1]  # turn 1 has no generated context; turn 2 reads turn 1 back


def test_branch_equals_the_shorter_session(model, settings, image, tmp_path):
    EditSession.create(model, [image], tmp_path / "main", settings).run(PROMPTS)
    branch = EditSession.open(model, tmp_path / "main", out_dir=tmp_path / "branch", from_turn=1)
    branch.run(["remove the hat"])
    EditSession.create(model, [image], tmp_path / "direct", settings).run([PROMPTS[0], "remove the hat"])
    assert _shas(tmp_path / "branch", 2) == _shas(tmp_path / "direct", 2)
    rec = read_session(tmp_path / "branch" / "session.json")
    assert rec["parent"] == {"session": str((tmp_path / "main" / "session.json").resolve()), "from_turn": 1}
    assert [t["prompt"] for t in rec["turns"]] == [PROMPTS[0], "remove the hat"]
    assert len(read_session(tmp_path / "main" / "session.json")["turns"]) == 3  # the source is untouched
    refused = EditSession.open(model, tmp_path / "main", out_dir=tmp_path / "refused", from_turn=2)
    with pytest.raises(UsageError, match="is empty"):
        refused.run([" "])
    assert not (tmp_path / "refused").exists()  # a branch is written only when its first turn may run
    with pytest.raises(UsageError, match="would overwrite turns 2..3"):
        EditSession.open(model, tmp_path / "main", from_turn=1)
    with pytest.raises(UsageError, match="fixed for a session.*resolution 64 -> 128"):
        EditSession.open(model, tmp_path / "main", {"resolution": 128})


def test_context_window_limits_the_turns_in_context(model, settings, image, tmp_path):
    recs = EditSession.create(model, [image], tmp_path / "c1", settings.updated(context=1)).run(PROMPTS)
    assert recs[2]["texts"] == [edit_text(0, 1, PROMPTS[1]), edit_text(1, 2, PROMPTS[2])]
    assert recs[1]["texts"] == [edit_text(0, 1, PROMPTS[0]), edit_text(1, 2, PROMPTS[1])]  # still fits
    recs0 = EditSession.create(model, [image], tmp_path / "c0", settings.updated(context=0)).run(PROMPTS)
    assert recs0[2]["texts"] == [edit_text(0, 1, PROMPTS[2])] and recs0[2]["context_frames"] == 1
    full = EditSession.create(model, [image], tmp_path / "all", settings).run(PROMPTS)
    assert full[2]["sha256"] != recs[2]["sha256"] and full[1]["sha256"] == recs[1]["sha256"]


def test_chain_of_editing_predicts_both_masks(model, settings, image, tmp_path):
    out = tmp_path / "chain"
    (rec,) = EditSession.create(model, [image], out, settings.updated(chain=("current", "next"))).run(PROMPTS[:1])
    p = PROMPTS[0]
    assert rec["texts"] == [src_mask_text(0, 1, p), dst_mask_text(0, 2, p), edit_text(0, 3, p)]
    assert rec["masks"] == {"current": "turn1_mask_current.png", "next": "turn1_mask_next.png"}
    assert rec["dit_calls"] == 3 * 2 * settings.steps
    for f in ("turn1.png", "turn1_mask_current.png", "turn1_mask_next.png"):
        assert Image.open(out / f).size == (64, 48)
    assert set(load_file(str(out / "latents" / "turn1.safetensors"))) == {"image", "mask_current", "mask_next"}
    nxt = EditSession.create(model, [image], tmp_path / "next", settings.updated(chain=("next",))).run(PROMPTS[:1])
    assert nxt[0]["texts"] == [dst_mask_text(0, 1, p), edit_text(0, 2, p)]


def test_mask_file_gives_the_next_mask(model, settings, image, tmp_path):
    m = np.zeros((48, 64), np.uint8)
    m[8:24, 16:40] = 200
    Image.fromarray(m).save(tmp_path / "mask.png")
    out = tmp_path / "masked"
    sess = EditSession.create(model, [image], out, settings)
    (rec,) = sess.run(["put a lamp here"], [TurnControl(mask=str(tmp_path / "mask.png"))])
    saved = _pixels(out / "turn1_mask_next.png")
    assert (saved[..., 0] > 0).tolist() == (m > 127).tolist()
    assert rec["masks"] == {"next": "turn1_mask_next.png"} and rec["mask"] == "turn1_mask_next.png"
    assert rec["texts"][-2:] == [dst_mask_text(0, 1, "put a lamp here"), edit_text(0, 2, "put a lamp here")]
    assert rec["dit_calls"] == 2 * settings.steps  # the mask frame is given, only the image is sampled
    Image.fromarray(m[:40]).save(tmp_path / "wrong.png")
    with pytest.raises(BadInputError, match=r"wrong.png: mask is 64x40 px; expected 64x48"):
        sess.run(["again"], [TurnControl(mask=str(tmp_path / "wrong.png"))])
    assert not (out / "turn2.png").exists() and len(read_session(out / "session.json")["turns"]) == 1


def test_keep_outside_keeps_the_source_pixels_outside_the_mask(model, settings, image, tmp_path):
    m = np.zeros((48, 64), np.uint8)
    m[8:24, 16:40] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    plain = EditSession.create(model, [image], tmp_path / "plain", settings)
    plain.run(["put a lamp here"], [TurnControl(mask=str(tmp_path / "mask.png"))])
    out = tmp_path / "kept"
    sess = EditSession.create(model, [image], out, settings.updated(keep_outside=2))
    (rec,) = sess.run(["put a lamp here"], [TurnControl(mask=str(tmp_path / "mask.png"))])
    src = sess._source_pixels(("input", 0))  # the input as the model saw it (resized to the frame)
    assert src.shape == (48, 64, 3) and src.dtype == np.uint8
    kept, free = _pixels(out / "turn1.png"), _pixels(tmp_path / "plain" / "turn1.png")
    grown = np.zeros((48, 64), bool)
    grown[6:26, 14:42] = True  # the mask grown by 2 px (a square neighbourhood)
    assert (kept[~grown] == src[~grown]).all() and (kept[grown] == free[grown]).all()
    assert not (free[~grown] == src[~grown]).all()  # the tiny model changes pixels outside the region
    assert rec["kept_outside"] == pytest.approx(1 - grown.mean(), abs=1e-4)
    assert rec["settings"]["keep_outside"] == 2
    # the next turn edits the kept image (latents re-encoded from the written PNG), identical on resume
    sess.run(["make it snow"], [TurnControl(mask=str(tmp_path / "mask.png"))])
    written = sess._encode(to_tensor(load_image(out / "turn1.png")).mul(2).sub(1), ("image", 1))
    assert torch.equal(sess._latents[("image", 1)], written)
    resumed = EditSession.open(model, out / "session.json")
    assert torch.equal(resumed._context_latent(("image", 1)), written)
    with pytest.raises(UsageError, match=r"turn 1: --keep-outside .* this turn has none: add --chain"):
        EditSession.create(model, [image], tmp_path / "none", settings.updated(keep_outside=0)).run(PROMPTS[:1])
    with pytest.raises(UsageError, match="keep_outside must be >= 0 pixels"):
        settings.updated(keep_outside=-1)


def test_current_mask_file_is_given_not_predicted(model, settings, image, tmp_path):
    c = np.zeros((48, 64), np.uint8)
    c[20:30, 8:20] = 255
    Image.fromarray(c).save(tmp_path / "current.png")
    out = tmp_path / "cur"
    sess = EditSession.create(model, [image], out, settings)
    (rec,) = sess.run(["remove the square"], [TurnControl(current_mask=str(tmp_path / "current.png"))])
    assert rec["masks"] == {"current": "turn1_mask_current.png"} and rec["current_mask"] == "turn1_mask_current.png"
    assert rec["current_mask_source"] == str((tmp_path / "current.png").resolve()) and rec["mask"] is None
    assert rec["texts"][-2:] == [src_mask_text(0, 1, "remove the square"), edit_text(0, 2, "remove the square")]
    assert rec["dit_calls"] == 2 * settings.steps  # only the image is sampled
    assert (_pixels(out / "turn1_mask_current.png")[..., 0] > 127).tolist() == (c > 127).tolist()
    # a drag moves the given current mask (not a predicted one)
    (rec,) = sess.run(["move it"], [TurnControl(drag=Drag(5, 0), current_mask=str(tmp_path / "current.png"))])
    nxt = torch.from_numpy(_pixels(out / "turn2_mask_next.png")[..., 0] > 127)
    assert torch.equal(nxt, drag_mask(torch.from_numpy(c > 127), Drag(5, 0)))
    assert rec["dit_calls"] == 2 * settings.steps
    Image.fromarray(c[:40]).save(tmp_path / "wrong.png")
    with pytest.raises(BadInputError, match=r"wrong.png: mask is 64x40 px; expected 64x48"):
        sess.run(["again"], [TurnControl(current_mask=str(tmp_path / "wrong.png"))])


def test_drag_moves_the_predicted_mask(model, settings, image, tmp_path):
    out = tmp_path / "drag"
    sess = EditSession.create(model, [image], out, settings.updated(seed=2))
    (rec,) = sess.run(["move the square right"], [TurnControl(drag=Drag(6, -2))])
    current = binarize(to_tensor(load_image(out / "turn1_mask_current.png")).mul(2).sub(1))
    assert current.any(), "the tiny model painted no region; pick another seed for this test"
    nxt = torch.from_numpy(_pixels(out / "turn1_mask_next.png")[..., 0] > 127)
    assert torch.equal(nxt, drag_mask(current, Drag(6, -2)))
    assert rec["drag"] == [6, -2, 1.0, 0.0] and set(rec["masks"]) == {"current", "next"}
    assert rec["dit_calls"] == 2 * 2 * settings.steps  # current mask and image are sampled


def test_composition_of_two_inputs(model, settings, tmp_path):
    a = make_image(tmp_path / "scene.png", 80, 48)
    b = make_image(tmp_path / "object.png", 30, 60, seed=3)
    caption = "put <IMG1> on the table of <IMG0>"
    recs = EditSession.create(model, [a, b], tmp_path / "comp", settings).run([caption, "make it night"])
    assert recs[0]["texts"] == [input_label_text(1), composition_text(2, caption, 2)]
    assert recs[1]["texts"][-1] == edit_text(2, 3, "make it night")
    assert Image.open(tmp_path / "comp" / "turn1.png").size == (80, 48)


def _latent(out, turn):
    return load_file(str(out / "latents" / f"turn{turn}.safetensors"))["image"]


def test_batched_cfg_matches_two_passes(model, settings, image, tmp_path):
    EditSession.create(model, [image], tmp_path / "plain", settings).run(PROMPTS[:2])
    recs = EditSession.create(model, [image], tmp_path / "b", settings.updated(batched_cfg=True)).run(PROMPTS[:2])
    # a batch of two runs other fp32 GEMM kernels than one sample: on an AVX2-only CPU the latents differ by
    # up to 5e-4 after two turns (within 1e-4 on an AVX512 one)
    torch.testing.assert_close(_latent(tmp_path / "b", 2), _latent(tmp_path / "plain", 2), atol=2e-3, rtol=1e-3)
    assert recs[0]["dit_calls"] == settings.steps  # one forward per step


def test_compile_runs_the_compiled_transformer(model_dir, settings, image, tmp_path, monkeypatch):
    """Wiring: every forward goes through torch.compile's module (the real compile is the slow test below)."""
    m = load_model(str(model_dir), settings)
    calls = []

    def fake_compile(module, **kw):
        assert kw == {"dynamic": True, "backend": "inductor"}
        return lambda **inputs: calls.append(1) or module(**inputs)

    monkeypatch.setattr(torch, "compile", fake_compile)
    EditSession.create(m, [image], tmp_path / "c", settings.updated(compile=True)).run(PROMPTS[:1])
    EditSession.create(m, [image], tmp_path / "p", settings).run(PROMPTS[:1])
    assert len(calls) == 2 * settings.steps and _shas(tmp_path / "c", 1) == _shas(tmp_path / "p", 1)


@pytest.mark.slow
def test_compile_with_torch_dynamo(model_dir, settings, image, tmp_path):
    m = load_model(str(model_dir), settings)
    EditSession.create(m, [image], tmp_path / "p", settings).run(PROMPTS[:1])
    s = settings.updated(compile=True, compile_backend="eager")
    EditSession.create(m, [image], tmp_path / "c", s).run(PROMPTS[:1])
    assert "eager" in m.__dict__["_vincie_compiled"]
    torch.testing.assert_close(_latent(tmp_path / "c", 1), _latent(tmp_path / "p", 1), atol=1e-4, rtol=1e-4)


def test_offload_encodes_every_text_before_sampling(model, settings, image, tmp_path, monkeypatch):
    offloaded = []

    def offload(m):
        offloaded.append(True)
        monkeypatch.setattr(m.text_encoder, "encode", lambda prompts: pytest.fail(f"encoded late: {prompts}"))

    monkeypatch.setattr(session_mod, "offload_text_encoder", offload)
    model.clear_text_cache()
    s = settings.updated(offload_text=True, chain=("current", "next"))
    EditSession.create(model, [image], tmp_path / "off", s).run(PROMPTS[:2])
    assert offloaded == [True]


def test_turn_table_and_empty_prompt_are_checked_first(model, settings, image, tmp_path):
    sess = EditSession.create(model, [image], tmp_path / "long", settings)
    with pytest.raises(UsageError, match="turn 65 would give the model 65 text segments .* turn table has 64"):
        sess.run([f"step {i}" for i in range(65)])
    sess._plan([f"step {i}" for i in range(65)], [TurnControl()] * 65, [settings.updated(context=3)] * 65)
    with pytest.raises(UsageError, match=r"prompt 2 \(turn 2\) is empty"):
        sess.run(["fine", "  . "])
    assert not (tmp_path / "long").exists()  # nothing is written before the turns pass their checks
    sess.run(["fine"])
    assert (tmp_path / "long" / "session.json").is_file() and (tmp_path / "long" / "turn1.png").is_file()


def test_replay_reproduces_every_turn(model, settings, image, tmp_path):
    m = np.zeros((48, 64), np.uint8)
    m[10:20, 10:30] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    sess = EditSession.create(model, [image], tmp_path / "orig", settings.updated(seed=9))
    sess.run(PROMPTS[:1])
    EditSession.open(model, tmp_path / "orig", {"guidance": 3.0}).run(
        ["add a lamp"], [TurnControl(mask=str(tmp_path / "mask.png"))]
    )
    c = np.zeros((48, 64), np.uint8)
    c[30:40, 40:60] = 255
    Image.fromarray(c).save(tmp_path / "current.png")
    EditSession.open(model, tmp_path / "orig").run(
        ["move it"], [TurnControl(drag=Drag(-4, 0), current_mask=str(tmp_path / "current.png"))]
    )
    results = replay(model, tmp_path / "orig" / "session.json", tmp_path / "again")
    assert [r["matches"] for r in results] == [True, True, True]
    assert json.loads((tmp_path / "again" / "session.json").read_text())["turns"][1]["settings"]["guidance"] == 3.0


def test_posterior_sample_is_seeded(model, settings, image, tmp_path):
    s = settings.updated(posterior="sample")
    for name in ("a", "b"):
        EditSession.create(model, [image], tmp_path / name, s).run(PROMPTS[:1])
    EditSession.create(model, [image], tmp_path / "mean", settings).run(PROMPTS[:1])
    a, b, mean = (load_file(str(tmp_path / n / "latents" / "inputs.safetensors"))["input0"] for n in ("a", "b", "mean"))
    assert torch.equal(a, b) and not torch.equal(a, mean)


def test_paper_layout_model(model_dir, settings, image, tmp_path):
    paper = load_model(str(model_dir), settings)
    paper.config.layout = {"kind": "paper", "attention": "full", "rope": "interleaved"}
    recs = EditSession.create(paper, [image], tmp_path / "paper", settings).run(PROMPTS[:2])
    rec = read_session(tmp_path / "paper" / "session.json")
    assert rec["conditioning"]["kind"] == "paper" and len(recs) == 2
    assert Image.open(tmp_path / "paper" / "turn2.png").size == (64, 48)
    with pytest.raises(UsageError, match="conditioning layout"):
        EditSession.open(load_model(str(model_dir), settings), tmp_path / "paper")


def test_negative_branch_modes(model, settings, image, tmp_path, monkeypatch):
    """auto: the release's negative prompt for released weights, empty texts (one per step, the branch that
    `vincie train` learns with text dropout) for models trained by vincie; both can be forced."""
    calls = []
    session_text, negative_text = model.session_text, model.negative_text
    monkeypatch.setattr(model, "session_text", lambda t: calls.append(("session", list(t))) or session_text(t))
    monkeypatch.setattr(model, "negative_text", lambda p: calls.append(("negative", p)) or negative_text(p))
    (rec,) = EditSession.create(model, [image], tmp_path / "a", settings.updated(steps=1)).run(PROMPTS[:1])
    assert rec["negative"] == "prompt" and ("negative", rec["negative_prompt"]) in calls
    calls.clear()
    s = settings.updated(steps=1, negative="empty")
    (rec,) = EditSession.create(model, [image], tmp_path / "b", s).run(PROMPTS[:1])
    assert rec["negative"] == "empty" and rec["negative_prompt"] is None
    assert ("session", [""]) in calls and not any(c[0] == "negative" for c in calls)
    monkeypatch.setattr(model.config, "layout", {"kind": "released"})  # as `vincie train` records it
    (rec,) = EditSession.create(model, [image], tmp_path / "c", settings.updated(steps=1)).run(PROMPTS[:1])
    assert rec["negative"] == "empty"
    s = settings.updated(steps=1, negative_prompt="blurry")
    (rec,) = EditSession.create(model, [image], tmp_path / "d", s).run(PROMPTS[:1])
    assert rec["negative"] == "prompt" and rec["negative_prompt"] == "blurry"


def test_given_turn_is_context_like_a_generated_one(model, settings, image, tmp_path, caplog):
    """A turn given as an image (`give`) feeds the next turn exactly as the same image generated and read back
    (roundtrip png) does; it is recorded as given, resumes without re-encoding warnings, and replays as given."""
    s = settings.updated(roundtrip="png")
    EditSession.create(model, [image], tmp_path / "made", s).run(PROMPTS[:2])
    sess = EditSession.create(model, [image], tmp_path / "given", s)
    rec = sess.give(PROMPTS[0], tmp_path / "made" / "turn1.png")
    assert rec["turn"] == 1 and rec["given"] == str((tmp_path / "made" / "turn1.png").resolve())
    assert rec["masks"] == {} and rec["sha256"] == sha256_file(tmp_path / "given" / "turn1.png")
    (t2,) = sess.run(PROMPTS[1:2])
    assert t2["texts"] == [edit_text(0, 1, PROMPTS[0]), edit_text(1, 2, PROMPTS[1])] and t2["context_frames"] == 2
    assert _shas(tmp_path / "given", 2) == _shas(tmp_path / "made", 2)
    # another image given as turn 1 changes turn 2
    other = EditSession.create(model, [image], tmp_path / "other", s)
    other.give(PROMPTS[0], make_image(tmp_path / "other.png", seed=3))
    other.run(PROMPTS[1:2])
    assert sha256_file(tmp_path / "other" / "turn2.png") != sha256_file(tmp_path / "made" / "turn2.png")
    # latent roundtrip: the given turn is encoded from its PNG, on resume too, with no warning about it
    caplog.clear()
    lat = EditSession.create(model, [image], tmp_path / "lat", settings)
    lat.give(PROMPTS[0], tmp_path / "made" / "turn1.png")
    lat.run(PROMPTS[1:2])
    EditSession.open(model, tmp_path / "lat").run(PROMPTS[2:3])
    assert "no saved latents" not in caplog.text
    results = replay(model, tmp_path / "lat" / "session.json", tmp_path / "again")
    assert [r["matches"] for r in results] == [True, True, True]
    assert read_session(tmp_path / "again" / "session.json")["turns"][0]["given"]


def test_given_turn_is_checked(model, settings, image, tmp_path):
    sess = EditSession.create(model, [image], tmp_path / "s", settings)
    with pytest.raises(UsageError, match="is empty"):
        sess.give(" ", image)
    with pytest.raises(BadInputError, match="missing.png"):
        sess.give(PROMPTS[0], tmp_path / "missing.png")
    assert not (tmp_path / "s").exists()  # nothing written for a refused turn
