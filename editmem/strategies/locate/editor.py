"""One batch of locate-then-edit, shared by every variant (LYAPLOCK.md §1, §4, §7).

:class:`LocateEditor` owns the edited layers' original weights ``W0``, the statistics ``C``, the context
templates and the cross-batch solver state, and applies a batch of :class:`EditRequest`:

1. ``z*`` for every edit at ``z_layer = max(layers)`` with the model as it is now;
2. for each edited layer in ascending order: keys with the model as updated so far in this batch, the
   remaining residual ``(z* − zcur)/(L − i)``, the variant's closed-form update, written in place;
3. the variant's cross-batch state: LyapLock's ``S_KK, S_VK`` from the keys computed *before* the layer's update
   and ``V_new = W_new K``, and its queue; MEMIT_seq/AlphaEdit's ``S_KK`` from keys recomputed after the batch.

The preservation loss ``D`` and a queue are tracked for every variant (only ``lyaplock`` feeds the queue back into
its solve), so all variants can be plotted against the same threshold.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from editmem.strategies.locate.keys import compute_keys
from editmem.strategies.locate.requests import EditRequest
from editmem.strategies.locate.solvers import (
    QueueState,
    alphaedit_update,
    lyaplock_update,
    memit_update,
    nullspace_projector,
    preservation_loss,
)
from editmem.strategies.locate.values import ValueParams, compute_values

Variant = Literal["lyaplock", "memit", "memit_seq", "alphaedit"]
VARIANTS: tuple[str, ...] = ("lyaplock", "memit", "memit_seq", "alphaedit")


@dataclass(frozen=True)
class SolverParams:
    """Variant and its regularisers (see :class:`editmem.strategies.lyaplock.LyapLockConfig` for meanings)."""

    variant: Variant = "lyaplock"
    lam: float = 100.0
    alpha: float = 60.0
    V: float = 1.0
    b: float = 0.0
    queue_reference_batch: int | None = 100
    l2: float = 10.0
    nullspace_variance_share: float = 0.02
    nullspace_threshold: float | None = None


@dataclass
class LayerState:
    """Cross-batch state of one layer: previous-edit caches and the queue."""

    S_KK: torch.Tensor | None = None
    S_VK: torch.Tensor | None = None
    queue: QueueState = field(default_factory=QueueState)


class LocateEditor:
    """Applies batches of edits to the rewrite modules of ``layers`` (see the module docstring)."""

    def __init__(
        self,
        model,
        tokenizer,
        adapter,
        layers: Sequence[int],
        C: dict[int, torch.Tensor],
        templates: list[list[str]],
        solver: SolverParams,
        values: ValueParams,
        *,
        W0: dict[int, torch.Tensor] | None = None,
        z_chunk: int = 8,
    ):
        if solver.variant not in VARIANTS:
            raise ValueError(f"unknown variant {solver.variant!r}; choose one of {VARIANTS}")
        self.model, self.tokenizer, self.adapter = model, tokenizer, adapter
        self.layers = sorted(int(l) for l in layers)
        self.z_layer = self.layers[-1]
        self.C = {l: C[l].to(torch.float64) for l in self.layers}
        self.templates = templates
        self.solver = solver
        self.values = values
        self.z_chunk = z_chunk
        self.W0 = W0 if W0 is not None else {l: self.weight(l).detach().clone() for l in self.layers}
        self.P: dict[int, torch.Tensor] = {}
        self.null_dims: dict[int, int] = {}
        if solver.variant == "alphaedit":
            for l in self.layers:
                share = None if solver.nullspace_threshold is not None else solver.nullspace_variance_share
                self.P[l], self.null_dims[l] = nullspace_projector(self.C[l], variance_share=share, threshold=solver.nullspace_threshold)
        self.state: dict[int, LayerState] = {}
        self.reset_state()

    # -- weights -----------------------------------------------------------------------------
    def weight(self, layer: int) -> torch.Tensor:
        """The live rewrite weight as ``[d_out, d_in]`` (a view: writes go into the model)."""
        return self.adapter.mlp_out_weight(layer)

    def reset_state(self) -> None:
        self.state = {l: LayerState(queue=QueueState(alpha=self.solver.alpha, V=self.solver.V, b=self.solver.b, reference_batch=self.solver.queue_reference_batch)) for l in self.layers}
        self.n_batches = 0

    # -- one batch ---------------------------------------------------------------------------
    def apply_batch(self, requests: Sequence[EditRequest], z: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Write ``requests`` into the model. ``z`` (``[d_model, n]``) skips the value optimisation when the
        targets are already known (exact replay of an unchanged prefix). Returns ``(z, telemetry)``."""
        started = time.time()
        info: dict[str, Any] = {"batch": self.n_batches, "n": len(requests)}
        if z is None:
            res = compute_values(self.model, self.tokenizer, self.adapter, requests, self.templates, self.z_layer, self.values, chunk=self.z_chunk)
            z = res.z
            info.update(
                z_loss=_mean(res.loss), z_nll=_mean(res.nll), z_steps=_mean(res.steps), z_delta_ratio=_mean(res.delta_ratio),
                z_seconds=round(time.time() - started, 3),
            )
        else:
            info["z_cached"] = True
        variant = self.solver.variant
        per_layer: dict[str, Any] = {}
        n_l = len(self.layers)
        for i, layer in enumerate(self.layers):
            keys, zcur = compute_keys(self.model, self.tokenizer, self.adapter, requests, self.templates, [layer], z_layer=self.z_layer)
            K = keys[layer].to(torch.float64)
            R = (z.to(torch.float64) - zcur.to(torch.float64)) / (n_l - i)
            live = self.weight(layer)
            W = live.detach().to(torch.float64)
            st = self.state[layer]
            w_used = 1.0
            if variant == "memit":
                delta = memit_update(R, K, self.C[layer], self.solver.lam)
            elif variant == "memit_seq":
                delta = memit_update(R, K, self.C[layer], self.solver.lam, S_KK=st.S_KK)
            elif variant == "alphaedit":
                delta = alphaedit_update(R, K, self.P[layer], st.S_KK, self.solver.l2)
            else:
                w_used = st.queue.weight
                delta = lyaplock_update(W, self.W0[layer], R, K, self.C[layer], self.solver.lam, V=self.solver.V, w=w_used, S_KK=st.S_KK, S_VK=st.S_VK)
            with torch.no_grad():
                live.add_(delta.to(live.dtype))
            W_new = live.detach().to(torch.float64)
            if variant == "lyaplock":
                V_new = W_new @ K
                st.S_KK = K @ K.T if st.S_KK is None else st.S_KK + K @ K.T
                st.S_VK = V_new @ K.T if st.S_VK is None else st.S_VK + V_new @ K.T
            D = preservation_loss(W_new, self.W0[layer], self.C[layer])
            st.queue.update(D, len(requests))
            per_layer[str(layer)] = {
                "D": D,
                "threshold": st.queue.threshold,
                "w_used": w_used,
                "w_next": st.queue.weight,
                "delta_fro": float(delta.norm()),
                "drift_fro": float((W_new - self.W0[layer].to(torch.float64)).norm()),
                "resid_norm": float(R.norm(dim=0).mean()),
            }
        if variant in ("memit_seq", "alphaedit"):
            keys, _ = compute_keys(self.model, self.tokenizer, self.adapter, requests, self.templates, self.layers)
            for layer in self.layers:
                K = keys[layer].to(torch.float64)
                st = self.state[layer]
                st.S_KK = K @ K.T if st.S_KK is None else st.S_KK + K @ K.T
        info["layers"] = per_layer
        info["D_sum"] = sum(v["D"] for v in per_layer.values())
        thresholds = [v["threshold"] for v in per_layer.values()]
        info["threshold_sum"] = sum(thresholds) if all(t is not None for t in thresholds) else None
        info["seconds"] = round(time.time() - started, 3)
        self.n_batches += 1
        return z, info

    # -- persistence of the solver state -------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for l, st in self.state.items():
            if st.S_KK is not None:
                out[f"S_KK.{l}"] = st.S_KK
            if st.S_VK is not None:
                out[f"S_VK.{l}"] = st.S_VK
        return out

    def state_json(self) -> dict[str, Any]:
        return {"n_batches": self.n_batches, "queues": {str(l): st.queue.to_dict() for l, st in self.state.items()}}

    def load_state(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        self.reset_state()
        self.n_batches = int(data.get("n_batches", 0))
        for l, st in self.state.items():
            st.S_KK = tensors.get(f"S_KK.{l}")
            st.S_VK = tensors.get(f"S_VK.{l}")
            q = data.get("queues", {}).get(str(l))
            if q is not None:
                st.queue = QueueState.from_dict(q)


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")
