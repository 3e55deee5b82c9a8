"""Parity of an editing round with the reference: the sampler e2e fixture (a whole guided generation of the
official `VINCIEGenerator.inference`) replayed through `vincie edit`'s own denoising path.

Everything is read from the fixture set ($VINCIE_PARITY_DIR, default ../shared/parity): the DiT folder named in
sampler.json, each run's settings (steps, CFG scale / partial / rescale, attention numerics), the context
latents, noise and assembled texts, and the tolerances, so another fixture set of the same structure works.
"""

from __future__ import annotations

import json
import re

import pytest
from safetensors.torch import load_file

from tests.model.parity_helpers import assert_close, fixture_model, tolerances
from vincie_cli.edit import session as session_mod
from vincie_cli.edit.denoise import SamplerSettings, sample_round
from vincie_cli.edit.session import EditSession
from vincie_cli.edit.settings import EditSettings


def _fixture(parity):
    meta_file, data_file = parity / "sampler" / "sampler.json", parity / "sampler" / "e2e.safetensors"
    if not (meta_file.is_file() and data_file.is_file()):
        pytest.skip(f"no sampler e2e fixture in {parity / 'sampler'}")
    meta = json.loads(meta_file.read_text())["e2e.safetensors"]
    m = re.search(r"dit/([\w.-]+)", meta.get("dit", "dit/a"))
    return meta, load_file(str(data_file)), parity / "dit" / m[1]


def _settings(name: str, run: dict) -> EditSettings:
    """The run's sampler settings as `vincie edit` settings (sampler.json overrides on the shipped config)."""
    o = dict(item.split("=", 1) for item in run.get("config_overrides", []))
    scales = run["cfg_scale_per_step"]
    return EditSettings(
        steps=int(run.get("steps", o.get("diffusion.timesteps.sampling.steps", 50))),
        shift=float(o.get("diffusion.timesteps.sampling.shift", 12.0)),
        guidance=float(o.get("diffusion.cfg.scale", max(scales))),
        partial=float(o.get("diffusion.cfg.partial", 1.0)),
        rescale=float(o.get("diffusion.cfg.rescale", 0.0)),
        attention="fp32" if "fp32attn" in name else "bf16",
        device="cpu",
    )


def _bound(tol, name):
    return tol["sampler_fp32"] if "fp32attn" in name else tol["sampler_bf16"]


def _prefix(name: str) -> str:
    attn = "fp32attn" if "fp32attn" in name else "bf16attn"
    return name if name.endswith(attn) else f"{name}_{attn}"


@pytest.mark.parametrize("batched", [False, True], ids=["two-pass", "batched-cfg"])
def test_edit_round_reproduces_reference_sampling(parity, batched):
    """`sample_round` (the loop `vincie edit` runs) gives the reference's states and final latents of all frames."""
    meta, e, dit_dir = _fixture(parity)
    dit, tol = fixture_model(dit_dir), tolerances(parity)
    assert meta["runs"], "sampler.json lists no runs"
    for name, run in meta["runs"].items():
        s = _settings(name, run)
        dit.attention = s.attention
        states = {}
        sampler = SamplerSettings(s.steps, s.shift, s.guidance, s.rescale, s.partial, batched)
        final = sample_round(
            dit, e["context_latents"], e["noise"], e["txt_pos"], e["txt_pos_shape"], e["txt_neg"], e["txt_neg_shape"],
            sampler, callback=lambda info, st=states: st.setdefault(info.i, info.x.clone()),
        )  # fmt: skip
        prefix = _prefix(name)
        assert_close(final, e[f"{prefix}_final_latents"], _bound(tol, name), f"{prefix}_final_latents ({batched=})")
        checked = 1
        for key in e:
            m = re.fullmatch(re.escape(prefix) + r"_x_after_step_(\d+)", key)
            if m:
                assert_close(states[int(m[1]) - 1], e[key], _bound(tol, name), key)
                checked += 1
        assert checked >= 2, f"no intermediate states saved for {name}"


class _FixtureModel:
    """The session's view of a model, answering with the fixture's DiT and assembled texts."""

    def __init__(self, dit, e):
        self.dit, self.e, self.texts = dit, e, []

    def session_text(self, texts):
        self.texts.append(list(texts))
        return self.e["txt_pos"], self.e["txt_pos_shape"]

    def negative_text(self, prompt):
        return self.e["txt_neg"], self.e["txt_neg_shape"]


def test_edit_session_turn_reproduces_reference(parity, monkeypatch):
    """One turn as `EditSession` generates it (context frames, session text, seeded noise, guidance settings)
    lands on the reference's final latent of the new frame, with the reference's number of DiT calls."""
    meta, e, dit_dir = _fixture(parity)
    dit, tol = fixture_model(dit_dir), tolerances(parity)
    k = e["context_latents"].shape[0]
    drawn = []

    def fixture_noise(shape, seed, device):
        drawn.append((tuple(shape), seed))
        return e["noise"]

    monkeypatch.setattr(session_mod, "round_noise", fixture_noise)
    for name, run in meta["runs"].items():
        s = _settings(name, run).updated(seed=11)
        sess = EditSession.__new__(EditSession)  # no folder: the frames come from the fixture
        sess.model, sess.settings, sess.layout = _FixtureModel(dit, e), s, {"kind": "released"}
        keys = [("input", 0)] + [("image", t) for t in range(1, k)]
        sess._latents = {key: e["context_latents"][i] for i, key in enumerate(keys)}
        texts = [f"turn {t}" for t in range(k)]
        latent, _, calls = sess._generate(keys, texts, s)
        assert drawn[-1] == (tuple(e["noise"].shape), 11) and sess.model.texts[-1] == texts
        assert calls == run.get("dit_calls", calls), name
        assert latent.shape == e["noise"].shape[1:]
        ref = e[f"{_prefix(name)}_final_latents"][-1]
        assert_close(latent, ref, _bound(tol, name), f"{name}: new frame of the edit turn")
        assert dit.attention == s.attention
