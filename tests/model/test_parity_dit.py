"""Parity of the transformer, turn embeddings and session-text assembly with the release (fixture sets).

Configs, case files and keys are discovered from $VINCIE_PARITY_DIR, so the tests run unchanged on any
fixture set of the same structure.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from safetensors.torch import load_file

from tests.model.parity_helpers import (
    assert_close,
    dit_folders,
    fixture_config,
    fixture_model,
    fixture_weights,
    tolerances,
)
from vincie_cli.model.dit import DiTConfig, assemble_session_text
from vincie_cli.model.layers import rope_frequencies


def test_config_derived_from_weights_equals_fixture_config(parity):
    for folder in dit_folders(parity):
        expected = fixture_config(folder)
        derived = DiTConfig.from_state_dict(fixture_weights(folder))
        for f in fields(DiTConfig):
            a, b = getattr(derived, f.name), getattr(expected, f.name)
            if f.name == "rope_dim":  # only the rotary frequencies are observable in the weights
                a, b = rope_frequencies(a // 3).tolist(), rope_frequencies(b // 3).tolist()
            assert a == b, f"{folder.name}: derived {f.name}={a!r}, fixture {b!r}"


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_dit_forward_matches_release(parity, mode):
    tol = tolerances(parity)["dit_fp32" if mode == "fp32" else "dit_bf16"]
    key = "vid_sample_fp32attn" if mode == "fp32" else "vid_sample"
    n_cases = 0
    for folder in dit_folders(parity):
        model = fixture_model(folder)
        model.attention = mode
        for case_file in sorted(folder.glob("case_*.safetensors")):
            c = load_file(str(case_file))
            with torch.no_grad():
                out = model(c["vid"], c["txt"], c["vid_shape"], c["txt_shape"], c["timestep"])
            assert out.shape == c[key].shape
            assert_close(out, c[key], tol, f"{folder.name}/{case_file.name} {key}")
            n_cases += 1
    assert n_cases > 0, "no dit/*/case_*.safetensors found"


@pytest.mark.gpu
def test_dit_forward_on_cuda_bf16_attention(parity):
    """On a GPU the bf16 attention runs a real bf16 kernel (flash-attn varlen or SDPA): looser bounds."""
    tol = tolerances(parity)["dit_bf16_gpu"]
    for folder in dit_folders(parity):
        model = fixture_model(folder, device="cuda")
        for case_file in sorted(folder.glob("case_*.safetensors")):
            c = load_file(str(case_file), device="cuda")
            for mode, key, bound in (("bf16", "vid_sample", tol), ("fp32", "vid_sample_fp32attn", (1e-4, 1e-4))):
                model.attention = mode
                with torch.no_grad():
                    out = model(c["vid"], c["txt"], c["vid_shape"], c["txt_shape"], c["timestep"])
                assert_close(out.cpu(), c[key].cpu(), bound, f"cuda {folder.name}/{case_file.name} {key}")


def test_prompt_id_embedding_exact(parity):
    for folder in dit_folders(parity):
        f = folder / "prompt_id_case.safetensors"
        if not f.is_file():
            continue
        c = load_file(str(f))
        model = fixture_model(folder)
        with torch.no_grad():
            out = model.prompt_id_embedding(c["prompt_id"])
        assert torch.equal(out, c["prompt_id_embedding"]), folder.name


def _sessions_from_lengths(valid: list[int], totals: list[int]) -> list[list[int]]:
    """Split consecutive prompts into sessions whose sum of (n_k + 1) equals each session's text length."""
    out, k = [], 0
    for total in totals:
        group, acc = [], 0
        while acc < total:
            assert k < len(valid), "prompt lengths do not add up to txt_shape"
            group.append(k)
            acc += valid[k] + 1
            k += 1
        assert acc == total, "prompt lengths do not add up to txt_shape"
        out.append(group)
    assert k == len(valid)
    return out


def test_session_text_assembly_exact(parity):
    data = load_file(str(parity / "text" / "text_assembly.safetensors"))
    table = data["prompt_id_table"]
    groups = sorted(k[: -len("_llm_hidden")] for k in data if k.endswith("_llm_hidden"))
    assert groups, "no *_llm_hidden groups in text_assembly.safetensors"
    for g in groups:
        hidden, mask = data[f"{g}_llm_hidden"], data[f"{g}_llm_mask"].bool()
        valid = mask.sum(-1).tolist()
        if f"{g}_valid_lens" in data:
            assert valid == data[f"{g}_valid_lens"].tolist(), g
        sessions = _sessions_from_lengths(valid, data[f"{g}_txt_shape"].reshape(-1).tolist())
        states = [[hidden[k][mask[k]] for k in s] for s in sessions]
        txt, txt_shape = assemble_session_text(states, table)
        assert torch.equal(txt_shape, data[f"{g}_txt_shape"]), g
        assert txt.dtype == data[f"{g}_txt"].dtype, g
        assert torch.equal(txt, data[f"{g}_txt"]), g
