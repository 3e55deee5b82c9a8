"""The lerp schedule, v-prediction conversions and the timestep grids."""

from __future__ import annotations

import pytest
import torch

from vincie_cli.flow.schedule import (
    add_noise,
    eps_from_v,
    logit_normal_timesteps,
    sampling_timesteps,
    schedule_a,
    schedule_b,
    shift_timesteps,
    training_timesteps,
    uniform_timesteps,
    x0_from_v,
)


def test_lerp_endpoints_and_conversions():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    assert torch.equal(add_noise(x0, eps, 0.0), x0) and torch.equal(add_noise(x0, eps, 1000.0), eps)
    t = torch.tensor([0.0, 1.0, 196.72, 500.0, 750.0, 998.3, 1000.0])  # one per row
    x_t = add_noise(x0, eps, t)
    torch.testing.assert_close(x_t[3], 0.5 * x0[3] + 0.5 * eps[3])
    v = eps - x0
    torch.testing.assert_close(x0_from_v(x_t, v, t), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_from_v(x_t, v, t), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(schedule_a(t) + schedule_b(t), torch.ones(7))


def test_shipped_grid_values():
    grid = sampling_timesteps()
    assert grid.shape == (50,) and grid.dtype == torch.float32
    assert grid[0] == 1000.0 and abs(grid[-1].item() - 196.7213) < 1e-3
    assert abs(grid[1].item() - 998.302) < 1e-3 and abs(grid[-2].item() - 333.3333) < 1e-3
    assert (grid[1:] < grid[:-1]).all()
    # closed form t = T * 12u / (1 + 11u), u = 1 - i/50
    u = 1 - torch.arange(50, dtype=torch.float64) / 50
    torch.testing.assert_close(grid.double(), 1000 * 12 * u / (1 + 11 * u), atol=2e-4, rtol=0)


def test_grid_options_and_release_arange_quirk():
    g = sampling_timesteps(10, shift=1.0, T=1.0)
    torch.testing.assert_close(g, 1 - torch.arange(10) / 10, atol=1e-6, rtol=0)
    assert len(sampling_timesteps(49)) == 50  # fp32 arange(1, 0, -1/49) has 50 entries, as in the release
    assert sampling_timesteps(49)[-1] < 1e-3


def test_logit_normal_timesteps():
    a = logit_normal_timesteps(4000, torch.Generator().manual_seed(1))
    b = logit_normal_timesteps(4000, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert (a > 0).all() and (a < 1000).all()
    assert abs(a.median().item() - 500) < 30
    shifted = logit_normal_timesteps(4000, torch.Generator().manual_seed(1), loc=1.0)
    assert shifted.median() > 650  # sigmoid(1) = 0.73
    z = torch.randn(4000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, 1000 * torch.sigmoid(z))


def test_shift_timesteps_matches_the_sampling_grid():
    grid = sampling_timesteps(10, shift=1.0)  # 1000, 900, ..., 100
    torch.testing.assert_close(shift_timesteps(grid, 3.0), sampling_timesteps(10, shift=3.0))
    t = torch.tensor([0.0, 250.0, 500.0, 1000.0])
    torch.testing.assert_close(shift_timesteps(t, 1.0), t)
    torch.testing.assert_close(shift_timesteps(t, 3.0), torch.tensor([0.0, 500.0, 750.0, 1000.0]))


def test_training_timesteps():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    # the default draws exactly the logit-normal stream (runs that resume keep their timesteps)
    assert torch.equal(training_timesteps(64, g()), logit_normal_timesteps(64, g()))
    u = training_timesteps(20000, g(), "uniform")
    assert torch.equal(u, uniform_timesteps(20000, g()))
    assert (u >= 0).all() and (u < 1000).all() and abs(u.mean().item() - 500) < 10
    s = training_timesteps(20000, g(), "uniform", shift=3.0)
    torch.testing.assert_close(s, shift_timesteps(u, 3.0))
    # shift 3 puts as many training steps above t = 964 as the 10-step shift-3 grid has there (1 in 10)
    assert abs((s > 1000 * 0.9 * 3 / (1 + 2 * 0.9)).float().mean().item() - 0.1) < 0.01
    assert (logit_normal_timesteps(20000, g()) > 964).float().mean() < 0.002  # logit-normal (0, 1): 0.05 %
    with pytest.raises(ValueError, match="beta"):
        training_timesteps(4, g(), "beta")


def test_grid_timesteps_are_the_sampling_grid():
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    # 2 steps, shift 3: the sampler asks at t = 1000 and 750 only, and so does training
    t = training_timesteps(4000, g(), "grid", shift=3.0, grid_steps=2)
    assert sorted(t.unique().tolist()) == [750.0, 1000.0]
    assert abs((t == 1000.0).float().mean().item() - 0.5) < 0.03
    assert torch.equal(training_timesteps(6, g(), "grid", shift=3.0, grid_steps=1), torch.full((6,), 1000.0))
    ten = training_timesteps(20000, g(), "grid", shift=3.0, grid_steps=10)
    assert torch.equal(ten.unique().sort().values, sampling_timesteps(10, shift=3.0).sort().values)
