"""``context``: in-context editing, the retrieval-augmented baseline.

Retrieves the active facts most similar to the query from the edit memory (all-MiniLM-L6-v2 cosine
similarity in Chroma), keeps those above ``min_similarity``, and states them before the query. The model's
weights and activations are untouched; a query with no hit is exactly the unedited prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from editmem.facts import StoredFact
from editmem.strategies.base import EditTrace, Strategy, StrategyConfig, register_strategy


@dataclasses.dataclass
class ContextConfig(StrategyConfig):
    """Config of the ``context`` strategy.

    Args:
        top_k: at most this many facts are stated per query.
        min_similarity: cosine similarity (all-MiniLM-L6-v2) a fact needs to be stated. 0.5 keeps a question's
            paraphrases (typically >= 0.6 against the stored prompt) and drops unrelated questions (typically
            < 0.3) in the demo feed and on ZsRE.
        header: text introducing the facts.
    """

    runtime_fields: ClassVar[frozenset[str]] = frozenset({"batch_size", "top_k", "min_similarity", "header"})

    top_k: int = dataclasses.field(default=3, metadata={"help": "facts stated per query"})
    min_similarity: float = dataclasses.field(default=0.5, metadata={"help": "cosine threshold for stating a fact"})
    header: str = dataclasses.field(
        default="Use these up-to-date facts if they are relevant:",
        metadata={"help": "line introducing the retrieved facts"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_k < 1:
            raise ValueError(f"ContextConfig.top_k must be >= 1, got {self.top_k}")
        if not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"ContextConfig.min_similarity must be in [-1, 1], got {self.min_similarity}")


class ContextStrategy(Strategy):
    """State the retrieved facts in the prompt."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.memory is None:
            raise ValueError("the context strategy needs an EditMemory to search")
        self._applied: set[str] = set()

    def apply(self, facts: Sequence[StoredFact]) -> None:
        self._applied.update(f.id for f in facts)  # the memory itself is the index

    def remove(self, fact_ids: Sequence[str], *, active: Sequence[StoredFact]) -> None:
        self._applied.difference_update(fact_ids)

    def applied_ids(self) -> set[str]:
        return set(self._applied)

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {"applied": sorted(self._applied)}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> set[str]:
        self._applied = set(state.get("applied", []))
        return set(self._applied)

    def _hits(self, query: str) -> list[tuple[StoredFact, float]]:
        hits = self.memory.search(query, k=self.config.top_k)
        return [(s, score) for s, score in hits if score >= self.config.min_similarity and s.id in self._applied]

    def retrieve_context(self, query: str) -> tuple[str | None, EditTrace | None]:
        if not self.attached:
            return None, None
        hits = self._hits(query)
        trace = EditTrace(strategy=self.name, fact_ids=[s.id for s, _ in hits], scores={s.id: round(score, 4) for s, score in hits})
        if not hits:
            return None, trace
        lines = [self.config.header] + [f"- {s.fact.prompt} {s.fact.target}" for s, _ in hits]
        return "\n".join(lines), trace

    def explain(self, prompt: str) -> EditTrace:
        hits = self.memory.search(prompt, k=self.config.top_k)
        return EditTrace(
            strategy=self.name,
            fact_ids=[s.id for s, score in hits if score >= self.config.min_similarity and s.id in self._applied],
            scores={s.id: round(score, 4) for s, score in hits},
            details={"min_similarity": self.config.min_similarity, "retrieval": "all-MiniLM-L6-v2 cosine via Chroma"},
        )


register_strategy(name="context", config_cls=ContextConfig, strategy_cls=ContextStrategy)
