"""The Chroma side of a store: opening the collection, writing replayed records as rows, reading rows and embeddings.

Chroma is a derived copy of the ledger (see :mod:`editmem.memory.store`): rows are only ever written from the
replayed state, under the writer lock, and read back for ``verify`` and for embeddings (kept in each row's
metadata as ``embedding_b64``, because metadata reads stay correct across processes and vector reads do not).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np

from editmem.facts import StoredFact
from editmem.memory.backend import collection_name, open_collection
from editmem.memory.errors import StoreUnusableError
from editmem.memory.vectors import decode_embedding, encode_embedding

CHROMA_BATCH = 2000


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


class ChromaCopy:
    """Mixin of :class:`~editmem.memory.store.EditMemory` (uses its ``state``, ``lock``, ``path``, ``chroma_url``,
    ``store_id()``, ``_index`` and ``_fresh_vectors``)."""

    def collection(self, *, create: bool = False):
        """The Chroma collection (None when it cannot be opened read-only, e.g. a read-only folder)."""
        if self._collection is not None or (self._collection_checked and not create):
            return self._collection
        self._collection_checked = True
        server = bool(self.chroma_url)
        name = collection_name(self.store_id() if server else None, server)
        try:
            if create:
                with self.lock.hold():
                    self._collection = open_collection(folder=self.path / "chroma", url=self.chroma_url, name=name, create=True)
            else:
                self._collection = open_collection(folder=self.path / "chroma", url=self.chroma_url, name=name, create=False)
        except Exception as exc:  # noqa: BLE001 - chromadb raises many kinds; a reader can do without it
            if create:
                raise StoreUnusableError(f"store {self.path}: cannot open its Chroma database ({type(exc).__name__}: {exc})") from None
            self._collection = None
        return self._collection

    @staticmethod
    def _metadata(stored: StoredFact, embedding: np.ndarray) -> dict[str, Any]:
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
            "embedding_b64": encode_embedding(embedding),
        }

    def write_rows(self, fact_ids: Sequence[str]) -> None:
        """Upsert the replayed records of ``fact_ids`` into Chroma in one call per batch (under the writer lock)."""
        ids = [i for i in dict.fromkeys(fact_ids) if i in self.state.records]
        if not ids:
            return
        collection = self.collection(create=True)
        vectors = self.embeddings(ids)
        for start in range(0, len(ids), CHROMA_BATCH):
            chunk = ids[start : start + CHROMA_BATCH]
            records = [self.state.records[i] for i in chunk]
            collection.upsert(
                ids=chunk,
                documents=[r.fact.document() for r in records],
                embeddings=[vectors[i] for i in chunk],
                metadatas=[self._metadata(r, vectors[i]) for r, i in zip(records, chunk)],
            )

    def chroma_rows(self, fact_ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Chroma metadata by id (all rows, or those of ``fact_ids``); empty without a collection."""
        collection = self.collection()
        if collection is None:
            return {}
        out: dict[str, dict[str, Any]] = {}
        if fact_ids is None:
            total = collection.count()
            for offset in range(0, total, CHROMA_BATCH):
                got = collection.get(include=["metadatas"], limit=CHROMA_BATCH, offset=offset)
                out.update(zip(got["ids"], got["metadatas"]))
            return out
        ids = list(fact_ids)
        for start in range(0, len(ids), CHROMA_BATCH):
            got = collection.get(ids=ids[start : start + CHROMA_BATCH], include=["metadatas"])
            out.update(zip(got["ids"], got["metadatas"]))
        return out

    def embeddings(self, fact_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Unit embeddings of ``fact_ids``: from Chroma metadata when stored, else computed (the same model)."""
        from editmem.memory.embedding import embed_texts

        out: dict[str, np.ndarray] = {i: self._index.vector(i) for i in fact_ids if i in self._index}
        out.update((i, self._fresh_vectors.pop(i)) for i in fact_ids if i in self._fresh_vectors and i not in out)
        wanted = [i for i in fact_ids if i in self.state.records and i not in out]
        if not wanted:
            return out
        try:
            rows = self.chroma_rows(wanted)
        except Exception:  # noqa: BLE001 - a read-only or busy database: recompute instead
            rows = {}
        for fact_id, meta in rows.items():
            vector = decode_embedding((meta or {}).get("embedding_b64", ""))
            if vector is not None:
                out[fact_id] = vector
        missing = [i for i in wanted if i not in out]
        if missing:
            vectors = embed_texts([self.state.records[i].fact.document() for i in missing])
            out.update(zip(missing, vectors))
        return out
