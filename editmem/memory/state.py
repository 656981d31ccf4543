"""Replaying the ledger: the current state of every fact, derived from the ledger alone.

The replay is the definition of the store's state; Chroma's rows must equal it (``editmem verify``), and every
process (writer or reader) keeps its own replay in step by reading new ledger lines (sync by ledger sequence).

Rules, applied in ledger order:

* ``add``: the fact becomes active (a retracted one is revived as a new version). If another fact is active in
  its slot, that one becomes ``superseded`` *by this line alone*, so a transaction cut after its ``add`` line
  still leaves exactly one active fact per slot. Its ``valid_to`` becomes the new fact's ``valid_from`` (or the
  entry's time), never earlier than its own ``valid_from``.
* ``supersede``: history of the above (a no-op when the ``add`` already superseded it); recovery appends it when a
  crash left it out.
* ``retract``: the fact becomes ``retracted`` with ``retracted_at`` = the entry's time; its validity is untouched
  (a retraction says the record was wrong, not when the world changed), so no retraction makes an invalid record.

Every timestamp comes from the ledger entry, so replaying twice gives identical records.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from editmem.facts import Fact, FactStatus, LedgerEntry, StoredFact


@dataclass
class Change:
    """Fact ids whose record changed in one replay step (for Chroma sync and strategy sync)."""

    ids: set[str] = field(default_factory=set)
    activated: set[str] = field(default_factory=set)
    deactivated: set[str] = field(default_factory=set)

    def merge(self, other: "Change") -> None:
        self.ids |= other.ids
        self.activated = (self.activated - other.deactivated) | other.activated
        self.deactivated = (self.deactivated - other.activated) | other.deactivated


class MemoryState:
    """Records by id, the active fact per slot and the highest version per slot, as of ledger seq :attr:`seq`."""

    def __init__(self) -> None:
        self.records: dict[str, StoredFact] = {}
        self.active_by_slot: dict[str, str] = {}
        self.max_version: dict[str, int] = {}
        self.seq = 0
        #: facts superseded by an ``add`` whose ``supersede`` line has not been read (yet): old id -> new id
        self.pending_supersedes: dict[str, str] = {}

    def apply_all(self, entries: list[LedgerEntry]) -> Change:
        change = Change()
        for entry in entries:
            change.merge(self.apply(entry))
        return change

    def apply(self, entry: LedgerEntry) -> Change:
        """Apply one ledger entry; returns what changed."""
        self.seq = max(self.seq, entry.seq)
        if entry.action == "add":
            return self._add(entry)
        if entry.action == "supersede":
            return self._supersede(entry)
        if entry.action == "retract":
            return self._retract(entry)
        return Change()  # "reapply" and future actions do not change records

    def _add(self, entry: LedgerEntry) -> Change:
        fact = Fact.model_validate(entry.detail["fact"])
        slot = fact.slot
        change = Change(ids={entry.fact_id}, activated={entry.fact_id})
        previous_id = self.active_by_slot.get(slot)
        if previous_id == entry.fact_id:
            return Change()  # re-adding the active fact: already in force
        version = int(entry.detail.get("version") or self.max_version.get(slot, 0) + 1)
        if previous_id is not None:
            self._mark_superseded(previous_id, by=entry.fact_id, at=fact.valid_from or entry.at)
            self.pending_supersedes[previous_id] = entry.fact_id
            change.ids.add(previous_id)
            change.deactivated.add(previous_id)
        self.records[entry.fact_id] = StoredFact(
            fact=fact, id=entry.fact_id, version=version, supersedes=previous_id, created_at=entry.at
        )
        self.active_by_slot[slot] = entry.fact_id
        self.max_version[slot] = max(self.max_version.get(slot, 0), version)
        return change

    def _mark_superseded(self, fact_id: str, *, by: str, at) -> None:
        old = self.records[fact_id]
        valid_to = at if old.fact.valid_from is None or at >= old.fact.valid_from else old.fact.valid_from
        if old.fact.valid_to is not None and old.fact.valid_to < valid_to:
            valid_to = old.fact.valid_to  # it had already expired: keep the earlier end
        self.records[fact_id] = old.model_copy(
            update={"status": FactStatus.superseded, "superseded_by": by, "fact": old.fact.model_copy(update={"valid_to": valid_to})}
        )
        if self.active_by_slot.get(old.fact.slot) == fact_id:
            del self.active_by_slot[old.fact.slot]

    def _supersede(self, entry: LedgerEntry) -> Change:
        self.pending_supersedes.pop(entry.fact_id, None)
        stored = self.records.get(entry.fact_id)
        if stored is None or not stored.active:
            return Change()
        self._mark_superseded(entry.fact_id, by=str(entry.detail.get("by") or ""), at=entry.at)
        return Change(ids={entry.fact_id}, deactivated={entry.fact_id})

    def _retract(self, entry: LedgerEntry) -> Change:
        stored = self.records.get(entry.fact_id)
        if stored is None or stored.status is FactStatus.retracted:
            return Change()
        self.records[entry.fact_id] = stored.model_copy(update={"status": FactStatus.retracted, "retracted_at": entry.at})
        if self.active_by_slot.get(stored.fact.slot) == entry.fact_id:
            del self.active_by_slot[stored.fact.slot]
        return Change(ids={entry.fact_id}, deactivated={entry.fact_id})

    # -- queries -------------------------------------------------------------------------------
    def active_in_slot(self, slot: str) -> StoredFact | None:
        fact_id = self.active_by_slot.get(slot)
        return self.records[fact_id] if fact_id else None

    def next_version(self, slot: str) -> int:
        return self.max_version.get(slot, 0) + 1

    def active(self) -> list[StoredFact]:
        return [self.records[i] for i in self.active_by_slot.values()]


def replay(entries: list[LedgerEntry]) -> MemoryState:
    """A fresh :class:`MemoryState` from ``entries`` (the whole ledger)."""
    state = MemoryState()
    state.apply_all(entries)
    return state
