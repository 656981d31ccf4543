"""The append-only edit ledger: one JSON line per add / supersede / retract, never rewritten."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from editmem.facts import LedgerAction, LedgerEntry


class Ledger:
    """Append-only JSONL log. ``add`` lines carry the full fact, so the memory can be rebuilt from the ledger alone."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.touch(exist_ok=True)
        self._seq = sum(1 for _ in self._lines())

    def _lines(self) -> Iterator[str]:
        with self.path.open("r", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield line

    def append(self, action: LedgerAction, fact_id: str, *, actor: str, subject: str | None = None, **detail: Any) -> LedgerEntry:
        entry = LedgerEntry(seq=self._seq + 1, action=action, fact_id=fact_id, actor=actor, subject=subject, detail=detail)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(entry.model_dump_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._seq += 1
        return entry

    def entries(self, *, fact_id: str | None = None, subject: str | None = None) -> list[LedgerEntry]:
        out = []
        for line in self._lines():
            entry = LedgerEntry.model_validate(json.loads(line))
            if fact_id is not None and entry.fact_id != fact_id:
                continue
            if subject is not None and (entry.subject or "").casefold() != subject.casefold():
                continue
            out.append(entry)
        return out

    def __len__(self) -> int:
        return self._seq
