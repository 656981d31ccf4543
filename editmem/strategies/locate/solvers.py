"""Closed-form updates of one rewrite layer, the preservation loss and LyapLock's virtual queue
(LYAPLOCK.md §5-§7). Everything here is float64 and free of model code, so it is tested on random matrices.

Shapes (column-vector convention, one layer): ``W, W0: [d_out, d_in]``, ``K: [d_in, n]``, ``R: [d_out, n]``,
``C, S_KK: [d_in, d_in]``, ``S_VK: [d_out, d_in]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

F64 = torch.float64


def _solve_spd(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A⁻¹ B`` for a symmetric positive definite ``A``; a tiny ridge only if the solve fails."""
    try:
        return torch.linalg.solve(A, B)
    except RuntimeError:
        ridge = 1e-8 * torch.trace(A) / A.shape[0]
        return torch.linalg.solve(A + ridge * torch.eye(A.shape[0], dtype=A.dtype, device=A.device), B)


def memit_update(R: torch.Tensor, K: torch.Tensor, C: torch.Tensor, lam: float, S_KK: torch.Tensor | None = None) -> torch.Tensor:
    """MEMIT (``S_KK=None``) / MEMIT_seq: ``Δ = R Kᵀ (λC + S_KK + K Kᵀ)⁻¹``.

    Minimises ``‖Δ K − R‖² + λ·E_k‖Δ k‖² (+ ‖Δ K_p‖²)``; solved as in the reference: ``adj = A⁻¹ K``, ``Δ = R adjᵀ``.
    """
    R, K, C = R.to(F64), K.to(F64), C.to(F64)
    A = lam * C + K @ K.T
    if S_KK is not None:
        A = A + S_KK.to(F64)
    adj = _solve_spd(A, K)
    return R @ adj.T


def alphaedit_update(R: torch.Tensor, K: torch.Tensor, P: torch.Tensor, S_KK: torch.Tensor | None, l2: float) -> torch.Tensor:
    """AlphaEdit: ``Δ = R Kᵀ P (K Kᵀ P + S_KK P + L2·I)⁻¹`` — the update lives in the (approximate) null space of the
    corpus keys (``P`` projects onto it) and leaves previous edits' keys alone through ``S_KK``."""
    R, K, P = R.to(F64), K.to(F64), P.to(F64)
    M = K @ K.T
    if S_KK is not None:
        M = M + S_KK.to(F64)
    d = P.shape[0]
    lhs = P @ M + l2 * torch.eye(d, dtype=F64, device=P.device)  # = Mᵀ of the table's form, since P, M symmetric
    X = torch.linalg.solve(lhs, P @ K @ R.T)  # [d_in, d_out]
    return X.T


def lyaplock_update(
    W: torch.Tensor,
    W0: torch.Tensor,
    R: torch.Tensor,
    K: torch.Tensor,
    C: torch.Tensor,
    lam: float,
    *,
    V: float = 1.0,
    w: float = 1.0,
    S_KK: torch.Tensor | None = None,
    S_VK: torch.Tensor | None = None,
) -> torch.Tensor:
    """LyapLock's per-step drift-plus-penalty solve (paper Eq. 12, spec §5)::

        J(Δ) = V‖Δ K − R‖² + V‖(W+Δ) K_p − V_p‖² + w·λ·D(W+Δ),   D(W) = tr((W−W0) C (W−W0)ᵀ)
        Δ    = [V R Kᵀ + V (S_VK − W S_KK) + wλ (W0 − W) C] · [V K Kᵀ + V S_KK + wλ C]⁻¹

    ``C_VK − W C`` is written ``(W0 − W) C`` (exact, since ``C_VK = W0 C``). The preservation term is anchored to
    the *original* weights ``W0`` (pitfall 1), not to ``W``.
    """
    W, W0, R, K, C = (x.to(F64) for x in (W, W0, R, K, C))
    N = V * (R @ K.T) + (w * lam) * ((W0 - W) @ C)
    A = V * (K @ K.T) + (w * lam) * C
    if S_KK is not None:
        S_KK = S_KK.to(F64)
        N = N + V * (S_VK.to(F64) - W @ S_KK)
        A = A + V * S_KK
    return _solve_spd(A, N.T).T  # A symmetric: Δ = N A⁻¹  <=>  Δᵀ = A⁻¹ Nᵀ


