"""Training-loss helpers: noising, target, masked MSE and per-task reduction."""

from __future__ import annotations

import torch

from vincie_cli.flow.loss import (
    changed_positions,
    changed_row_weights,
    masked_mse,
    noisy_input,
    per_group_loss,
    task_weighted_loss,
    token_l1,
    token_mse,
    velocity_target,
)


def test_noisy_input_per_token_timesteps():
    x0, eps = torch.zeros(3, 2), torch.ones(3, 2)
    t = torch.tensor([0.0, 250.0, 1000.0])  # a clean context token, a noisy one, pure noise
    assert noisy_input(x0, eps, t).tolist() == [[0, 0], [0.25, 0.25], [1, 1]]
    assert torch.equal(velocity_target(x0, eps), eps)


def test_masked_mse_and_groups():
    pred = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0], [3.0, 3.0]])
    target = torch.zeros(4, 2)
    per_token = token_mse(pred, target)
    assert per_token.tolist() == [1.0, 2.0, 0.0, 9.0]
    mask = torch.tensor([True, True, False, False])
    assert masked_mse(pred, target, mask).item() == 1.5
    assert masked_mse(pred, target).item() == 3.0
    assert masked_mse(pred, target, torch.zeros(4, dtype=torch.bool)).item() == 0.0
    groups = torch.tensor([0, 0, 1, 2])
    assert per_group_loss(per_token, groups, 4).tolist() == [1.5, 0.0, 9.0, 0.0]
    assert per_group_loss(per_token, groups, 3, mask=torch.tensor([True, False, True, True])).tolist() == [1, 0, 9]


def test_token_l1_is_the_mean_absolute_error_and_its_minimiser_is_the_median():
    pred, target = torch.tensor([[1.0, -3.0], [0.5, 0.5]]), torch.zeros(2, 2)
    assert token_l1(pred, target).tolist() == [2.0, 0.5]
    # a position that is object (1.0) in 3 of 5 possible targets and background (0.0) in 2: the squared error
    # is least at the faint blend 0.6, the absolute error at the object itself
    targets = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])[:, None]
    guesses = torch.linspace(0, 1, 101)
    l1 = torch.stack([token_l1(g.expand(5, 1), targets).mean() for g in guesses])
    l2 = torch.stack([token_mse(g.expand(5, 1), targets).mean() for g in guesses])
    assert float(guesses[l1.argmin()]) == 1.0 and abs(float(guesses[l2.argmin()]) - 0.6) < 1e-6


def test_task_weighted_loss_ignores_absent_tasks_and_backprops():
    pred = torch.tensor([[1.0], [2.0], [4.0]], requires_grad=True)
    target = torch.zeros(3, 1)
    groups = torch.tensor([0, 0, 2])  # task 1 absent from this batch
    loss, per_task = task_weighted_loss(token_mse(pred, target), groups, torch.tensor([1.0, 5.0, 3.0]))
    assert per_task.tolist() == [2.5, 0.0, 16.0]
    assert abs(loss.item() - (1 * 2.5 + 3 * 16.0) / 4) < 1e-6
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_changed_positions_and_their_weights():
    source = torch.zeros(2, 2, 4)
    x0 = source.clone()
    x0[0, 1] = 1.0  # a changed position (mean squared difference 1)
    x0[1, 0, 0] = 0.1  # below the threshold: 0.01 / 4 channels
    changed = changed_positions(x0, source, threshold=0.01)
    assert changed.tolist() == [False, True, False, False]
    w = changed_row_weights(changed, share=0.5)
    assert w is not None
    torch.testing.assert_close(w, torch.tensor([2 / 3, 2.0, 2 / 3, 2 / 3]))  # half the loss on 1 of 4 positions
    assert abs(float(w.mean()) - 1.0) < 1e-6
    w = changed_row_weights(changed, share=0.8)
    assert w is not None and abs(float(w[1]) - 3.2) < 1e-6 and abs(float(w.mean()) - 1.0) < 1e-6
    # nothing or everything changed: no reweighting
    assert changed_row_weights(torch.zeros(4, dtype=torch.bool), 0.5) is None
    assert changed_row_weights(torch.ones(4, dtype=torch.bool), 0.5) is None
