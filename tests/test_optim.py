"""The shared masked Adam equals torch.optim.Adam per row, and frozen rows do not move."""

import torch

from editmem.optim import MaskedAdam


def _loss(p: torch.Tensor) -> torch.Tensor:
    return ((p - torch.arange(p.numel(), dtype=p.dtype).view_as(p)) ** 2).sum() + p.sin().sum()


def test_rows_that_step_together_reproduce_torch_adam_bit_for_bit():
    torch.manual_seed(0)
    start = torch.randn(3, 4)
    ours = start.clone().requires_grad_(True)
    ref = start.clone().requires_grad_(True)
    adam, torch_adam = MaskedAdam(ours, lr=0.1), torch.optim.Adam([ref], lr=0.1, foreach=False)
    for _ in range(7):
        adam.zero_grad()
        _loss(ours).backward()
        adam.step(torch.ones(3, dtype=torch.bool))
        torch_adam.zero_grad()
        _loss(ref).backward()
        torch_adam.step()
    assert torch.equal(ours.detach(), ref.detach())


def test_a_row_stopped_early_keeps_its_value_and_its_step_count():
    torch.manual_seed(1)
    start = torch.randn(2, 5)
    p = start.clone().requires_grad_(True)
    adam = MaskedAdam(p, lr=0.05)
    frozen_at = None
    for step in range(6):
        adam.zero_grad()
        _loss(p).backward()
        active = torch.tensor([True, step < 2])
        adam.step(active)
        if step == 1:
            frozen_at = p[1].detach().clone()
    assert torch.equal(p[1].detach(), frozen_at)  # no update after its stop
    assert adam.steps.tolist() == [6, 2]
    assert not torch.equal(p[0].detach(), start[0])


def test_explicit_gradients_and_inactive_rows_holding_garbage():
    p = torch.zeros(3, 2)
    adam = MaskedAdam(p, lr=1.0)
    grad = torch.tensor([[1.0, -1.0], [float("nan"), float("nan")], [2.0, 2.0]])
    adam.step(torch.tensor([True, False, True]), grad)
    assert torch.equal(p[1], torch.zeros(2)) and not torch.isnan(p).any()
    torch.testing.assert_close(p[0], torch.tensor([-1.0, 1.0]))  # first Adam step moves by lr * sign(grad)
