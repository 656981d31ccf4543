"""Errors of the edit memory, one class per thing a caller can act on.

=========================  ==========================================================  ========
error                      when                                                        CLI exit
=========================  ==========================================================  ========
``FactNotFoundError``      no fact with that id (or an ambiguous prefix)               2
``StoreMismatchError``     the store was built for another model or strategy           2
``StoreLockedError``       another process holds the writer lock past the timeout      3
``StoreUnusableError``     not a store, read-only for a write, corrupt metadata/ledger 3
=========================  ==========================================================  ========
"""

from __future__ import annotations


class StoreError(RuntimeError):
    """Base class of the store errors that are not a bad argument."""


class StoreMismatchError(StoreError):
    """The store was built for another model (or strategy) than the one it is opened with."""


class StoreUnusableError(StoreError):
    """The folder cannot serve as this store: not a store, read-only for a write, or corrupt metadata/ledger."""


class LedgerCorruptError(StoreUnusableError):
    """A ledger line that is not an editmem ledger entry (names the file and the line)."""


class StoreLockedError(StoreError):
    """Another process is writing to the store and did not finish within the lock timeout."""


class FactNotFoundError(KeyError):
    """No fact with that id in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "fact not found"
