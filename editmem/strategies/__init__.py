"""Editing strategies and their registry. Importing this package registers the built-in strategies."""

from editmem.strategies.base import (
    EditTrace,
    Strategy,
    StrategyConfig,
    available_strategies,
    get_strategy,
    register_strategy,
)
from editmem.strategies.context import ContextConfig, ContextStrategy

__all__ = [
    "ContextConfig",
    "ContextStrategy",
    "EditTrace",
    "Strategy",
    "StrategyConfig",
    "available_strategies",
    "get_strategy",
    "register_strategy",
]
