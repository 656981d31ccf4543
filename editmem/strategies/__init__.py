"""Editing strategies and their registry. Importing this package registers the built-in strategies."""

from editmem.strategies.base import (
    EditTrace,
    ForwardCall,
    Strategy,
    StrategyConfig,
    available_strategies,
    get_strategy,
    register_strategy,
)
from editmem.strategies.context import ContextConfig, ContextStrategy
from editmem.strategies.llp import LLPConfig, LLPStrategy
from editmem.strategies.lyaplock import LyapLockConfig, LyapLockStrategy  # noqa: F401  (registers lyaplock, memit, memit_seq, alphaedit)
from editmem.strategies.wise import WISEConfig, WISEStrategy

#: strategy of a new store when none is named (the SDK, the CLI, the LangChain integration): ``llp``, which meets
#: its acceptance bars on the embedded model (docs/strategies/llp.md). ``context`` needs no training per edit and
#: leaves other questions about an edited subject alone; name it where that matters more than recall.
DEFAULT_STRATEGY = "llp"

__all__ = [
    "DEFAULT_STRATEGY",
    "ContextConfig",
    "ContextStrategy",
    "EditTrace",
    "ForwardCall",
    "LLPConfig",
    "LLPStrategy",
    "Strategy",
    "StrategyConfig",
    "WISEConfig",
    "WISEStrategy",
    "available_strategies",
    "get_strategy",
    "register_strategy",
]
