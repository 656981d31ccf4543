"""EditMemory: the persistent, versioned, searchable source of truth for every fact edit.

A store is a folder::

    store.json      which model (name + weights fingerprint) and strategy the store was built for
    chroma/         Chroma PersistentClient database, collection "facts" (one row per fact version)
    ledger.jsonl    append-only history: add / supersede / retract, with time and actor
    artifacts/      strategy tensors, rebuildable from the facts

Chroma's PersistentClient is single-process: one writer per store (use a Chroma server for more).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from editmem.facts import Fact, FactStatus, LedgerEntry, StoredFact, parse_fact, utcnow
from editmem.memory.artifacts import ArtifactStore
from editmem.memory.ledger import Ledger

COLLECTION = "facts"
STORE_FORMAT = 1


class StoreMismatchError(RuntimeError):
    """The store was built for another model (or strategy) than the one it is opened with."""


class FactNotFoundError(KeyError):
    """No fact with that id in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "fact not found"


@dataclass
class AddResult:
    """Outcome of :meth:`EditMemory.add`."""

    status: Literal["added", "duplicate", "superseded"]
    stored: StoredFact
    replaced: StoredFact | None = None


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


class EditMemory:
    """Chroma collection + ledger + artifact folder for one store directory."""

    def __init__(self, path: str | Path):
        import chromadb
        from chromadb.config import Settings

        from editmem.memory.embedding import LocalMiniLMEmbedding

        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._client = chromadb.PersistentClient(
            path=str(self.path / "chroma"), settings=Settings(anonymized_telemetry=False, allow_reset=False)
        )
        self._collection = self._client.get_or_create_collection(
            COLLECTION, embedding_function=LocalMiniLMEmbedding(), configuration={"hnsw": {"space": "cosine"}}
        )
        self.ledger = Ledger(self.path / "ledger.jsonl")

    # -- store metadata ------------------------------------------------------------------------
    @property
    def meta_path(self) -> Path:
        return self.path / "store.json"

    def read_meta(self) -> dict[str, Any] | None:
        return json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else None

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.meta_path.write_text(json.dumps({"format": STORE_FORMAT, **meta}, indent=2, default=str))

    def check_model(self, *, model_name: str, fingerprint: str, strategy: str) -> None:
        """Record the model/strategy on first open; refuse a different model afterwards."""
        meta = self.read_meta()
        if meta is None:
            self.write_meta({"model": model_name, "fingerprint": fingerprint, "strategy": strategy, "created_at": utcnow()})
            return
        if meta.get("fingerprint") != fingerprint:
            raise StoreMismatchError(
                f"store {self.path} was built for model {meta.get('model')!r} (fingerprint {meta.get('fingerprint')}), "
                f"not {model_name!r} (fingerprint {fingerprint}). Open it with that model, or use a new store folder."
            )
        if meta.get("strategy") != strategy:
            meta["strategy"] = strategy  # strategies are rebuildable artifacts: switching is allowed, and recorded
            self.write_meta(meta)

    def artifacts(self, strategy: str) -> ArtifactStore:
        return ArtifactStore(self.path / "artifacts" / strategy)

    # -- records <-> chroma --------------------------------------------------------------------
    @staticmethod
    def _metadata(stored: StoredFact) -> dict[str, Any]:
        fact = stored.fact
        prov = fact.provenance
        return {
            "subject": fact.subject,
            "subject_key": fact.subject.casefold(),
            "prompt": fact.prompt,
            "target": fact.target,
            "slot": fact.slot,
            "status": stored.status.value,
            "version": stored.version,
            "namespace": fact.namespace,
            "relation": fact.relation or "",
            "tags": ",".join(fact.tags),
            "source": prov.source,
            "feed": prov.feed or "",
            "author": prov.author or "",
            "ingested_at": _iso(prov.ingested_at),
            "valid_from": _iso(fact.valid_from),
            "valid_to": _iso(fact.valid_to),
            "content_hash": fact.content_hash(),
            "record": stored.model_dump_json(),
        }

    @staticmethod
    def _from_metadata(metadata: dict[str, Any]) -> StoredFact:
        return StoredFact.model_validate_json(metadata["record"])

    def _upsert(self, stored: StoredFact) -> None:
        self._collection.upsert(ids=[stored.id], documents=[stored.fact.document()], metadatas=[self._metadata(stored)])

    def _get_where(self, where: dict[str, Any] | None, limit: int | None = None) -> list[StoredFact]:
        result = self._collection.get(where=where, include=["metadatas"], limit=limit)
        return [self._from_metadata(m) for m in result["metadatas"]]

    # -- public API ----------------------------------------------------------------------------
    def add(self, fact: Fact | dict[str, Any], *, actor: str = "sdk") -> AddResult:
        """Store a fact. Idempotent: the same subject/prompt/target again is a ``duplicate`` (a retracted one is revived).

        A fact whose subject and prompt match an active fact with another target *supersedes* it: the old record
        stays, marked ``superseded`` with ``valid_to`` set, and the ledger records both.
        """
        fact = parse_fact(fact, record="fact") if not isinstance(fact, Fact) else fact
        existing = self._collection.get(ids=[fact.id], include=["metadatas"])
        if existing["ids"]:
            stored = self._from_metadata(existing["metadatas"][0])
            if stored.active:
                return AddResult("duplicate", stored)
            # re-asserting a retracted/superseded fact makes it active again (a new version in its slot)
        previous = self.active_in_slot(fact.slot)
        version = 1 + max((s.version for s in self._get_where({"slot": fact.slot})), default=0)
        stored = StoredFact(fact=fact, id=fact.id, version=version, supersedes=previous.id if previous else None)
        replaced = None
        if previous is not None:
            previous.status = FactStatus.superseded
            previous.superseded_by = stored.id
            previous.fact = previous.fact.model_copy(update={"valid_to": fact.valid_from or utcnow()})
            self._upsert(previous)
            replaced = previous
        self._upsert(stored)
        self.ledger.append("add", stored.id, actor=actor, subject=fact.subject, fact=fact.model_dump(mode="json"), version=version)
        if replaced is not None:
            self.ledger.append("supersede", replaced.id, actor=actor, subject=fact.subject, by=stored.id)
        return AddResult("superseded" if replaced else "added", stored, replaced)

    def active_in_slot(self, slot: str) -> StoredFact | None:
        found = self._get_where({"$and": [{"slot": slot}, {"status": FactStatus.active.value}]})
        return found[0] if found else None

    def get(self, fact_id: str) -> StoredFact:
        result = self._collection.get(ids=[fact_id], include=["metadatas"])
        if not result["ids"]:
            raise FactNotFoundError(f"no fact with id {fact_id!r} in store {self.path}")
        return self._from_metadata(result["metadatas"][0])

    def resolve_id(self, prefix: str) -> str:
        """Full id from an unambiguous prefix (the CLI shows short ids)."""
        matches = [s.id for s in self.list(status=None) if s.id.startswith(prefix)]
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
    ) -> list[StoredFact]:
        """Stored facts, filtered by status (None = all), subject (case-insensitive) and a Chroma ``where`` filter."""
        clauses: list[dict[str, Any]] = []
        if status is not None:
            clauses.append({"status": FactStatus(status).value})
        if subject is not None:
            clauses.append({"subject_key": subject.casefold()})
        if where:
            clauses.append(where)
        filt = None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}
        facts = self._get_where(filt, limit)
        return sorted(facts, key=lambda s: (s.created_at, s.id))

    def search(self, query: str, *, k: int = 5, status: FactStatus | str | None = FactStatus.active, namespace: str | None = None) -> list[tuple[StoredFact, float]]:
        """Semantic search: the ``k`` nearest facts with their cosine similarity (1 = same direction)."""
        count = self._collection.count()
        if count == 0:
            return []
        clauses: list[dict[str, Any]] = []
        if status is not None:
            clauses.append({"status": FactStatus(status).value})
        if namespace is not None:
            clauses.append({"namespace": namespace})
        filt = None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}
        result = self._collection.query(query_texts=[query], n_results=min(k, count), where=filt, include=["metadatas", "distances"])
        return [(self._from_metadata(m), 1.0 - float(d)) for m, d in zip(result["metadatas"][0], result["distances"][0])]

    def retract(self, fact_id: str, *, actor: str = "sdk", reason: str | None = None) -> StoredFact:
        """Mark a fact retracted (its record and history stay). Raises :class:`FactNotFoundError`."""
        stored = self.get(fact_id)
        if stored.status is FactStatus.retracted:
            return stored
        stored.status = FactStatus.retracted
        stored.retracted_at = utcnow()
        stored.fact = stored.fact.model_copy(update={"valid_to": stored.retracted_at})
        self._upsert(stored)
        self.ledger.append("retract", stored.id, actor=actor, subject=stored.fact.subject, reason=reason)
        return stored

    def history(self, subject: str) -> list[LedgerEntry]:
        """Every ledger entry about ``subject`` (case-insensitive), oldest first."""
        return self.ledger.entries(subject=subject)

    def count(self, status: FactStatus | str | None = FactStatus.active) -> int:
        if status is None:
            return self._collection.count()
        return len(self._collection.get(where={"status": FactStatus(status).value}, include=[])["ids"])
