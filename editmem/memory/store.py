"""EditMemory: the persistent, versioned, searchable source of truth for every fact edit.

A store is a folder::

    store.json      which model (name + weights fingerprint) and strategy the store was built for, and its id
    ledger.jsonl    append-only history: add / supersede / retract, with time and actor: THE source of truth
    chroma/         Chroma PersistentClient database, collection "facts" (one row per fact version), derived
    chroma.seq      the ledger sequence number Chroma is known to reflect (recovery redoes what follows)
    artifacts/      strategy tensors, rebuildable from the facts
    .lock           the writer lock (one writer at a time, any number of readers)

Writes are write-ahead: under the writer lock, a transaction's ledger lines are appended and fsync-ed, then the
in-process state is advanced by replaying them, then Chroma is upserted (both rows of a supersede in one call),
then ``chroma.seq`` moves on. A crash at any point leaves a ledger prefix that replays to a valid state; the next
writer (or :meth:`EditMemory.repair`) redoes the Chroma rows after ``chroma.seq``. Reads never touch Chroma's
vector index (see :mod:`editmem.memory.vectors`): get / list / count / history come from the replayed ledger,
search from an exact in-process matrix, so readers see every transaction whole, never half.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from editmem.facts import Fact, FactStatus, LedgerEntry, StoredFact, parse_fact, to_utc, utcnow
from editmem.memory.artifacts import ArtifactStore
from editmem.memory.backend import chroma_url_from_env
from editmem.memory.chroma_rows import ChromaCopy
from editmem.memory.meta import StoreMeta, check_folder
from editmem.memory.errors import FactNotFoundError, StoreLockedError, StoreMismatchError, StoreUnusableError
from editmem.memory.ledger import Ledger
from editmem.memory.lock import WriterLock
from editmem.memory.state import Change, MemoryState
from editmem.memory.vectors import VectorIndex

LEDGER_FILE = "ledger.jsonl"
MARKER_FILE = "chroma.seq"
BULK_ROWS = 5000  # ledger lines per write in add_many

__all__ = ["AddResult", "EditMemory", "FactNotFoundError", "StoreMismatchError"]


@dataclass
class AddResult:
    """Outcome of :meth:`EditMemory.add`.

    ``stale``: the fact was superseded earlier and is not re-activated (re-importing an old feed must not roll
    values back); pass ``revive=True`` to re-assert it deliberately.
    """

    status: Literal["added", "duplicate", "superseded", "stale"]
    stored: StoredFact
    replaced: StoredFact | None = None


class EditMemory(StoreMeta, ChromaCopy):
    """Ledger + Chroma collection + artifact folder of one store directory.

    Args:
        path: the store folder (created when missing).
        chroma_url: a Chroma server (``http://127.0.0.1:8000``) instead of the local database
            (default: ``EDITMEM_CHROMA_URL``, else the store's recorded one, else local).
        lock_timeout: seconds a write waits for another writer before :class:`~editmem.memory.errors.StoreLockedError`.
        readonly: serve reads only, never write a byte (default: ``EDITMEM_READONLY``, else whether the folder is
            writable). Reads then come from the ledger alone; embeddings are recomputed if Chroma cannot be opened.
        follow: reads first catch up with the ledger (other processes' writes). :class:`~editmem.EditableLLM` turns
            this off and calls :meth:`sync` itself, so its strategy and the memory always agree.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        chroma_url: str | None = None,
        lock_timeout: float | None = None,
        follow: bool = True,
        readonly: bool | None = None,
    ):
        self.path = Path(path)
        check_folder(self.path)
        if not self.path.exists():
            try:
                self.path.mkdir(parents=True)
            except OSError as exc:
                raise StoreUnusableError(f"cannot create store folder {self.path}: {exc.strerror}") from None
        env_readonly = os.environ.get("EDITMEM_READONLY", "").lower() in ("1", "true", "yes")
        self.readonly = readonly if readonly is not None else env_readonly or not os.access(self.path, os.W_OK)
        self.follow = follow
        self.lock = WriterLock(self.path, lock_timeout)
        meta = self.read_meta() or {}
        self.chroma_url = chroma_url or chroma_url_from_env() or meta.get("chroma_url") or None
        self.ledger = Ledger(self.path / LEDGER_FILE, create=False)
        self.state = MemoryState()
        self._index = VectorIndex()
        self._collection = None
        self._collection_checked = False
        self._fresh_vectors: dict[str, np.ndarray] = {}  # embeddings computed before a write, used by it
        #: set by tests and the crash bench: called between the ledger write and the Chroma write
        self._after_ledger_write = None
        self.sync()
        if not self.readonly and self._needs_recovery():
            try:
                with self.lock.hold(timeout=0):
                    self._recover_locked()
            except StoreLockedError:
                pass  # another writer holds the lock: it recovers before its own next write

    def artifacts(self, strategy: str) -> ArtifactStore:
        return ArtifactStore(self.path / "artifacts" / strategy)

    # -- keeping up with the ledger --------------------------------------------------------------
    @property
    def seq(self) -> int:
        """The ledger sequence number this process's view reflects."""
        return self.state.seq

    def sync(self) -> Change:
        """Read ledger lines other processes appended and advance the state and the search index to them."""
        change = self.state.apply_all(self.ledger.refresh())
        self._update_index(change)
        return change

    def _update_index(self, change: Change) -> None:
        """Drop rows of facts no longer active; (re)put the active ones the change touched."""
        self._index.discard(i for i in change.ids if not self.state.records[i].active)
        todo = [i for i in change.ids if self.state.records[i].active]
        if not todo:
            return
        known = {i: self._index.vector(i) for i in todo if i in self._index}
        vectors = {**self.embeddings([i for i in todo if i not in known]), **known}
        for fact_id in todo:
            fact = self.state.records[fact_id].fact
            self._index.put(fact_id, vectors[fact_id], namespace=fact.namespace, valid_from=fact.valid_from, valid_to=fact.valid_to)

    def _follow(self) -> None:
        if self.follow:
            self.sync()

    def changes_since(self, seq: int) -> tuple[set[str], set[str]]:
        """``(now_active, no_longer_active)`` fact ids touched by ledger entries after ``seq`` (for strategy sync)."""
        touched: set[str] = set()
        for entry in self.ledger.entries(since=seq):
            if entry.seq > self.state.seq:
                break
            touched.add(entry.fact_id)
            if entry.action == "add":
                stored = self.state.records.get(entry.fact_id)
                if stored is not None and stored.supersedes:
                    touched.add(stored.supersedes)
        active = {i for i in touched if i in self.state.records and self.state.records[i].active}
        return active, touched - active

    # -- recovery --------------------------------------------------------------------------------
    def _marker(self) -> int | None:
        try:
            return int((self.path / MARKER_FILE).read_text().strip())
        except (OSError, ValueError):
            return None

    def _write_marker(self, seq: int) -> None:
        tmp = self.path / f".{MARKER_FILE}.{os.getpid()}.tmp"
        tmp.write_text(str(seq))
        tmp.replace(self.path / MARKER_FILE)

    def _needs_recovery(self) -> bool:
        if self.state.pending_supersedes:
            return True
        size = self.ledger.path.stat().st_size if self.ledger.path.is_file() else 0
        if size and self.ledger.path.read_bytes()[-1:] != b"\n":
            return True
        marker = self._marker()
        return self.state.seq > 0 and (marker is None or marker != self.state.seq)

    def _recover_locked(self, *, full: bool = False) -> dict[str, int]:
        """Under the writer lock: cut a torn ledger tail, finish a cut supersede, redo Chroma rows past ``chroma.seq``."""
        from editmem.memory.recovery import reconcile

        report = {"torn_bytes": self.ledger.truncate_torn_tail(), "supersedes_appended": 0, "rows_written": 0, "rows_deleted": 0}
        self.sync()
        if self.state.pending_supersedes:
            rows = [("supersede", old, self.state.records[old].fact.subject, {"by": new, "recovered": True})
                    for old, new in sorted(self.state.pending_supersedes.items())]
            self.state.apply_all(self.ledger.append(rows, actor="recovery"))
            report["supersedes_appended"] = len(rows)
        marker = self._marker()
        if self.state.seq == 0 and marker is None:
            return report
        if full or marker is None or marker > self.state.seq:
            written, deleted = reconcile(self)  # unknown starting point: compare every row
            report["rows_written"], report["rows_deleted"] = written, deleted
        elif marker < self.state.seq:
            touched = [e.fact_id for e in self.ledger.entries(since=marker)]
            touched += [s for i in touched if (s := self.state.records[i].supersedes)] if touched else []
            self.write_rows(touched)
            report["rows_written"] = len(set(touched))
        self._write_marker(self.state.seq)
        return report

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Writer lock + catch up with the ledger + recovery: the preamble of every change."""
        if self.readonly:
            raise StoreUnusableError(f"store {self.path} is read-only: it serves reads (list, show, history, ask), not writes")
        with self.lock.hold():
            self._recover_locked() if self._needs_recovery() else self.sync()
            yield

    def _commit(self, rows: list[tuple[str, str, str | None, dict[str, Any]]], *, actor: str) -> Change:
        entries = self.ledger.append(rows, actor=actor)
        change = self.state.apply_all(entries)
        if self._after_ledger_write is not None:
            self._after_ledger_write(entries)
        self._update_index(change)
        self.write_rows(sorted(change.ids))
        self._write_marker(self.state.seq)
        return change

    # -- public API ----------------------------------------------------------------------------
    def add(self, fact: Fact | dict[str, Any], *, actor: str = "sdk", revive: bool = False) -> AddResult:
        """Store a fact. Idempotent: the same subject/prompt/target again is a ``duplicate``.

        A fact whose subject and prompt match an active fact with another target *supersedes* it: the old record
        stays, marked ``superseded`` with ``valid_to`` set, and the ledger records both in one transaction. A
        retracted fact sent again is revived; a superseded one is ``stale`` (not re-activated) unless ``revive``.
        """
        from editmem.memory.embedding import embed_texts

        fact = parse_fact(fact, record="fact") if not isinstance(fact, Fact) else fact
        if fact.id not in self.state.records:  # embed before taking the lock: other writers wait less
            self._fresh_vectors[fact.id] = embed_texts([fact.document()])[0]
        try:
            return self._add_locked(fact, actor=actor, revive=revive)
        finally:
            self._fresh_vectors.pop(fact.id, None)

    def _add_locked(self, fact: Fact, *, actor: str, revive: bool) -> AddResult:
        with self._transaction():
            existing = self.state.records.get(fact.id)
            if existing is not None and existing.active:
                return AddResult("duplicate", existing)
            if existing is not None and existing.status is FactStatus.superseded and not revive:
                return AddResult("stale", existing)
            previous = self.state.active_in_slot(fact.slot)
            rows: list[tuple[str, str, str | None, dict[str, Any]]] = [
                ("add", fact.id, fact.subject, {"fact": fact.model_dump(mode="json"), "version": self.state.next_version(fact.slot)})
            ]
            if previous is not None:
                rows.append(("supersede", previous.id, fact.subject, {"by": fact.id}))
            self._commit(rows, actor=actor)
            stored = self.state.records[fact.id]
            replaced = self.state.records[previous.id] if previous is not None else None
        return AddResult("superseded" if replaced is not None else "added", stored, replaced)

    def add_many(
        self, facts: Sequence[Fact | dict[str, Any]], *, actor: str = "sdk", vectors: Mapping[str, np.ndarray] | None = None
    ) -> list[AddResult]:
        """:meth:`add` for many facts in one transaction: one lock, one ledger write, Chroma rows upserted in batches.

        Same outcomes as adding them one by one, in order (a later fact in the batch may supersede an earlier one).
        ``vectors`` may supply embeddings by fact id (the scale benchmark synthesises them); others are computed
        in one batch before the lock is taken. A crash midway leaves a ledger prefix that recovery completes.
        """
        from editmem.memory.embedding import embed_texts

        parsed = [f if isinstance(f, Fact) else parse_fact(f, record=f"fact[{i}]") for i, f in enumerate(facts)]
        given = dict(vectors or {})
        todo = [f for f in dict((f.id, f) for f in parsed).values() if f.id not in self.state.records and f.id not in given]
        computed = embed_texts([f.document() for f in todo]) if todo else []
        self._fresh_vectors.update({**given, **dict(zip((f.id for f in todo), computed))})
        try:
            with self._transaction():
                return self._add_many_locked(parsed, actor=actor)
        finally:
            self._fresh_vectors.clear()

    def _add_many_locked(self, facts: list[Fact], *, actor: str) -> list[AddResult]:
        status: dict[str, FactStatus] = {}
        active: dict[str, str | None] = {}
        versions: dict[str, int] = {}
        rows: list[tuple[str, str, str | None, dict[str, Any]]] = []
        outcomes: list[tuple[str, str, str | None]] = []  # (status, fact id, replaced id)
        for fact in facts:
            record = self.state.records.get(fact.id)
            current = status.get(fact.id, record.status if record is not None else None)
            if current is FactStatus.active or current is FactStatus.superseded:
                outcomes.append(("duplicate" if current is FactStatus.active else "stale", fact.id, None))
                continue
            previous = active[fact.slot] if fact.slot in active else self.state.active_by_slot.get(fact.slot)
            version = versions.get(fact.slot, self.state.next_version(fact.slot))
            versions[fact.slot] = version + 1
            rows.append(("add", fact.id, fact.subject, {"fact": fact.model_dump(mode="json"), "version": version}))
            if previous is not None:
                rows.append(("supersede", previous, fact.subject, {"by": fact.id}))
                status[previous] = FactStatus.superseded
            status[fact.id] = FactStatus.active
            active[fact.slot] = fact.id
            outcomes.append(("superseded" if previous else "added", fact.id, previous))
        start = 0
        while start < len(rows):  # writes of BULK_ROWS lines; a supersede never straddles two writes
            end = min(len(rows), start + BULK_ROWS)
            while end < len(rows) and rows[end][0] == "supersede":
                end += 1
            entries = self.ledger.append(rows[start:end], actor=actor)
            self.state.apply_all(entries)
            if self._after_ledger_write is not None:
                self._after_ledger_write(entries)
            start = end
        if rows:
            touched = sorted({fact_id for _, fact_id, _, _ in rows})
            self._update_index(Change(ids=set(touched)))
            self.write_rows(touched)
            self._write_marker(self.state.seq)
        records = self.state.records
        return [AddResult(kind, records[i], records[r] if r else None) for kind, i, r in outcomes]

    def retract(self, fact_id: str, *, actor: str = "sdk", reason: str | None = None) -> StoredFact:
        """Mark a fact retracted (its record and history stay). Raises :class:`FactNotFoundError`.

        Retracting an already retracted fact changes nothing and writes nothing (see :meth:`is_retracted`).
        """
        with self._transaction():
            stored = self.get(fact_id)
            if stored.status is FactStatus.retracted:
                return stored
            self._commit([("retract", stored.id, stored.fact.subject, {"reason": reason})], actor=actor)
            return self.state.records[stored.id]

    def active_in_slot(self, slot: str) -> StoredFact | None:
        self._follow()
        return self.state.active_in_slot(slot)

    def get(self, fact_id: str) -> StoredFact:
        self._follow()
        stored = self.state.records.get(fact_id)
        if stored is None:
            raise FactNotFoundError(f"no fact with id {fact_id!r} in store {self.path}")
        return stored

    def resolve_id(self, prefix: str) -> str:
        """Full id from an unambiguous prefix (the CLI shows short ids)."""
        self._follow()
        matches = [i for i in self.state.records if i.startswith(prefix)]
        if len(matches) != 1:
            raise FactNotFoundError(f"{'no' if not matches else 'ambiguous'} fact id {prefix!r} ({len(matches)} matches)")
        return matches[0]

    def list(
        self,
        *,
        status: FactStatus | str | None = FactStatus.active,
        subject: str | None = None,
        where: dict[str, Any] | None = None,
        limit: int | None = None,
        as_of: datetime | None = None,
    ) -> list[StoredFact]:
        """Stored facts, filtered by status (None = all), subject (case-insensitive), a Chroma ``where`` filter
        and validity at ``as_of``; oldest first."""
        self._follow()
        wanted = FactStatus(status) if status is not None else None
        key = subject.casefold() if subject is not None else None
        facts = [
            s for s in self.state.records.values()
            if (wanted is None or s.status is wanted) and (key is None or s.fact.subject.casefold() == key)
            and (as_of is None or s.fact.valid_at(as_of))
        ]
        if where:
            collection = self.collection()
            if collection is None:
                raise StoreUnusableError(f"store {self.path}: a `where` filter needs its Chroma database, which cannot be opened")
            allowed = set(collection.get(where=where, include=[])["ids"])
            facts = [s for s in facts if s.id in allowed]
        facts.sort(key=lambda s: (s.created_at, s.id))
        return facts[:limit] if limit is not None else facts

    def search(
        self,
        query: str,
        *,
        k: int = 5,
        status: FactStatus | str | None = FactStatus.active,
        namespace: str | None = None,
        as_of: datetime | None = None,
    ) -> list[tuple[StoredFact, float]]:
        """Semantic search: the ``k`` nearest facts with their cosine similarity (1 = same direction).

        Exact search over the process's own matrix (see :mod:`editmem.memory.vectors`). ``as_of`` keeps only facts
        valid at that instant (``valid_from <= as_of < valid_to``); None applies no time filter.
        """
        from editmem.memory.embedding import embed_texts

        self._follow()
        when = to_utc(as_of)
        if status is not None and FactStatus(status) is FactStatus.active:
            index = self._index
        else:
            index = VectorIndex()
            pool = [s for s in self.state.records.values() if status is None or s.status is FactStatus(status)]
            vectors = self.embeddings([s.id for s in pool])
            for s in pool:
                index.put(s.id, vectors[s.id], namespace=s.fact.namespace, valid_from=s.fact.valid_from, valid_to=s.fact.valid_to)
        if len(index) == 0:
            return []
        query_vector = embed_texts([query])[0]
        return [(self.state.records[i], score) for i, score in index.search(query_vector, k, namespace=namespace, as_of=when)]

    def history(self, subject: str) -> list[LedgerEntry]:
        """Every ledger entry about ``subject`` (case-insensitive), oldest first."""
        self._follow()
        return self.ledger.entries(subject=subject)

    def count(self, status: FactStatus | str | None = FactStatus.active) -> int:
        self._follow()
        if status is None:
            return len(self.state.records)
        if FactStatus(status) is FactStatus.active:
            return len(self.state.active_by_slot)
        return sum(1 for s in self.state.records.values() if s.status is FactStatus(status))

    def invalid_ids(self, as_of: datetime | None = None) -> frozenset[str]:
        """Active facts *not* valid at ``as_of`` (default now): what a retrieval-gated strategy must not fire."""
        when = to_utc(as_of) or utcnow()
        return frozenset(s.id for s in self.state.active() if not s.fact.valid_at(when))

    # -- checks ----------------------------------------------------------------------------------
    def verify(self):
        """Compare Chroma with the replayed ledger (see :func:`editmem.memory.recovery.verify`)."""
        from editmem.memory.recovery import verify

        return verify(self)

    def repair(self):
        """Make Chroma equal the replayed ledger (and finish a cut transaction); returns the report after repair."""
        from editmem.memory.recovery import verify

        if self.readonly:
            raise StoreUnusableError(f"store {self.path} is read-only: it cannot be repaired in place")
        with self.lock.hold():
            self._recover_locked(full=True)
        return verify(self)
