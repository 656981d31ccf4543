"""The ``llp`` strategy class: bookkeeping, the write path, persistence; training and routing come from its mixins."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from editmem.facts import StoredFact
from editmem.injection import PrefixInjection
from editmem.interventions import HookSet
from editmem.strategies.base import Strategy, register_strategy
from editmem.strategies.llp.config import LLPConfig, ResolvedLLP
from editmem.strategies.llp.keys import KeyTraining
from editmem.strategies.llp.records import _Entry, _FactRec, _ForwardState
from editmem.strategies.llp.resources import WriteResources
from editmem.strategies.llp.router import Router
from editmem.strategies.llp.values import ValueTraining

logger = logging.getLogger("editmem.strategies.llp")


class LLPStrategy(Router, KeyTraining, ValueTraining, WriteResources, Strategy):
    """Layer-Level Prompting: retrieval-gated layer-level prompts (see the module docstring)."""

    batch_safe = True
    supports_as_of = True  # entries whose facts are not in force at the call's as_of are masked before the vote  # retrieval, vote and injection are decided per row (tests/test_llp.py: mixed batches)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cfg: ResolvedLLP = self.config.resolve(self.adapter.num_layers)
        self._entries: dict[str, _Entry] = {}
        self._order: list[str] = []  # entry ids in insertion order (row index of the retrieval matrices)
        self._matrices: tuple[torch.Tensor, torch.Tensor] | None = None  # normalised keys [m, N, d], values [N, b, d]
        self._hooks = HookSet("llp")
        self._state = _ForwardState()
        self._dry_run = False  # hooks passive (internal forwards of the write path)
        self._explain_only = False  # retrieve and report, do not inject
        self._query_lengths: list[int] | None = None
        self._prefix_bank: list[str] | None = None
        self._generic_pool: torch.Tensor | None = None  # [m, S, d] normalised
        self._chat_markers: tuple[list[int], list[int]] | None | bool = False
        self._special_ids = torch.tensor(sorted(set(getattr(self.tokenizer, "all_special_ids", []) or [])), dtype=torch.long)
        self._fingerprint: str | None = None
        self._query_gate = None  # editmem.strategies.gate.QueryGate, built on first use
        self._gate_stale = True
        try:
            self._injection = PrefixInjection(self.adapter, self.cfg.b)  # the value: b vectors in front at layer z
        except ValueError as exc:
            raise ValueError(f"llp: {exc}") from None
        #: per-edit training log (last apply call), for benchmarks
        self.last_edit_stats: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ bookkeeping
    @property
    def layout(self) -> dict[str, Any]:
        return {"R": list(self.cfg.retrieval_layers), "z": self.cfg.injection_layer, "b": self.cfg.b,
                "d": self.adapter.hidden_size, "L": self.adapter.num_layers}

    def model_fingerprint(self) -> str:
        if self._fingerprint is None:
            from editmem.models import model_fingerprint

            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def applied_ids(self) -> set[str]:
        return {f.id for e in self._entries.values() for f in e.facts}

    def entries(self) -> list[dict[str, Any]]:
        """Summary of the stored entries (subject, fact ids, training stats)."""
        return [{"id": e.id, "subject": e.subject, "facts": e.fact_ids, **e.stats} for e in (self._entries[i] for i in self._order)]

    def _invalidate(self) -> None:
        self._matrices = None
        self._gate_stale = True

    def _get_matrices(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self._order:
            return None
        if self._matrices is None:
            keys = torch.stack([self._entries[i].key for i in self._order], dim=1)  # [m, N, d]
            values = torch.stack([self._entries[i].value for i in self._order], dim=0)  # [N, b, d]
            self._matrices = (F.normalize(keys.float(), dim=-1).to(self.device), values.to(self.device))
        return self._matrices

    # ------------------------------------------------------------------ model pieces
    def _layers(self) -> torch.nn.ModuleList:
        return self.adapter.layers

    # ------------------------------------------------------------------ write path
    def apply(self, facts: Sequence[StoredFact]) -> None:
        """Write facts: one entry per subject (a new fact about a stored subject rebuilds that entry)."""
        if not facts:
            return
        groups: dict[tuple[str, tuple[str | None, str | None]], list[StoredFact]] = {}
        for stored in facts:
            if stored.fact.surface not in stored.fact.prompt:
                raise ValueError(f"llp: fact {stored.id}: subject {stored.fact.surface!r} does not occur in prompt {stored.fact.prompt!r}")
            # facts of one subject share an entry only within one validity window (an entry fires or not as a whole)
            groups.setdefault((stored.fact.subject.strip().casefold(), _window(stored)), []).append(stored)
        jobs: list[tuple[str, str, list[_FactRec], int, torch.Tensor | None]] = []  # (entry id, subject, facts, seed, kept key)
        applied = self.applied_ids()
        for (skey, window), group in groups.items():
            new = [_FactRec(s.id, s.fact.prompt, s.fact.target, *window, surface=s.fact.subject_in_prompt,
                            aliases=list(s.fact.aliases))
                   for s in group if s.id not in applied]
            if not new:
                continue
            existing = next((e for e in self._entries.values() if e.subject.strip().casefold() == skey
                             and e.facts[0].window == window and len(e.facts) < self.config.max_facts_per_entry), None)
            pending: list[_FactRec] = list(existing.facts) if existing else []
            subject = existing.subject if existing else group[0].fact.subject
            if existing is not None:
                self._drop_entry(existing.id)
            while new:
                room = self.config.max_facts_per_entry - len(pending)
                pending, new = pending + new[:room], new[room:]
                eid = hashlib.sha256("\x1f".join(f.id for f in pending).encode()).hexdigest()[:16]
                seed = (self.config.seed * 1_000_003 + int(eid[:8], 16)) % (2**31)
                jobs.append((eid, subject, pending, seed, None))
                pending = []
        if not jobs:
            return
        self._write_entries(jobs)

    def _write_entries(self, jobs: list[tuple[str, str, list[_FactRec], int, torch.Tensor | None]]) -> None:
        was = self.attached
        if was:
            self.detach()
        try:
            values = self._train_values([(facts, seed) for _, _, facts, seed, _ in jobs])
            keys = self._refine_keys(jobs)
            self.last_edit_stats = []
            for (eid, subject, facts, seed, _), (value, vstats), (key, kstats) in zip(jobs, values, keys):
                entry = _Entry(eid, subject, facts, key.cpu(), value.cpu(), seed, {**vstats, **kstats})
                if entry.stats.get("hub"):
                    logger.warning("llp entry %s (subject %r) matches generic text in >= t_vote layers: it may fire on "
                                   "unrelated prompts", eid, subject)
                self._entries[eid] = entry
                self._order.append(eid)
                self._invalidate()
                self.last_edit_stats.append({"entry": eid, "facts": len(facts), **entry.stats})
        finally:
            if was:
                self.attach()

    def _drop_entry(self, eid: str) -> None:
        self._entries.pop(eid, None)
        if eid in self._order:
            self._order.remove(eid)
        self._invalidate()

    def remove(self, fact_ids: Sequence[str], *, active: Sequence[StoredFact]) -> None:
        """Drop facts: an entry left without facts is deleted; a shared entry's value is retrained on the rest
        (its key is kept: keys depend on the subject and prompts' context, not on targets)."""
        gone = set(fact_ids)
        jobs = []
        for eid in list(self._order):
            entry = self._entries[eid]
            if not gone.intersection(entry.fact_ids):
                continue
            rest = [f for f in entry.facts if f.id not in gone]
            self._drop_entry(eid)
            if rest:
                new_id = hashlib.sha256("\x1f".join(f.id for f in rest).encode()).hexdigest()[:16]
                jobs.append((new_id, entry.subject, rest, entry.seed, entry.key))
        if jobs:
            self._write_entries(jobs)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        entries = [self._entries[i] for i in self._order]
        tensors: dict[str, torch.Tensor] = {}
        if entries:
            tensors = {"keys": torch.stack([e.key for e in entries]).cpu(), "values": torch.stack([e.value for e in entries]).cpu()}
        state = {
            "format": 1,
            "layout": self.layout,
            "model_fingerprint": self.model_fingerprint(),
            "entries": [{"id": e.id, "subject": e.subject, "seed": e.seed, "stats": e.stats,
                         "facts": [dataclasses.asdict(f) for f in e.facts]} for e in entries],
        }
        return tensors, state

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> set[str]:
        if state.get("layout") != self.layout:
            raise ValueError(f"llp: stored memory was built for layout {state.get('layout')}, this strategy has {self.layout}; "
                             "keys/values are only valid for the (model, R, z, b) they were built with. Rebuild from the edit memory.")
        if state.get("model_fingerprint") != self.model_fingerprint():
            raise ValueError("llp: stored memory was built on another model (fingerprint mismatch). Rebuild from the edit memory.")
        entries = state.get("entries", [])
        keys, values = tensors.get("keys"), tensors.get("values")
        if entries and (keys is None or values is None or keys.shape[0] != len(entries) or values.shape[0] != len(entries)):
            raise ValueError("llp: stored tensors do not match the stored entry list")
        self._entries, self._order = {}, []
        for i, rec in enumerate(entries):
            entry = _Entry(rec["id"], rec["subject"], [_FactRec(**f) for f in rec["facts"]], keys[i].cpu().float(),
                           values[i].cpu().float(), int(rec["seed"]), dict(rec.get("stats", {})))
            self._entries[entry.id] = entry
            self._order.append(entry.id)
        self._invalidate()
        return self.applied_ids()


def _window(stored: StoredFact) -> tuple[str | None, str | None]:
    fact = stored.fact
    return (fact.valid_from.isoformat() if fact.valid_from else None, fact.valid_to.isoformat() if fact.valid_to else None)


register_strategy(name="llp", config_cls=LLPConfig, strategy_cls=LLPStrategy)
