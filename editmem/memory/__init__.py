"""The persistent edit memory (ledger + Chroma + artifacts), its writer lock and its checks."""

from editmem.memory.artifacts import ArtifactStore
from editmem.memory.errors import (
    FactNotFoundError,
    LedgerCorruptError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
    StoreUnusableError,
)
from editmem.memory.ledger import Ledger
from editmem.memory.recovery import VerifyReport
from editmem.memory.store import AddResult, EditMemory

__all__ = [
    "AddResult", "ArtifactStore", "EditMemory", "FactNotFoundError", "Ledger", "LedgerCorruptError", "StoreError",
    "StoreLockedError", "StoreMismatchError", "StoreUnusableError", "VerifyReport",
]
