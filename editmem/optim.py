"""One optimiser for every strategy that trains many small tensors at once (LLP keys and values, locate-then-edit
target values, ...): Adam on one tensor whose leading-dimension rows stop individually."""

from __future__ import annotations

import torch


class MaskedAdam:
    """Adam on ``param`` (rows along dim 0) where each step updates only the rows marked active.

    Equivalent to one ``torch.optim.Adam`` (no weight decay, no amsgrad) per row with the row's loop stopped at
    its own early-stop step: an inactive row gets neither a parameter nor a moment update, and keeps its own step
    count. Rows that share a step count are updated with ``torch.optim.Adam``'s own single-tensor arithmetic
    (``foreach=False``), so a single row, or rows that always step together, reproduce it bit for bit.

    >>> adam = MaskedAdam(v, lr=0.5)          # v: [J, b, d], requires grad
    >>> loss.backward(); adam.step(active)    # active: [J] bool
    """

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.steps = torch.zeros(param.shape[0], dtype=torch.long)

    def zero_grad(self) -> None:
        self.param.grad = None

    @torch.no_grad()
    def step(self, active: torch.Tensor, grad: torch.Tensor | None = None) -> None:
        """Update the rows where ``active`` (``[rows]`` bool, any trailing singleton dims) is True, with ``grad``
        (default: ``param.grad``; rows that are not active may hold anything)."""
        grad = self.param.grad if grad is None else grad
        if grad is None:
            return
        rows = active.reshape(active.shape[0], -1)[:, 0].cpu().nonzero().flatten()
        if rows.numel() == 0:
            return
        self.steps[rows] += 1
        b1, b2 = self.betas
        for count in self.steps[rows].unique().tolist():
            idx = rows[self.steps[rows] == count].to(self.param.device)
            p, g, m, v = self.param[idx], grad[idx], self.m[idx], self.v[idx]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            bias1 = 1 - b1**count
            bias2 = 1 - b2**count
            denom = (v.sqrt() / bias2**0.5).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / bias1)
            self.param[idx], self.m[idx], self.v[idx] = p, m, v
