"""Model-architecture adapters (installed as ``editmem.adapters``).

An adapter is the one place that knows where an architecture keeps its token embedding, decoder
layers, MLP projections, final norm and LM head. Strategies address modules by *anchor* name
("mlp_out", "layer", ...) and never by module path, so a new architecture is one registry entry.
"""

from editmem.adapters import families as _families  # noqa: F401  (registers built-ins)
from editmem.adapters.base import (
    ANCHORS,
    ArchitectureSpec,
    ModelAdapter,
    UnsupportedArchitectureError,
    get_adapter,
    register_architecture,
    registered_model_types,
)

__all__ = [
    "ANCHORS",
    "ArchitectureSpec",
    "ModelAdapter",
    "UnsupportedArchitectureError",
    "get_adapter",
    "register_architecture",
    "registered_model_types",
]
