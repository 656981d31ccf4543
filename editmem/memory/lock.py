"""The cross-process writer lock of a local store (one writer, many readers).

Every change to a store (ledger append + Chroma upsert + recovery) runs under this lock, held for one
transaction, so two importing processes interleave fact by fact instead of racing: each transaction re-reads
the ledger tail first, so sequence numbers stay unique and a slot never gets two active facts. Readers never
take it: they read whole ledger lines (see :mod:`editmem.memory.ledger`).

The lock is a ``filelock.FileLock`` on ``<store>/.lock`` (an OS advisory lock: released by the kernel when the
holder dies, so a ``kill -9`` never leaves a stale lock). The holder's pid is written next to it so the error
can say who holds it.

Fairness: ``filelock`` waits by polling, and a writer that releases and re-takes the lock between two facts wins
every time, so a second import used to wait for the whole first one. A turnstile (``<store>/.lock.turn``) fixes
that: a writer takes the turnstile, then the lock, then lets the turnstile go; a writer coming back for its next
transaction must pass the turnstile, which a waiting writer holds, so waiting writers alternate.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from editmem.memory.errors import StoreLockedError, StoreUnusableError

DEFAULT_LOCK_TIMEOUT = 60.0
"""Seconds a writer waits for another one (``EDITMEM_LOCK_TIMEOUT`` overrides)."""


def lock_timeout() -> float:
    """The writer-lock timeout in seconds: ``EDITMEM_LOCK_TIMEOUT`` or :data:`DEFAULT_LOCK_TIMEOUT`."""
    raw = os.environ.get("EDITMEM_LOCK_TIMEOUT")
    try:
        return float(raw) if raw else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT


class WriterLock:
    """Re-entrant (per thread) exclusive lock of one store folder across processes."""

    def __init__(self, store: Path, timeout: float | None = None):
        self.store = Path(store)
        self.path = self.store / ".lock"
        self.owner_path = self.store / ".lock.owner"
        self.timeout = lock_timeout() if timeout is None else timeout
        self._lock = FileLock(str(self.path), thread_local=False, is_singleton=False, poll_interval=0.005)
        self._turn = FileLock(str(self.store / ".lock.turn"), thread_local=False, is_singleton=False, poll_interval=0.005)
        self._thread = threading.RLock()  # threads of one process take turns; filelock counts the nesting

    def holder(self) -> str:
        """``pid N`` of the process that last took the lock, or ``another process`` when unknown."""
        try:
            pid = self.owner_path.read_text().strip()
        except OSError:
            pid = ""
        return f"pid {pid}" if pid.isdigit() else "another process"

    @contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock for the block; raise :class:`StoreLockedError` after ``timeout`` seconds of waiting."""
        wait = self.timeout if timeout is None else timeout
        if not self._thread.acquire(timeout=wait if wait >= 0 else -1):
            raise StoreLockedError(f"store {self.store} is busy in another thread of this process (waited {wait:g} s)")
        try:
            first = not self._lock.is_locked
            try:
                if first:
                    started = time.monotonic()
                    with self._turn.acquire(timeout=wait):
                        self._lock.acquire(timeout=max(0.0, wait - (time.monotonic() - started)) if wait >= 0 else -1)
                else:
                    self._lock.acquire(timeout=wait)
            except Timeout:
                raise StoreLockedError(
                    f"store {self.store} is locked by {self.holder()} (a writer such as an import); waited {wait:g} s. "
                    "Retry when it finishes, or raise EDITMEM_LOCK_TIMEOUT."
                ) from None
            except PermissionError as exc:
                raise StoreUnusableError(f"store {self.store} is read-only: cannot take the writer lock ({exc.strerror})") from None
            try:
                if first:
                    self.owner_path.write_text(str(os.getpid()))
                yield
            finally:
                self._lock.release()
        finally:
            self._thread.release()

    def locked_by_other(self) -> bool:
        """True when another process holds the lock right now (a non-blocking probe)."""
        if self._lock.is_locked:
            return False
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:
            return False
        self._lock.release()
        return False
