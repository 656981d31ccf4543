"""Exact in-process vector search over fact embeddings (numpy), and the embedding codec for Chroma metadata.

Why not Chroma's own HNSW query: a Chroma ``PersistentClient`` in a *reader* process keeps the index it loaded
and fails with ``Error finding id`` as soon as a writer process adds rows (measured: 40 of 40 queries failed while
an import ran, and kept failing after it ended). Metadata reads stay correct across processes, so each fact's
embedding is also kept in its metadata (``embedding_b64``, float32) and every process searches its own exact
matrix, kept in step with the ledger. Exact search is also what the design asks for; at 100,000 facts the
matrix is 147 MiB and one query a single matrix-vector product (bench/store_scale.py).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from datetime import datetime

import numpy as np

DIM = 384
NO_TIME = np.inf


def encode_embedding(vector: np.ndarray) -> str:
    """float32 bytes of ``vector`` as base64 (Chroma metadata values must be scalars)."""
    return base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode("ascii")


def decode_embedding(text: str) -> np.ndarray | None:
    """Inverse of :func:`encode_embedding`; None for a missing or damaged value (it is then recomputed)."""
    try:
        vector = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.float32)
    except (ValueError, TypeError, AttributeError):
        return None
    return vector.copy() if vector.shape == (DIM,) else None


def _ts(value: datetime | None, default: float) -> float:
    return value.timestamp() if value is not None else default


class VectorIndex:
    """Unit embeddings of the facts eligible for search, with their namespace and validity window.

    Rows are added and removed by fact id; the matrix is rebuilt lazily (once per batch of changes).
    """

    def __init__(self) -> None:
        self._rows: dict[str, tuple[np.ndarray, str, float, float]] = {}
        self._dirty = True
        self._ids: list[str] = []
        self._matrix = np.zeros((0, DIM), dtype=np.float32)
        self._namespace = np.zeros(0, dtype=object)
        self._start = np.zeros(0)
        self._end = np.zeros(0)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, fact_id: str) -> bool:
        return fact_id in self._rows

    def put(self, fact_id: str, vector: np.ndarray, *, namespace: str, valid_from: datetime | None, valid_to: datetime | None) -> None:
        self._rows[fact_id] = (np.asarray(vector, dtype=np.float32), namespace, _ts(valid_from, -NO_TIME), _ts(valid_to, NO_TIME))
        self._dirty = True

    def vector(self, fact_id: str) -> np.ndarray:
        return self._rows[fact_id][0]

    def discard(self, fact_ids: Iterable[str]) -> None:
        for fact_id in fact_ids:
            if self._rows.pop(fact_id, None) is not None:
                self._dirty = True

    def _build(self) -> None:
        self._ids = list(self._rows)
        rows = [self._rows[i] for i in self._ids]
        self._matrix = np.stack([r[0] for r in rows]) if rows else np.zeros((0, DIM), dtype=np.float32)
        self._namespace = np.array([r[1] for r in rows], dtype=object)
        self._start = np.array([r[2] for r in rows], dtype=np.float64)
        self._end = np.array([r[3] for r in rows], dtype=np.float64)
        self._dirty = False

    def search(self, query: np.ndarray, k: int, *, namespace: str | None = None, as_of: datetime | None = None) -> list[tuple[str, float]]:
        """The ``k`` best ``(fact_id, cosine)`` among rows in ``namespace`` and valid at ``as_of`` (None: any time)."""
        if self._dirty:
            self._build()
        if not self._ids or k < 1:
            return []
        scores = self._matrix @ np.asarray(query, dtype=np.float32)
        mask = np.ones(len(self._ids), dtype=bool)
        if namespace is not None:
            mask &= self._namespace == namespace
        if as_of is not None:
            t = as_of.timestamp()
            mask &= (self._start <= t) & (t < self._end)
        candidates = np.flatnonzero(mask)
        if candidates.size == 0:
            return []
        sub = -scores[candidates]
        if sub.size > k:  # partial sort: O(n) for the usual k of 1-5
            top = np.argpartition(sub, k - 1)[:k]
            top = top[np.argsort(sub[top], kind="stable")]
        else:
            top = np.argsort(sub, kind="stable")
        picked = candidates[top]
        return [(self._ids[i], float(scores[i])) for i in picked]

    def nbytes(self) -> int:
        """Bytes held by the search matrix (for the scale benchmark)."""
        if self._dirty:
            self._build()
        return int(self._matrix.nbytes)
