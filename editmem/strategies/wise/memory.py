"""The side memory: the frozen main memory ``W0``, the knowledge shards, their merges, thresholds and masks.

State (spec §1.2, kept so that removal can be exact):

* ``shards``: every shard ever opened, in order; its position is its serial (the seed of its gradient mask). A shard
  holds the ids of the facts written into it, in order, and its trained matrix (None while it holds none). Each
  starts from ``W0``, so its task vector is ``W_shard − W0``. The last shard is *open* until it holds ``save_freq``
  facts (or :meth:`SideMemory.consolidate` closes it).
* ``groups``: merge groups (lists of shard serials). A group is formed when ``k = merge_freq / save_freq`` closed
  shards are pending, or by ``consolidate``. WISE-Merge folds the groups in order into one consolidated matrix
  (first group: Ties with weights 1/n; later ones: the new shards 0.4/n each and the previous consolidated memory
  0.6); WISE-Retrieve keeps one consolidated matrix per group. Closed shards are kept after merging (one matrix
  each) so that forgetting a fact can rebuild exactly the merges it took part in.
* per fact: the in-scope activation recorded after its edit (the threshold tracker ``ε = act_ratio · min``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from editmem.strategies.wise.ties import ties_merge


@dataclasses.dataclass
class FactRecord:
    """One written fact: what it was trained on and what its edit recorded."""

    id: str
    prompt: str
    target: str
    irrelevant: list[str]
    shard: int
    act: float = float("inf")
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Shard:
    serial: int
    fact_ids: list[str] = dataclasses.field(default_factory=list)
    weight: torch.Tensor | None = None
    closed: bool = False


@dataclasses.dataclass
class Candidate:
    """A matrix the router may choose instead of ``W0``, with its threshold and the facts it carries."""

    name: str
    weight: torch.Tensor = dataclasses.field(repr=False)
    epsilon: float
    fact_ids: list[str]
    shards: list[int]


class SideMemory:
    """Shards, merge groups and thresholds of one ``wise`` strategy (pure tensor bookkeeping, no model calls)."""

    def __init__(self, W0: torch.Tensor, *, mode: str, save_freq: int, shards_per_merge: int, density: float,
                 weights: float, mask_ratio: float, seed: int):
        self.W0 = W0
        self.mode = mode
        self.save_freq = save_freq
        self.k = shards_per_merge
        self.density = density
        self.weights = weights
        self.mask_ratio = mask_ratio
        self.seed = seed
        self.shards: list[Shard] = []
        self.groups: list[list[int]] = []
        self.facts: dict[str, FactRecord] = {}
        self.merged: torch.Tensor | None = None  # merge mode
        self.memories: list[torch.Tensor | None] = []  # retrieve mode: one per group (None for an empty group)
        self._candidates: list[Candidate] | None = None
        self._candidates_ratio: float | None = None

    # -- shards ---------------------------------------------------------------------------------
    def open_shard(self) -> Shard:
        """The shard new facts go into (a fresh one when the last is closed)."""
        if not self.shards or self.shards[-1].closed:
            self.shards.append(Shard(serial=len(self.shards)))
        return self.shards[-1]

    def mask(self, serial: int) -> torch.Tensor:
        """The gradient mask of shard ``serial``: i.i.d. Bernoulli(ρ) entries, a pure function of (seed, serial)."""
        g = torch.Generator(device="cpu").manual_seed(int(self.seed) * 1_000_003 + 7919 * int(serial) + 1)
        m = torch.rand(self.W0.shape, generator=g) < self.mask_ratio
        return m.to(self.W0.device)

    def grouped(self) -> set[int]:
        return {s for g in self.groups for s in g}

    def pending(self) -> list[int]:
        """Closed shards not yet in a merge group."""
        done = self.grouped()
        return [s.serial for s in self.shards if s.closed and s.serial not in done]

    def after_write(self) -> None:
        """Close the open shard when full and merge when ``k`` closed shards are pending (spec §4.4 tail)."""
        shard = self.shards[-1]
        if not shard.closed and len(shard.fact_ids) >= self.save_freq:
            shard.closed = True
        if len(self.pending()) >= self.k:
            self.merge_pending()
        self.invalidate()

    def consolidate(self) -> bool:
        """Close a partly filled open shard and merge every pending closed shard now; True when anything changed."""
        changed = False
        if self.shards and not self.shards[-1].closed and self.shards[-1].fact_ids:
            self.shards[-1].closed = True
            changed = True
        if self.pending():
            self.merge_pending()
            changed = True
        self.invalidate()
        return changed

    def merge_pending(self) -> None:
        pending = self.pending()
        if pending:
            self.groups.append(pending)
            self.rebuild_merges()

    # -- merges ---------------------------------------------------------------------------------
    def _group_tensors(self, group: list[int]) -> list[torch.Tensor]:
        return [self.shards[s].weight for s in group if self.shards[s].weight is not None and self.shards[s].fact_ids]  # type: ignore[misc]

    def rebuild_merges(self) -> None:
        """Recompute the consolidated matrices from the shards and the groups (deterministic)."""
        self.merged, self.memories = None, []
        for group in self.groups:
            tensors = self._group_tensors(group)
            if self.mode == "retrieve":
                self.memories.append(ties_merge(self.W0, tensors, [self.weights / len(tensors)] * len(tensors), self.density)
                                     if tensors else None)
                continue
            if not tensors:
                continue
            n = len(tensors)
            if self.merged is None:
                self.merged = ties_merge(self.W0, tensors, [self.weights / n] * n, self.density)
            else:
                self.merged = ties_merge(self.W0, tensors + [self.merged], [0.4 / n] * n + [0.6], self.density)
        self.invalidate()

    # -- thresholds and routing candidates ---------------------------------------------------------
    def act_min(self, fact_ids: list[str] | None = None) -> float:
        ids = self.facts if fact_ids is None else fact_ids
        return min((self.facts[f].act for f in ids if f in self.facts), default=float("inf"))

    def invalidate(self) -> None:
        self._candidates = None

    def candidates(self, act_ratio: float) -> list[Candidate]:
        """What the router compares against ``W0``: in Merge mode the consolidated memory, every pending closed
        shard and the open shard, all against the one threshold ``ε = act_ratio · min(all recorded)``; in Retrieve
        mode one memory per group and the unmerged shards, each against its own ``act_ratio · min``."""
        if self._candidates is not None and self._candidates_ratio == act_ratio:
            return self._candidates
        out: list[Candidate] = []
        global_eps = act_ratio * self.act_min()
        grouped = self.grouped()
        if self.mode == "merge" and self.merged is not None:
            ids = [f for g in self.groups for s in g for f in self.shards[s].fact_ids]
            out.append(Candidate("merged", self.merged, global_eps, ids, sorted(grouped)))
        if self.mode == "retrieve":
            for i, (group, mem) in enumerate(zip(self.groups, self.memories)):
                ids = [f for s in group for f in self.shards[s].fact_ids]
                if mem is not None and ids:
                    out.append(Candidate(f"memory:{i}", mem, act_ratio * self.act_min(ids), ids, list(group)))
        for shard in self.shards:
            if shard.serial in grouped or shard.weight is None or not shard.fact_ids:
                continue
            eps = global_eps if self.mode == "merge" else act_ratio * self.act_min(shard.fact_ids)
            out.append(Candidate(f"shard:{shard.serial}", shard.weight, eps, list(shard.fact_ids), [shard.serial]))
        self._candidates, self._candidates_ratio = out, act_ratio
        return out

    # -- persistence ----------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"shard.{s.serial}": s.weight for s in self.shards if s.weight is not None}
        if self.merged is not None:
            tensors["merged"] = self.merged
        for i, mem in enumerate(self.memories):
            if mem is not None:
                tensors[f"memory.{i}"] = mem
        meta = {
            "shards": [{"serial": s.serial, "facts": s.fact_ids, "closed": s.closed} for s in self.shards],
            "groups": self.groups,
            "facts": [dataclasses.asdict(r) for r in self.facts.values()],
        }
        return tensors, meta  # type: ignore[return-value]

    def load(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        dev, dt = self.W0.device, self.W0.dtype
        self.shards = [Shard(serial=int(s["serial"]), fact_ids=list(s["facts"]), closed=bool(s["closed"]),
                             weight=tensors[f"shard.{s['serial']}"].to(dev, dt).clone() if f"shard.{s['serial']}" in tensors else None)
                       for s in meta.get("shards", [])]
        self.groups = [list(map(int, g)) for g in meta.get("groups", [])]
        self.facts = {r["id"]: FactRecord(**r) for r in meta.get("facts", [])}
        self.merged = tensors["merged"].to(dev, dt).clone() if "merged" in tensors else None
        self.memories = [tensors[f"memory.{i}"].to(dev, dt).clone() if f"memory.{i}" in tensors else None
                         for i in range(len(self.groups))] if self.mode == "retrieve" else []
        self.invalidate()
