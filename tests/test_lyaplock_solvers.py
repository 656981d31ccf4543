"""Algebra of the locate-then-edit solvers on random matrices (LYAPLOCK.md §5, §6, §13)."""

from __future__ import annotations

import math

import pytest
import torch

from editmem.strategies.locate.solvers import (
    QueueState,
    alphaedit_update,
    lyaplock_update,
    memit_update,
    nullspace_projector,
    preservation_loss,
    preservation_loss_traces,
)

F64 = torch.float64


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    d_out, d_in, n, n_corpus = 6, 10, 3, 200
    corpus = torch.randn(d_in, n_corpus, generator=g, dtype=F64)
    C = corpus @ corpus.T / n_corpus
    return {
        "W0": torch.randn(d_out, d_in, generator=g, dtype=F64),
        "K": torch.randn(d_in, n, generator=g, dtype=F64) * 2,
        "R": torch.randn(d_out, n, generator=g, dtype=F64),
        "C": C,
        "corpus": corpus,
        "Kp": torch.randn(d_in, 4, generator=g, dtype=F64),
        "Vp": torch.randn(d_out, 4, generator=g, dtype=F64),
    }


def test_memit_matches_independent_least_squares(problem):
    """``Δ = R Kᵀ(λC + KKᵀ)⁻¹`` is the least-squares solution of ``Δ [K, √λ L] ≈ [R, 0]`` with ``C = L Lᵀ``."""
    K, R, C, lam = problem["K"], problem["R"], problem["C"], 3.0
    L = torch.linalg.cholesky(C)
    A = torch.cat([K, math.sqrt(lam) * L], dim=1)  # [d_in, n + d_in]
    B = torch.cat([R, torch.zeros(R.shape[0], L.shape[1], dtype=F64)], dim=1)
    expected = torch.linalg.lstsq(A.T, B.T).solution.T
    assert torch.allclose(memit_update(R, K, C, lam), expected, atol=1e-10)


def test_memit_seq_adds_previous_keys(problem):
    K, R, C, Kp = problem["K"], problem["R"], problem["C"], problem["Kp"]
    lam = 2.0
    delta = memit_update(R, K, C, lam, S_KK=Kp @ Kp.T)
    # stationarity of ‖ΔK − R‖² + λ tr(ΔCΔᵀ) + ‖ΔKp‖²
    grad = (delta @ K - R) @ K.T + lam * delta @ C + delta @ Kp @ Kp.T
    assert grad.abs().max() < 1e-10


