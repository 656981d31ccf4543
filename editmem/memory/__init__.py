"""The persistent edit memory (Chroma + ledger + artifacts)."""

from editmem.memory.artifacts import ArtifactStore
from editmem.memory.ledger import Ledger
from editmem.memory.store import AddResult, EditMemory, FactNotFoundError, StoreMismatchError

__all__ = ["AddResult", "ArtifactStore", "EditMemory", "FactNotFoundError", "Ledger", "StoreMismatchError"]
