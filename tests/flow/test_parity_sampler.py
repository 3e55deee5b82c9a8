"""Parity of the sampling grids and of whole guided sampling runs with the release (fixture sets).

Grid settings are parsed from the key names; run settings (steps, CFG scale / rescale / partial, shift,
attention numerics, DiT weights) from sampler.json, so other fixture sets work unchanged.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from tests.model.parity_helpers import assert_close, fixture_model, tolerances
from vincie_cli.flow.sampler import euler_sample, guidance_scale
from vincie_cli.flow.schedule import sampling_timesteps
from vincie_cli.model.conditioning import ReleasedDenoiser, build_condition, dit_input

_GRID_KEY = re.compile(r"steps(\d+)_shift([0-9.]+)_T([0-9.]+)")


def test_sampling_grids_exact(parity):
    grids = load_file(str(parity / "sampler" / "timesteps.safetensors"))
    tol = tolerances(parity)["timesteps"]
    assert grids, "timesteps.safetensors is empty"
    for key, ref in grids.items():
        m = _GRID_KEY.search(key)
        assert m, f"cannot parse steps/shift/T from key {key!r}"
        grid = sampling_timesteps(int(m[1]), float(m[2]), float(m[3]))
        assert grid.shape == ref.shape and grid.dtype == torch.float32, key
        assert_close(grid, ref, tol, key)
        assert torch.equal(grid, ref), f"{key}: not bit-identical to the release's fp32 grid"


def _run_settings(name: str, run: dict) -> dict:
    """Sampler settings of one e2e run from sampler.json (overrides on top of the shipped config)."""
    overrides = {}
    for item in run.get("config_overrides", []):
        k, _, v = item.partition("=")
        overrides[k.strip()] = v.strip()
    scales = run["cfg_scale_per_step"]
    rescales = run.get("cfg_rescale_per_step", [0.0])
    return {
        "steps": int(run.get("steps", overrides.get("diffusion.timesteps.sampling.steps", 50))),
        "shift": float(overrides.get("diffusion.timesteps.sampling.shift", 12.0)),
        "T": float(overrides.get("diffusion.schedule.T", 1000.0)),
        "scale": float(overrides.get("diffusion.cfg.scale", max(scales))),
        "partial": float(overrides.get("diffusion.cfg.partial", 1.0)),
        "rescale": float(overrides.get("diffusion.cfg.rescale", rescales[0] if rescales else 0.0)),
        "attention": "fp32" if "fp32attn" in name else "bf16",
    }


def _e2e(parity):
    meta = json.loads((parity / "sampler" / "sampler.json").read_text())["e2e.safetensors"]
    m = re.search(r"dit/([\w.-]+)", meta.get("dit", "dit/a"))
    return meta, load_file(str(parity / "sampler" / "e2e.safetensors")), parity / "dit" / m[1]


def test_e2e_inputs_follow_the_released_layout(parity):
    meta, e, _ = _e2e(parity)
    cond = build_condition(e["context_latents"])
    assert torch.equal(cond, e["condition"])
    assert torch.equal(
        dit_input(e["noise"], cond).reshape(-1, cond.shape[-1] + e["noise"].shape[-1]), e["vid_input_step0"]
    )


@pytest.mark.parametrize("batched", [False, True], ids=["two-pass", "batched"])
def test_e2e_guided_sampling_matches_release(parity, batched):
    meta, e, dit_folder = _e2e(parity)
    tol = tolerances(parity)
    model = fixture_model(dit_folder)
    c = e["noise"].shape[-1]
    noise = e["noise"].reshape(-1, c)
    runs = meta["runs"]
    assert runs, "sampler.json lists no runs"
    for name, run in runs.items():
        s = _run_settings(name, run)
        model.attention = s["attention"]
        grid = sampling_timesteps(s["steps"], s["shift"], s["T"])
        assert [guidance_scale(i, len(grid), s["scale"], s["partial"]) for i in range(len(grid))] == pytest.approx(
            run["cfg_scale_per_step"]
        ), name
        if "timestep_per_call" in run:
            assert sorted(set(run["timestep_per_call"]), reverse=True) == pytest.approx(grid.tolist(), abs=1e-3)
        den = ReleasedDenoiser(
            model, e["condition"].reshape(-1, c + 1), e["vid_shape"], e["txt_pos"], e["txt_pos_shape"],
            e["txt_neg"], e["txt_neg_shape"],
        )  # fmt: skip
        states = {}
        with torch.no_grad():
            final = euler_sample(
                noise, den, grid, T=s["T"], cfg_scale=s["scale"], cfg_rescale=s["rescale"],
                cfg_partial=s["partial"], batched=batched, callback=lambda info, st=states: st.setdefault(info.i, info),
            )  # fmt: skip
        guided = sum(1 for v in run["cfg_scale_per_step"] if v != 1.0)
        expected_calls = len(grid) + (0 if batched else guided)
        assert den.calls == expected_calls, f"{name}: {den.calls} DiT calls"
        if not batched:
            assert den.calls == run.get("dit_calls", den.calls), name

        attn = "fp32attn" if s["attention"] == "fp32" else "bf16attn"
        base = tol["sampler_fp32"] if attn == "fp32attn" else tol["sampler_bf16"]
        prefix = name if name.endswith(attn) else f"{name}_{attn}"
        checked = 0
        for key, ref in e.items():
            if not key.startswith(prefix + "_"):
                continue
            what = key[len(prefix) + 1 :]
            if what == "final_latents":
                port = final
            elif what.startswith("x_after_step_"):
                port = states[int(what.rsplit("_", 1)[1]) - 1].x
            elif what == "v_guided_step0":
                port = states[0].v
            else:
                continue
            bound = tol["sampler_bf16_guided"] if (what.startswith("v_guided") and attn == "bf16attn") else base
            assert_close(port, ref.reshape(port.shape), bound, key)
            checked += 1
        for branch in ("pos", "neg"):
            key = f"step0_{attn}_v_{branch}"
            if key in e and states[0].v_neg is not None:
                port = states[0].v_pos if branch == "pos" else states[0].v_neg
                assert_close(port, e[key].reshape(port.shape), base, key)
                checked += 1
        assert checked > 0, f"no saved tensors for run {name}"
