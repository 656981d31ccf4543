"""The ``wise`` strategy class: the write path, forgetting, consolidation, persistence; routing is in ``inference``."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from editmem.facts import StoredFact
from editmem.interventions import HookSet
from editmem.strategies.base import Strategy, register_strategy
from editmem.strategies.wise.config import WISEConfig, default_layer
from editmem.strategies.wise.inference import Router
from editmem.strategies.wise.memory import FactRecord, SideMemory
from editmem.strategies.wise.samples import build_pool, context_templates, pick
from editmem.strategies.wise.training import EditTrainer, build_batch

STATE_FORMAT = 1


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class WISEStrategy(Router, Strategy):
    """WISE: a side copy of one MLP value matrix, knowledge shards, Ties-merge and activation routing."""

    batch_safe: ClassVar[bool] = True  # every row is scored and routed on its own tokens

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        cfg: WISEConfig = self.config  # type: ignore[assignment]
        n = self.adapter.num_layers
        self.layer = cfg.layer if cfg.layer is not None else default_layer(n)
        if not 0 <= self.layer < n:
            raise ValueError(f"wise: layer {self.layer} out of range for a {n}-layer model")
        #: the main memory: an exact copy of the value matrix ([out, in]); the model's own weight is never written
        self.W0 = self.adapter.mlp_out_weight(self.layer).detach().clone().float()
        self.memory_state = SideMemory(self.W0, mode=cfg.mode, save_freq=cfg.save_freq, shards_per_merge=cfg.shards_per_merge,  # type: ignore[arg-type]
                                       density=cfg.densities, weights=cfg.weights, mask_ratio=cfg.mask_ratio, seed=cfg.seed)
        self.sigma = self.adapter.hidden_activation() if cfg.distance == "act_wrapped" else None
        self.templates: list[str] | None = None
        self._pool: list[str] | None = None
        self.pool_source: str | None = None
        self.telemetry: list[dict[str, Any]] = []
        self._hooks = HookSet("wise")
        self._tls = threading.local()
        self._passive = False
        self._markers: Any = False
        self._trainer_obj: EditTrainer | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_tls", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._tls = threading.local()

    # -- resources -----------------------------------------------------------------------------
    def _trainer(self) -> EditTrainer:
        if self._trainer_obj is None:
            self._trainer_obj = EditTrainer(self.model, self.adapter, self.layer, self.config, self.sigma)
        return self._trainer_obj

    @contextmanager
    def _base_model(self):
        """The hooks stay installed but pass through (the write path's own forwards see the unedited model)."""
        was, self._passive = self._passive, True
        try:
            yield
        finally:
            self._passive = was

    def _templates(self) -> list[str]:
        if self.templates is None:
            cfg: WISEConfig = self.config  # type: ignore[assignment]
            with self._base_model():
                self.templates = context_templates(self.model, self.tokenizer, sampling=cfg.template_sampling,  # type: ignore[arg-type]
                                                   seed=cfg.template_seed)
        return self.templates[: self.config.n_templates]  # type: ignore[attr-defined]

    def _irrelevant_pool(self) -> list[str]:
        if self._pool is None:
            from editmem.eval.datasets import data_dir
            from editmem.prefixes import sample_prefixes
            from editmem.strategies.locate.stats import default_corpus_path

            def sampled() -> list[str]:
                with self._base_model():
                    return sample_prefixes(self.model, self.tokenizer, n=64, max_new_tokens=24, top_k=20, seed=self.config.seed)  # type: ignore[attr-defined]

            self._pool, self.pool_source = build_pool(self.config.irrelevant_pool, data_dir=data_dir(),  # type: ignore[attr-defined]
                                                      corpus=default_corpus_path(), sampled=sampled)
            if not self._pool:
                raise ValueError(f"wise: the irrelevant pool {self.pool_source} is empty")
        return self._pool

    # -- write path ----------------------------------------------------------------------------
    def applied_ids(self) -> set[str]:
        return set(self.memory_state.facts)

    def _train_into(self, shard, rec: FactRecord) -> dict[str, Any]:
        mem = self.memory_state
        start = shard.weight if shard.weight is not None else self.W0
        cfg: WISEConfig = self.config  # type: ignore[assignment]
        batch = build_batch(self.tokenizer, self._templates(), rec.prompt, rec.target, rec.irrelevant,
                            cfg.irrelevant_max_tokens, chat=bool(cfg.chat_context), end_turn=cfg.chat_end_turn,
                            markers=self._chat_markers() if cfg.routing_span == "user" else None)
        with self._base_model():
            W, stats = self._trainer().train(start, self.W0, mem.mask(shard.serial), batch)
        shard.weight = W
        rec.act = stats["act"]
        rec.stats = stats
        mem.invalidate()
        return stats

    def _write(self, rec: FactRecord) -> None:
        mem = self.memory_state
        t0 = time.perf_counter()
        shard = mem.open_shard()
        rec.shard = shard.serial
        mem.facts[rec.id] = rec
        stats = self._train_into(shard, rec)
        shard.fact_ids.append(rec.id)
        mem.after_write()
        eps = self.config.act_ratio * mem.act_min()  # type: ignore[attr-defined]
        self.telemetry.append({"fact": rec.id, "shard": shard.serial, "n_edits": len(mem.facts), "epsilon": eps,
                               "latency_s": time.perf_counter() - t0, **stats})

    def apply(self, facts: Sequence[StoredFact]) -> None:
        """Write each fact in turn (one optimisation per fact, the WISE protocol) into the open shard."""
        seed = self.config.seed  # type: ignore[attr-defined]
        for stored in facts:
            if stored.id in self.memory_state.facts:
                continue
            irrelevant = pick(self._irrelevant_pool(), stored.id, seed, self.config.n_irrelevant)  # type: ignore[attr-defined]
            self._write(FactRecord(id=stored.id, prompt=stored.fact.prompt, target=stored.fact.target,
                                   irrelevant=irrelevant, shard=-1))

    def remove(self, fact_ids: Sequence[str], *, active: Sequence[StoredFact]) -> None:
        """Remove facts exactly. ``forget="shard"``: every shard that held one is retrained from ``W0`` on its
        remaining facts (same order, mask and irrelevant rows) and the merges are recomputed; ``"replay"``: every
        shard from the first changed one on is rewritten as a stream without the facts would have written it."""
        mem = self.memory_state
        drop = [f for f in fact_ids if f in mem.facts]
        if not drop:
            return
        affected = sorted({mem.facts[f].shard for f in drop})
        for f in drop:
            rec = mem.facts.pop(f)
            mem.shards[rec.shard].fact_ids.remove(f)
        if self.config.forget == "replay":  # type: ignore[attr-defined]
            self._replay_from(affected[0])
        else:
            for serial in affected:
                shard = mem.shards[serial]
                shard.weight = None
                for fid in shard.fact_ids:
                    self._train_into(shard, mem.facts[fid])
            mem.rebuild_merges()
        self.telemetry.append({"replay": True, "removed": sorted(drop), "shards": affected, "forget": self.config.forget})  # type: ignore[attr-defined]

    def _replay_from(self, serial: int) -> None:
        mem = self.memory_state
        later = [f for s in mem.shards[serial:] for f in s.fact_ids]
        recs = [mem.facts.pop(f) for f in later]
        mem.shards = mem.shards[:serial]
        mem.groups = [g for g in mem.groups if max(g) < serial]
        mem.rebuild_merges()
        for rec in recs:
            self._write(FactRecord(id=rec.id, prompt=rec.prompt, target=rec.target, irrelevant=rec.irrelevant, shard=-1))

    def consolidate(self) -> None:
        """Close the partly filled shard and Ties-merge every pending shard now (the reference does this on its first
        inference call; here it is explicit, so evaluation is not stateful: pitfall 12)."""
        if self.memory_state.consolidate():
            self.telemetry.append({"consolidate": True, "groups": len(self.memory_state.groups)})

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = self.memory_state.state()
        state = {"format": STATE_FORMAT, "layer": self.layer, "w0_sha": _sha(self.W0), "templates": self.templates,
                 "pool_source": self.pool_source, "telemetry": self.telemetry, **meta}
        return {k: v.detach().cpu() for k, v in tensors.items()}, state

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> set[str]:
        if state.get("format") != STATE_FORMAT or state.get("layer") != self.layer or state.get("w0_sha") != _sha(self.W0):
            return set()  # built for another model or layer: rebuild from the memory
        self.templates = state.get("templates")
        self.pool_source = state.get("pool_source")
        self.telemetry = list(state.get("telemetry", []))
        self.memory_state.load(tensors, state)
        return self.applied_ids()

    # -- inspection -----------------------------------------------------------------------------
    def telemetry_rows(self) -> list[dict[str, Any]]:
        """Per edit: shard, optimisation steps, final loss, recorded in-scope activation, the irrelevant row's
        distance, ε after the edit, latency; plus one row per forget (``write="replay"``) and consolidation."""
        rows: list[dict[str, Any]] = []
        for t in self.telemetry:
            if t.get("replay"):
                rows.append({"write": "replay", "facts": -len(t["removed"])})
            elif t.get("consolidate"):
                rows.append({"write": "consolidate", "groups": t["groups"]})
            else:
                rows.append({"write": t["n_edits"] - 1, "shard": t["shard"], "steps": t["steps"], "loss": t["loss"],
                             "act": t["act"], "d_irrelevant": t["d_irrelevant"], "epsilon": t["epsilon"],
                             "latency_s": t["latency_s"]})
        return rows


register_strategy(name="wise", config_cls=WISEConfig, strategy_cls=WISEStrategy)