def test_lyaplock_gradient_vanishes_at_solution(problem):
    """``∂J/∂Δ = 0`` for ``J = V‖ΔK − R‖² + V‖(W+Δ)Kp − Vp‖² + wλ·D(W+Δ)`` (paper Eq. 12)."""
    p = problem
    W = p["W0"] + 0.1 * torch.randn(p["W0"].shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    V, w, lam = 1.7, 2.5, 4.0
    S_KK, S_VK = p["Kp"] @ p["Kp"].T, p["Vp"] @ p["Kp"].T
    delta = lyaplock_update(W, p["W0"], p["R"], p["K"], p["C"], lam, V=V, w=w, S_KK=S_KK, S_VK=S_VK)
    d = delta.clone().requires_grad_(True)
    Wn = W + d
    J = V * ((d @ p["K"] - p["R"]) ** 2).sum() + V * ((Wn @ p["Kp"] - p["Vp"]) ** 2).sum()
    E = Wn - p["W0"]
    J = J + w * lam * ((E @ p["C"]) * E).sum()
    J.backward()
    assert d.grad.abs().max() < 1e-9


def test_lyaplock_first_batch_equals_memit(problem):
    """Spec §5: in batch 0 (``W = W0``, empty cache, ``w = V = 1``) LyapLock's update is MEMIT's with the same λ."""
    p = problem
    a = lyaplock_update(p["W0"], p["W0"], p["R"], p["K"], p["C"], 7.0)
    b = memit_update(p["R"], p["K"], p["C"], 7.0)
    assert torch.allclose(a, b, atol=1e-12)


def test_lyaplock_pulls_back_toward_original_weights(problem):
    """Pitfall 1: with ``R = 0`` and ``w > 1`` the update reduces ``D`` (anchored to ``W0``, not to ``W``)."""
    p = problem
    W = p["W0"] + 0.3 * torch.randn(p["W0"].shape, dtype=F64, generator=torch.Generator().manual_seed(2))
    before = preservation_loss(W, p["W0"], p["C"])
    delta = lyaplock_update(W, p["W0"], torch.zeros_like(p["R"]), p["K"], p["C"], 5.0, w=3.0)
    assert preservation_loss(W + delta, p["W0"], p["C"]) < 0.5 * before
    # MEMIT regularises only the increment: with R = 0 it does nothing, so D stays where it is
    assert memit_update(torch.zeros_like(p["R"]), p["K"], p["C"], 5.0).abs().max() == 0


def test_preservation_loss_forms_agree(problem):
    p = problem
    W = p["W0"] + 0.05 * torch.randn(p["W0"].shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    direct = preservation_loss(W, p["W0"], p["C"])
    C_VK, C_VV = p["W0"] @ p["C"], p["W0"] @ p["C"] @ p["W0"].T
    assert math.isclose(direct, preservation_loss_traces(W, p["C"], C_VK, C_VV), rel_tol=1e-6)
    sampled = float((((W - p["W0"]) @ p["corpus"]) ** 2).sum() / p["corpus"].shape[1])
    assert math.isclose(direct, sampled, rel_tol=1e-9)
    # orientation matters: the transposed product gives a different number on a non-square W
    assert not math.isclose(direct, float(((p["C"] @ (W - p["W0"]).T) ** 2).sum()), rel_tol=1e-3)


def test_queue_weights_follow_the_spec_sequence():
    """Spec §13: ``D_t = [D_base, 2D̄, 2D̄, 0.5D̄]`` gives weights 1, 2, 3, 2.5 (floor 1)."""
    q = QueueState(alpha=60.0)
    assert q.weight == 1.0 and q.threshold is None
    d_base = 0.01
    bar = 60 * d_base
    weights = []
    for D in [d_base, 2 * bar, 2 * bar, 0.5 * bar, 0.0, 0.0, 0.0]:
        q.update(D)
        weights.append(q.weight)
    assert weights[:4] == pytest.approx([1.0, 2.0, 3.0, 2.5])
    assert weights[-1] == pytest.approx(1.0)  # decays back to the floor, never below
    assert q.threshold == pytest.approx(bar)


def test_queue_waits_for_a_nonzero_first_loss():
    """Pitfall 4: a first batch that changed nothing must not set ``D_base = 0`` (zero threshold, ``a = ∞``)."""
    q = QueueState()
    q.update(0.0)
    assert q.D_base is None and q.weight == 1.0
    q.update(0.5)
    assert q.D_base == 0.5 and q.weight == pytest.approx(1.0)


def test_queue_threshold_scales_with_first_batch_size():
    """``reference_batch``: a first batch of ``b₀`` edits sets ``D̄ = α·D_base·reference/b₀``; ``b₀ = reference``
    (and ``reference_batch=None``) is the paper's rule."""
    one = QueueState(alpha=60.0, reference_batch=100)
    one.update(0.01, n_edits=1)
    assert one.threshold == pytest.approx(60.0 * 0.01 * 100)
    assert one.weight == pytest.approx(1.0)
    one.update(0.5 * one.threshold, n_edits=1)
    assert one.weight == pytest.approx(1.0)  # below the scaled threshold: no pressure
    paper = QueueState(alpha=60.0, reference_batch=100)
    paper.update(0.01, n_edits=100)
    assert paper.threshold == pytest.approx(0.6) == QueueState(alpha=60.0, D_base=0.01).threshold


def test_queue_roundtrip():
    q = QueueState(alpha=20.0, reference_batch=10)
    for D in [0.1, 5.0, 1.0]:
        q.update(D, n_edits=2)
    assert QueueState.from_dict(q.to_dict()) == q


def test_alphaedit_update_lies_in_null_space(problem):
    p = problem
    P, dims = nullspace_projector(p["C"], variance_share=0.1)
    assert 0 < dims < p["C"].shape[0]
    delta = alphaedit_update(p["R"], p["K"], P, p["Kp"] @ p["Kp"].T, l2=1.0)
    # Δ = Δ P: rows live in the projected subspace, so the large-eigenvalue corpus directions are untouched
    assert torch.allclose(delta, delta @ P, atol=1e-10)
    evals, evecs = torch.linalg.eigh(p["C"])
    assert (delta @ evecs[:, -1]).abs().max() < 1e-10
    # absolute-threshold rule selects by eigenvalue
    _, n_abs = nullspace_projector(p["C"], threshold=float(evals[2]) + 1e-12)
    assert n_abs == 3


def test_default_layers_are_contiguous_and_inside_the_model():
    from editmem.strategies.lyaplock import default_layers

    for n in range(1, 65):
        layers = default_layers(n)
        assert layers and layers == list(range(layers[0], layers[-1] + 1)) and 0 <= layers[0] and layers[-1] < n
    assert default_layers(30) == list(range(2, 10))  # SmolLM2-135M: the eight layers measured in docs/strategies/lyaplock.md
