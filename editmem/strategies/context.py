"""``context``: in-context editing, the retrieval-augmented baseline.

Retrieves the active facts most similar to the query from the edit memory (all-MiniLM-L6-v2 cosine
similarity in Chroma), keeps those above ``min_similarity``, and restates the query with them in the user turn.
The model's weights and activations are untouched; a query with no hit is exactly the unedited prompt.

Defaults measured on the embedded SmolLM2-135M-Instruct with the demo feed (20 facts, each with a paraphrase and
an unrelated probe about the *same* subject), answer contains target, greedy, 24 tokens:

=============================================  =========  ===========
format                                         edited     paraphrase
=============================================  =========  ===========
system message, bullet list, top-1 / top-3     5 / 7      6 / 8
system message, Q:/A: pairs, top-1 / top-3     6 / 8      5 / 4
**user message, facts then question, top-1**   **18**     **13**
user message, facts then question, top-3       13         10
=============================================  =========  ===========

Temporal validity: only facts valid at the call's ``as_of`` (default now) are retrieved, i.e. ``valid_from <= as_of <
valid_to``; an expired fact stops being stated at its ``valid_to``, a future-dated one starts at its ``valid_from``.

The small model follows facts in the user turn and is confused by several facts at once, hence ``top_k=1``.
Similarity of paraphrases to their stored prompt: min 0.685, median 0.81; of the same-subject unrelated probes to
the nearest stored prompt: max 0.649, median 0.52; hence ``min_similarity=0.65``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

import torch

from editmem.facts import StoredFact, to_utc, utcnow
from editmem.strategies.base import EditTrace, Strategy, StrategyConfig, register_strategy


@dataclasses.dataclass
class ContextConfig(StrategyConfig):
    """Config of the ``context`` strategy.

    Args:
        top_k: at most this many facts are stated per query (1: see the measurements in the module docstring).
        min_similarity: cosine similarity (all-MiniLM-L6-v2) a fact needs to be stated (0.65: between the lowest
            paraphrase and the highest same-subject unrelated probe of the demo feed).
        template: how the query is restated; ``{facts}`` is one fact per line, ``{query}`` the user's text.
    """

    runtime_fields: ClassVar[frozenset[str]] = frozenset({"batch_size", "top_k", "min_similarity", "template"})

    top_k: int = dataclasses.field(default=1, metadata={"help": "facts stated per query"})
    min_similarity: float = dataclasses.field(default=0.65, metadata={"help": "cosine threshold for stating a fact"})
    template: str = dataclasses.field(
        default="Facts (up to date):\n{facts}\n\nUsing the facts above, answer: {query}",
        metadata={"help": "restated query; {facts} = one fact per line, {query} = the user's text"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_k < 1:
            raise ValueError(f"ContextConfig.top_k must be >= 1, got {self.top_k}")
        if not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"ContextConfig.min_similarity must be in [-1, 1], got {self.min_similarity}")
        if "{facts}" not in self.template or "{query}" not in self.template:
            raise ValueError("ContextConfig.template must contain {facts} and {query}")


class ContextStrategy(Strategy):
    """State the retrieved facts in the prompt."""

    batch_safe = True  # facts are retrieved and stated per prompt
    #: EditableLLM passes ``as_of`` (an aware UTC datetime) to :meth:`rewrite_query`
    supports_as_of: ClassVar[bool] = True

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

    def _hits(self, query: str, as_of: datetime) -> list[tuple[StoredFact, float]]:
        hits = self.memory.search(query, k=self.config.top_k, as_of=as_of)
        return [(s, score) for s, score in hits if score >= self.config.min_similarity and s.id in self._applied]

    def rewrite_query(self, query: str, *, as_of: datetime | None = None) -> tuple[str | None, EditTrace | None]:
        """``query`` restated with the facts retrieved for it among those valid at ``as_of`` (default now)."""
        if not self.attached:
            return None, None
        when = to_utc(as_of) or utcnow()
        hits = self._hits(query, when)
        trace = EditTrace(strategy=self.name, fact_ids=[s.id for s, _ in hits], scores={s.id: round(score, 4) for s, score in hits},
                          details={"as_of": when.isoformat()})
        if not hits:
            return None, trace
        facts = "\n".join(f"{s.fact.prompt} {s.fact.target}" for s, _ in hits)
        return self.config.template.format(facts=facts, query=query), trace

    def explain(self, prompt: str, *, as_of: datetime | None = None) -> EditTrace:
        when = to_utc(as_of) or utcnow()
        hits = self.memory.search(prompt, k=self.config.top_k, as_of=when)
        return EditTrace(
            strategy=self.name,
            fact_ids=[s.id for s, score in hits if score >= self.config.min_similarity and s.id in self._applied],
            scores={s.id: round(score, 4) for s, score in hits},
            details={"min_similarity": self.config.min_similarity, "as_of": when.isoformat(),
                     "retrieval": "all-MiniLM-L6-v2 cosine, exact search over the memory's embeddings"},
        )


register_strategy(name="context", config_cls=ContextConfig, strategy_cls=ContextStrategy)