def preservation_loss(W: torch.Tensor, W0: torch.Tensor, C: torch.Tensor) -> float:
    """``D(W) = E_k‖W k − W0 k‖² = tr((W−W0) C (W−W0)ᵀ)`` (float64; the cancellation-free form of spec §6.1)."""
    E = (W.to(F64) - W0.to(F64))
    return float(((E @ C.to(F64)) * E).sum())


def preservation_loss_traces(W: torch.Tensor, C: torch.Tensor, C_VK: torch.Tensor, C_VV: torch.Tensor) -> float:
    """The reference's three-trace form ``tr(C WᵀW) − 2 tr(C_VK Wᵀ) + tr(C_VV)`` (kept for tests)."""
    W, C, C_VK, C_VV = (x.to(F64) for x in (W, C, C_VK, C_VV))
    return float(torch.trace(C @ W.T @ W) - 2 * torch.trace(C_VK @ W.T) + torch.trace(C_VV))


def nullspace_projector(C: torch.Tensor, *, variance_share: float | None = 0.02, threshold: float | None = None) -> tuple[torch.Tensor, int]:
    """AlphaEdit's ``P = U₀U₀ᵀ`` over the eigenvectors of ``C`` with the smallest eigenvalues.

    ``threshold`` is the paper's absolute eigenvalue cut (2e-2 on 4096-14336-wide MLPs); ``variance_share``
    the width-independent rule of spec Appendix A: the smallest-eigenvalue directions whose cumulative share
    of ``tr C`` stays within it. Returns ``(P, number of directions)``.
    """
    evals, evecs = torch.linalg.eigh(C.to(F64))  # ascending
    if threshold is not None:
        sel = evals < threshold
    else:
        share = torch.cumsum(evals.clamp_min(0), 0) / evals.clamp_min(0).sum()
        sel = share <= float(variance_share)
    U = evecs[:, sel]
    return U @ U.T, int(sel.sum())


@dataclass
class QueueState:
    """LyapLock's virtual queue of one layer (spec §6.2); ``weight`` is the next batch's ``w = a·Z``.

    ``D_base`` is the preservation loss right after the first batch that changed the layer; until then the
    queue is uninitialised and ``w = 1`` (a first batch that changes nothing would give ``D_base = 0``, a zero
    threshold and ``a = ∞`` — pitfall 4).

    The threshold is ``D̄ = α·D_base·scale``. The paper's rule is ``scale = 1``, so ``D̄`` depends on the size of
    the first batch: at batch 1 it is α single edits' worth of drift and the queue stops new edits after ~α
    edits. With ``reference_batch`` set, ``scale = reference_batch / b₀`` (``b₀`` = edits in that first batch),
    so ``D̄`` means "α batches of ``reference_batch`` edits" whatever batch size the edits arrive in (``D`` grows
    linearly with the number of edits written, measured in docs/strategies/lyaplock.md). ``b₀ =
    reference_batch`` is the paper's rule exactly.
    """

    alpha: float = 60.0
    V: float = 1.0
    b: float = 0.0
    reference_batch: int | None = None
    D_base: float | None = None
    scale: float = 1.0
    a: float | None = None
    Z: float | None = None
    zmax: float | None = None

    @property
    def threshold(self) -> float | None:
        return None if self.D_base is None else self.alpha * self.D_base * self.scale

    @property
    def weight(self) -> float:
        return 1.0 if self.a is None or self.Z is None else self.a * self.Z

    def update(self, D_t: float, n_edits: int | None = None) -> None:
        """After the layer's update in a batch of ``n_edits`` edits: initialise on the first non-zero ``D``, then
        ``Z ← max(Z + a(D_t − D̄) + b, zmax)`` (``zmax`` is a floor, as in the reference)."""
        if self.D_base is None:
            if not D_t > 0.0:
                return
            self.D_base = D_t
            if self.reference_batch is not None and n_edits:
                self.scale = self.reference_batch / n_edits
            bar = self.threshold
            self.a = 1.0 / math.sqrt(bar)
            self.Z = math.sqrt(bar)
            self.zmax = math.sqrt(bar)
        self.Z = max(self.Z + self.a * (D_t - self.threshold) + self.b, self.zmax)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "QueueState":
        return cls(**data)
