"""Ties-merge of side-memory shards (Yadav et al. 2023; spec §6): trim, elect sign, disjoint weighted mean."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """``tau`` with all but its ``⌊density · numel⌋`` largest-magnitude entries set to zero (one global top-k)."""
    if density >= 1.0:
        return tau
    k = int(density * tau.numel())
    if k <= 0:
        return torch.zeros_like(tau)
    flat = tau.reshape(-1)
    keep = flat.abs().topk(k, sorted=False).indices
    out = torch.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(tau.shape)


def ties_merge(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float) -> torch.Tensor:
    """``base + τ*`` where ``τ*`` is the Ties merge of the task vectors ``tensors[i] − base``.

    1. τᵢ = Wᵢ − B, trimmed to ``density``; 2. τ̃ᵢ = wᵢ τᵢ; 3. sign s = +1 where Σ τ̃ᵢ ≥ 0, else −1;
    4. mᵢ = [sign(τ̃ᵢ) = s] (exact zeros never agree); 5. τ* = Σ τ̃ᵢ mᵢ / Σ wᵢ mᵢ (0 where no shard agrees).

    An entry only one shard touched keeps that shard's value (it is not divided by the number of shards).
    Computed in float64 and returned in ``base``'s dtype.
    """
    if len(tensors) != len(weights) or not tensors:
        raise ValueError(f"ties_merge needs one weight per tensor, got {len(tensors)} tensors and {len(weights)} weights")
    b = base.double()
    weighted = []
    agree_w = []
    for t, w in zip(tensors, weights):
        tau = trim(t.double() - b, density)
        weighted.append(float(w) * tau)
        agree_w.append(float(w))
    stack = torch.stack(weighted)
    sign = torch.where(stack.sum(0) >= 0, 1.0, -1.0).to(stack.dtype)
    agree = torch.sign(stack) == sign
    w = torch.tensor(agree_w, dtype=stack.dtype).view(-1, *([1] * base.dim()))
    num = (stack * agree).sum(0)
    den = (w * agree).sum(0)
    merged = num / torch.where(den == 0, torch.ones_like(den), den)
    return (b + merged).to(base.dtype)
