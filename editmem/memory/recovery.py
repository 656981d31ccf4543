"""``verify`` and ``repair``: does Chroma hold exactly what replaying the ledger gives?

The ledger is the source of truth (:mod:`editmem.memory.state`). A row disagrees when it is missing, when it is
in Chroma with no ``add`` in the ledger (an orphan, e.g. written by a version that wrote Chroma first), or when its
lifecycle differs (status, version, supersedes / superseded_by, target). Timestamps are not compared: stores
written before the ledger-first order carry creation times a few milliseconds off the ledger's.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from editmem.memory.store import EditMemory


class VerifyReport(BaseModel):
    """What :func:`verify` found; ``ok`` when nothing."""

    ledger_entries: int = 0
    facts: int = 0
    active: int = 0
    chroma_rows: int = 0
    chroma_available: bool = True
    missing: list[str] = Field(default_factory=list)
    """facts the ledger has and Chroma lacks"""
    orphans: list[str] = Field(default_factory=list)
    """Chroma rows with no ``add`` in the ledger"""
    mismatched: list[str] = Field(default_factory=list)
    """rows whose status / version / links / target differ from the replay"""
    slots_with_several_active: list[str] = Field(default_factory=list)
    """slots where Chroma shows more than one active fact"""
    duplicate_seqs: list[int] = Field(default_factory=list)
    pending_supersedes: list[str] = Field(default_factory=list)
    """facts superseded by an ``add`` whose ``supersede`` line is missing (a cut transaction)"""
    torn_tail_bytes: int = 0

    @property
    def problems(self) -> int:
        return (len(self.missing) + len(self.orphans) + len(self.mismatched) + len(self.slots_with_several_active)
                + len(self.duplicate_seqs) + len(self.pending_supersedes) + int(self.torn_tail_bytes > 0))

    @property
    def ok(self) -> bool:
        return self.problems == 0 and self.chroma_available

    def lines(self) -> list[str]:
        """Human-readable summary, one finding per line."""
        out = [f"ledger: {self.ledger_entries} entries -> {self.facts} fact versions, {self.active} active; chroma: {self.chroma_rows} rows"]
        if not self.chroma_available:
            out.append("chroma: the database cannot be opened (read-only or missing); only the ledger was checked")
        for name in ("missing", "orphans", "mismatched", "slots_with_several_active", "duplicate_seqs", "pending_supersedes"):
            values = getattr(self, name)
            if values:
                shown = ", ".join(str(v)[:10] for v in values[:5])
                out.append(f"{name.replace('_', ' ')}: {len(values)} ({shown}{', ...' if len(values) > 5 else ''})")
        if self.torn_tail_bytes:
            out.append(f"torn ledger tail: {self.torn_tail_bytes} bytes after the last complete line")
        out.append("ok: Chroma equals the replayed ledger" if self.ok else f"{self.problems} problem(s): run `editmem repair`")
        return out


def _lifecycle(record: dict[str, Any]) -> tuple:
    return (record.get("status"), record.get("version"), record.get("supersedes"), record.get("superseded_by"),
            (record.get("fact") or {}).get("target"))


def _row_record(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    try:
        return json.loads((meta or {}).get("record", ""))
    except (TypeError, ValueError):
        return None


def verify(memory: "EditMemory") -> VerifyReport:
    """Replay the ledger (the process's synced state) and compare every Chroma row with it."""
    memory.sync()
    state = memory.state
    seqs = Counter(e.seq for e in memory.ledger.entries())
    path = memory.ledger.path
    torn = 0
    if path.is_file():
        data = path.read_bytes()
        torn = len(data) - (data.rfind(b"\n") + 1)
    report = VerifyReport(
        ledger_entries=len(memory.ledger), facts=len(state.records), active=len(state.active_by_slot),
        duplicate_seqs=sorted(s for s, n in seqs.items() if n > 1), pending_supersedes=sorted(state.pending_supersedes),
        torn_tail_bytes=torn,
    )
    if memory.collection() is None:
        report.chroma_available = state.seq == 0  # an empty store needs no database yet
        report.missing = sorted(state.records) if state.records else []
        return report
    rows = memory.chroma_rows()
    report.chroma_rows = len(rows)
    active_per_slot: Counter[str] = Counter()
    for fact_id, meta in rows.items():
        record = _row_record(meta)
        if record is not None and record.get("status") == "active":
            active_per_slot[(meta or {}).get("slot", "")] += 1
        if fact_id not in state.records:
            report.orphans.append(fact_id)
        elif record is None or _lifecycle(record) != _lifecycle(json.loads(state.records[fact_id].model_dump_json())):
            report.mismatched.append(fact_id)
    report.missing = sorted(set(state.records) - set(rows))
    report.orphans.sort()
    report.mismatched.sort()
    report.slots_with_several_active = sorted(slot for slot, n in active_per_slot.items() if n > 1)
    return report


def reconcile(memory: "EditMemory") -> tuple[int, int]:
    """Under the writer lock: upsert every missing or mismatched row, delete orphans. Returns (written, deleted)."""
    report = verify(memory)
    if not report.chroma_available and memory.state.seq:
        memory.collection(create=True)
        report = verify(memory)
    todo = report.missing + report.mismatched
    memory.write_rows(todo)
    if report.orphans:
        memory.collection(create=True).delete(ids=report.orphans)
    return len(todo), len(report.orphans)
