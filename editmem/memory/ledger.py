"""The append-only edit ledger: one JSON line per add / supersede / retract, the store's source of truth.

``add`` lines carry the full fact, so the memory can be rebuilt from the ledger alone
(:mod:`editmem.memory.state` replays it; Chroma is a derived, searchable copy). Writes are write-ahead: a
transaction's lines are appended in one ``write`` and ``fsync``-ed *before* Chroma is touched, under the writer
lock (:mod:`editmem.memory.lock`).

Readers consume whole lines only: bytes after the last newline belong to a write in progress (or to a writer
that was killed mid-write) and are skipped; the next writer truncates such a torn tail before appending.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from editmem.facts import LedgerAction, LedgerEntry, utcnow
from editmem.memory.errors import LedgerCorruptError, StoreUnusableError


class Ledger:
    """Append-only JSONL log with incremental reading (``refresh``) and torn-tail repair (``truncate_torn_tail``)."""

    def __init__(self, path: Path, *, create: bool = True):
        self.path = Path(path)
        if create and not self.path.exists():
            self.path.touch()
        self._offset = 0
        self._line = 0
        self._entries: list[LedgerEntry] = []
        self._seqs: list[int] = []
        self._last_seq = 0
        #: ``(seq found, seq expected)`` for every out-of-order number (``editmem verify`` reports them)
        self.seq_anomalies: list[tuple[int, int]] = []

    # -- reading -------------------------------------------------------------------------------
    def refresh(self) -> list[LedgerEntry]:
        """Read the complete lines appended since the last call and return their entries (oldest first).

        Raises :class:`LedgerCorruptError` naming the line when a complete line is not a ledger entry.
        """
        if not self.path.is_file():
            return []
        if self.path.stat().st_size < self._offset:
            raise LedgerCorruptError(f"{self.path} shrank below what was already read: the append-only ledger was rewritten")
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n")
        if end < 0:
            return []
        new: list[LedgerEntry] = []
        for raw in data[: end + 1].split(b"\n")[:-1]:
            self._line += 1
            if raw.strip():
                new.append(self._parse(raw, self._line))
        self._offset += end + 1
        for entry in new:
            if entry.seq != self.last_seq + 1:  # stores written before the writer lock have duplicate numbers
                self.seq_anomalies.append((entry.seq, self.last_seq + 1))
            self._last_seq = max(self._last_seq, entry.seq)
            self._entries.append(entry)
            self._seqs.append(entry.seq)
        return new

    def _parse(self, raw: bytes, line: int) -> LedgerEntry:
        try:
            return LedgerEntry.model_validate(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, ValidationError, TypeError) as exc:
            reason = str(exc).splitlines()[0]
            raise LedgerCorruptError(
                f"{self.path} line {line} is not an editmem ledger entry ({type(exc).__name__}: {reason}); "
                "this folder's ledger.jsonl was written by something else or damaged. `editmem verify` explains, "
                "a store needs its own folder."
            ) from None

    @property
    def last_seq(self) -> int:
        """Highest sequence number read so far (new entries continue from it)."""
        return self._last_seq

    def entries(self, *, fact_id: str | None = None, subject: str | None = None, since: int = 0) -> list[LedgerEntry]:
        """Entries read so far (see :meth:`refresh`): one fact's, one subject's (case-insensitive), after seq ``since``.

        Never reads the file itself: the caller's replayed state and this list must stay at the same line.
        """
        if since <= 0:
            out = self._entries
        elif not self.seq_anomalies:
            out = self._entries[bisect.bisect_right(self._seqs, since) :]
        else:
            out = [e for e in self._entries if e.seq > since]
        if fact_id is not None:
            out = [e for e in out if e.fact_id == fact_id]
        if subject is not None:
            key = subject.casefold()
            out = [e for e in out if (e.subject or "").casefold() == key]
        return list(out)

    def __len__(self) -> int:
        return len(self._entries)

    # -- writing (caller holds the writer lock) --------------------------------------------------
    def truncate_torn_tail(self) -> int:
        """Cut bytes after the last newline (a write killed midway). Returns how many bytes were cut.

        Only safe under the writer lock: then no live writer is in the middle of a write.
        """
        if not self.path.is_file():
            return 0
        size = self.path.stat().st_size
        if size == 0:
            return 0
        with self.path.open("rb+") as fh:
            fh.seek(max(0, self._offset))
            tail = fh.read()
            cut = len(tail) - (tail.rfind(b"\n") + 1)
            if cut:
                fh.truncate(size - cut)
                fh.flush()
                os.fsync(fh.fileno())
        return cut

    def append(self, rows: Sequence[tuple[LedgerAction, str, str | None, dict[str, Any]]], *, actor: str) -> list[LedgerEntry]:
        """Append ``(action, fact_id, subject, detail)`` rows as one transaction: one ``write``, then ``fsync``.

        Call under the writer lock, after :meth:`refresh` (the caller applied every line), so the sequence numbers
        continue the file's own. Returns the entries as read back from the file.
        """
        if self.refresh():
            raise RuntimeError("ledger grew since the caller's last refresh: refresh and apply before appending")
        at = utcnow()
        entries = [
            LedgerEntry(seq=self.last_seq + 1 + i, at=at, action=action, fact_id=fact_id, actor=actor, subject=subject, detail=detail)
            for i, (action, fact_id, subject, detail) in enumerate(rows)
        ]
        payload = "".join(e.model_dump_json() + "\n" for e in entries).encode("utf-8")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except PermissionError as exc:
            raise StoreUnusableError(f"ledger {self.path} is read-only ({exc.strerror}): this store can serve reads only") from None
        try:
            written = 0
            while written < len(payload):
                written += os.write(fd, payload[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        return self.refresh()
