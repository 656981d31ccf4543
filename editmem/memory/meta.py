"""store.json (which model, strategy, store id and Chroma server a store belongs to) and the store-folder check.

A store keeps its model and its strategy: opening it with another model raises :class:`StoreMismatchError`, with
another strategy too unless the switch is deliberate. A damaged store.json is named, never silently replaced.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from editmem.facts import utcnow
from editmem.memory.errors import StoreMismatchError, StoreUnusableError

STORE_FORMAT = 2
META_FILE = "store.json"
#: a non-empty folder holding none of these (hidden files aside) is not a store and is never taken over
STORE_MARKERS = frozenset({META_FILE, "ledger.jsonl", "chroma"})


def check_folder(path: Path) -> None:
    """Refuse a path that is a file, or a non-empty folder that is not a store (it would be silently taken over)."""
    if path.exists() and not path.is_dir():
        raise StoreUnusableError(f"store path {path} is a file, not a folder")
    if not path.is_dir():
        return
    names = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    if names and not names & STORE_MARKERS:
        sample = ", ".join(sorted(names)[:3])
        raise StoreUnusableError(
            f"folder {path} is not an editmem store: it holds {len(names)} other file(s) ({sample}{', ...' if len(names) > 3 else ''}). "
            "Use an empty or new folder."
        )


class StoreMeta:
    """Mixin of :class:`~editmem.memory.store.EditMemory` (uses its ``path``, ``readonly``, ``lock``, ``chroma_url``)."""

    @property
    def meta_path(self) -> Path:
        return self.path / META_FILE

    def read_meta(self) -> dict[str, Any] | None:
        """store.json, or None for a new store. A damaged file raises :class:`StoreUnusableError` naming it."""
        if not self.meta_path.is_file():
            return None
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreUnusableError(f"{self.meta_path} is damaged ({type(exc).__name__}: {exc}); restore it, or delete it to record the model again on the next open") from None
        if not isinstance(meta, dict):
            raise StoreUnusableError(f"{self.meta_path} is damaged: expected a JSON object, got {type(meta).__name__}")
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Write store.json atomically (temporary file + rename), under the writer lock."""
        if self.readonly:
            raise StoreUnusableError(f"store {self.path} is read-only: cannot record its metadata")
        with self.lock.hold():
            tmp = self.meta_path.with_name(f".{META_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"format": STORE_FORMAT, **meta}, indent=2, default=str), encoding="utf-8")
            tmp.replace(self.meta_path)

    def store_id(self) -> str:
        """A stable id of this store (names its collection on a shared Chroma server)."""
        meta = self.read_meta() or {}
        if not meta.get("store_id"):
            meta["store_id"] = uuid.uuid4().hex[:16]
            if not self.readonly:
                self.write_meta({k: v for k, v in meta.items() if k != "format"})
        return str(meta["store_id"])

    def check_model(self, *, model_name: str, fingerprint: str, strategy: str, switch_strategy: bool = False) -> None:
        """Record the model/strategy on first open; refuse a different model (and strategy) afterwards.

        A store keeps its strategy: opening it with another one raises :class:`StoreMismatchError` unless
        ``switch_strategy`` (then the switch is recorded; the new strategy rebuilds its artifacts from the facts).
        """
        meta = self.read_meta()
        if meta is None or "fingerprint" not in meta:
            if self.readonly:
                raise StoreUnusableError(f"store {self.path} is read-only and has no {META_FILE}: it cannot be opened for a model")
            self.write_meta({"model": model_name, "fingerprint": fingerprint, "strategy": strategy, "created_at": utcnow(),
                             "store_id": (meta or {}).get("store_id") or uuid.uuid4().hex[:16],
                             **({"chroma_url": self.chroma_url} if self.chroma_url else {})})
            return
        if meta.get("fingerprint") != fingerprint:
            raise StoreMismatchError(
                f"store {self.path} was built for model {meta.get('model')!r} (fingerprint {meta.get('fingerprint')}), "
                f"not {model_name!r} (fingerprint {fingerprint}). Open it with that model, or use a new store folder."
            )
        if meta.get("strategy") != strategy:
            if not switch_strategy:
                raise StoreMismatchError(
                    f"store {self.path} uses strategy {meta.get('strategy')!r}, not {strategy!r}: a store keeps its strategy. "
                    f"Open it without a strategy (or with {meta.get('strategy')!r}), use a new store, or switch deliberately "
                    "(SDK: switch_strategy=True; CLI: --switch-strategy)."
                )
            meta["strategy"] = strategy
            meta.pop("format", None)
            self.write_meta(meta)
