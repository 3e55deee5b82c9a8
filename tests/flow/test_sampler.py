"""Euler sampling with classifier-free guidance over plain callables."""

from __future__ import annotations

import pytest
import torch

from vincie_cli.flow.sampler import (
    classifier_free_guidance,
    euler_sample,
    euler_step,
    guidance_scale,
    two_pass,
)
from vincie_cli.flow.schedule import add_noise, sampling_timesteps


def test_exact_velocity_recovers_the_data():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(12, 4, generator=g), torch.randn(12, 4, generator=g)

    def oracle(x_t, t):  # the true velocity of the straight path through x0
        return (x_t - x0) / (t / 1000.0)

    out = euler_sample(eps, two_pass(oracle), sampling_timesteps(8))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)


def test_euler_step_is_a_straight_line_move():
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    t, s = torch.tensor(900.0), torch.tensor(600.0)
    torch.testing.assert_close(euler_step(x, v, t, s), x + (s - t) / 1000 * v, atol=1e-5, rtol=1e-5)
    x0, eps = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    torch.testing.assert_close(euler_step(add_noise(x0, eps, t), eps - x0, t, s), add_noise(x0, eps, s))


def test_cfg_formula_and_rescale():
    g = torch.Generator().manual_seed(2)
    pos, neg = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    plain = classifier_free_guidance(pos, neg, 7.5)
    torch.testing.assert_close(plain, neg + 7.5 * (pos - neg))
    full = classifier_free_guidance(pos, neg, 7.5, rescale=1.0)  # per-row std equals the positive one
    torch.testing.assert_close(full.std(dim=1), pos.std(dim=1), atol=1e-5, rtol=1e-5)
    half = classifier_free_guidance(pos, neg, 7.5, rescale=0.7)
    factor = 0.7 * pos.std(dim=1, keepdim=True, unbiased=True) / plain.std(dim=1, keepdim=True) + 0.3
    torch.testing.assert_close(half, plain * factor)


def test_guidance_schedule_call_order_and_partial():
    calls = []

    def pos(x, t):
        calls.append(("pos", round(t.item(), 3)))
        return torch.ones_like(x)

    def neg(x, t):
        calls.append(("neg", round(t.item(), 3)))
        return torch.zeros_like(x)

    grid = sampling_timesteps(10)
    seen = []
    euler_sample(torch.zeros(2, 3), two_pass(pos, neg), grid, cfg_scale=7.5, cfg_partial=0.5, callback=seen.append)
    assert [guidance_scale(i, 10, 7.5, 0.5) for i in range(10)] == [7.5] * 5 + [1.0] * 5
    assert len(calls) == 15
    assert [c[0] for c in calls[:10]] == ["pos", "neg"] * 5 and all(c[0] == "pos" for c in calls[10:])
    assert calls[0][1] == calls[1][1] == 1000.0
    assert [s.scale for s in seen] == [7.5] * 5 + [1.0] * 5
    assert seen[0].v_neg is not None and seen[-1].v_neg is None and seen[-1].t_next is None
    torch.testing.assert_close(seen[0].v, torch.full((2, 3), 7.5))
    with pytest.raises(ValueError, match="negative"):
        euler_sample(torch.zeros(2, 3), two_pass(pos), grid, cfg_scale=2.0)


def test_batched_requests_both_branches_at_once():
    g = torch.Generator().manual_seed(3)
    w_pos, w_neg = torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g)
    requests = []

    def denoise(x, t, branches):
        requests.append(tuple(branches))
        w = {"pos": w_pos, "neg": w_neg}
        return [torch.tanh(x @ w[b]) * (t / 1000) for b in branches]

    noise = torch.randn(8, 4, generator=g)
    grid = sampling_timesteps(6)
    a = euler_sample(noise, denoise, grid, cfg_scale=4.0, cfg_rescale=0.5)
    n_two = len(requests)
    b = euler_sample(noise, denoise, grid, cfg_scale=4.0, cfg_rescale=0.5, batched=True)
    assert n_two == 12 and requests[n_two:] == [("pos", "neg")] * 6
    torch.testing.assert_close(a, b, atol=0, rtol=0)
