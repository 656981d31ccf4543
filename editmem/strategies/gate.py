"""A query-aware gate for subject-keyed strategies: fire an entry for its *relation*, not for every question
that names its subject.

LLP's key is the hidden state at the subject's last token; in a causal model that state cannot see the question
that follows, so "What is Nike's slogan?" fires the entry written for "Who is the CEO of Nike?" (the paper names
this in its Limitations). The gate adds a second check on the whole user turn, with the sentence encoder the
memory already uses (all-MiniLM-L6-v2):

1. **Mention.** Which entries does the turn name? The key's vote proposes entries; with ``name_route`` so does
   every name an entry goes by written out in the turn (subject, its surface forms in the prompts, declared aliases,
   acronym), so "Who is the ECB president?" reaches the entry the key learnt from "European Central Bank". With
   ``similar_names`` (off by default) the turn's spans are also compared with each subject's embedding
   (``name_threshold``); the encoder puts competitors as close as aliases ("Germany" / "France" 0.75 against
   "Germany" / "German" 0.66), so that route can fire one country's fact for another's question.
2. **Relation.** For each proposed entry the subject's mention is replaced by a placeholder in the turn and in the
   entry's prompts ("Who is the CEO of X?"), and the cosine of the two embeddings must reach ``relation_threshold``.
   The entry with the highest relation score wins; none passing means the model answers unedited.

The score is computed once per request (at prefill); cached decoding keeps the decision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from editmem.subjects import acronym, candidate_spans, fold, is_acronym, mask_names, words

Embed = Callable[[list[str]], np.ndarray]

#: turns longer than this many candidate spans are scored on their last spans only (the question ends the turn)
MAX_SPANS = 160


@dataclasses.dataclass(frozen=True)
class GateItem:
    """What the gate knows of one entry: its subject, every name it goes by, the prompts that state its facts."""

    id: str
    subject: str
    names: tuple[str, ...]
    prompts: tuple[str, ...]


@dataclasses.dataclass
class GateDecision:
    """The gate's verdict for one turn: the winning entry (index into the item list) and why."""

    winner: int | None
    route: str | None = None  # "key" (the key voted for it), "name" (one of its names is written), "similar"
    relation: float = 0.0
    mention: str | None = None
    candidates: dict[str, float] = dataclasses.field(default_factory=dict)

    def details(self, threshold: float) -> dict[str, Any]:
        return {"route": self.route, "relation": round(self.relation, 4), "mention": self.mention,
                "threshold": threshold, "candidates": self.candidates}


def names_of(subject: str, surfaces: Sequence[str], aliases: Sequence[str]) -> tuple[str, ...]:
    """Every name of a subject the gate masks: the subject, its surface forms in prompts, aliases, acronym."""
    out = [subject, *surfaces, *aliases]
    short = acronym(subject)
    if short:
        out.append(short)
    names, folded = [], set()
    for name in out:
        if name and name.strip() and name.casefold() not in folded:
            folded.add(name.casefold())
            names.append(name)
    return tuple(names)


class QueryGate:
    """Relation check of proposed entries against the user turn (see the module docstring)."""

    def __init__(self, relation_threshold: float, name_threshold: float, name_route: bool, embed: Embed | None = None,
                 placeholder: str = "X", max_candidates: int = 8, similar_names: bool = False):
        self.relation_threshold = relation_threshold
        self.name_threshold = name_threshold
        self.name_route = name_route
        self.similar_names = similar_names
        self.placeholder = placeholder
        self.max_candidates = max_candidates
        self._embed_fn = embed
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # item id -> (subject vector, relation vectors)
        self._items: list[GateItem] = []
        self._subjects: np.ndarray | None = None
        self._by_name: dict[str, list[int]] = {}  # folded name -> items going by it

    # ------------------------------------------------------------------ entries
    def _embed(self, texts: list[str]) -> np.ndarray:
        if self._embed_fn is None:
            from editmem.memory.embedding import embed_texts

            self._embed_fn = embed_texts
        vecs = np.asarray(self._embed_fn(texts), dtype=np.float32)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=-1, keepdims=True), 1e-12)

    def set_items(self, items: Sequence[GateItem]) -> None:
        """The entries, in the strategy's order; vectors of new items are computed (one batch), others reused."""
        self._items = list(items)
        todo = [it for it in self._items if it.id not in self._cache]
        if todo:
            texts: list[str] = []
            for it in todo:
                texts.append(it.subject)
                texts.extend(mask_names(p, it.names, self.placeholder)[0] for p in it.prompts)
            vecs = self._embed(texts)
            at = 0
            for it in todo:
                n = len(it.prompts)
                self._cache[it.id] = (vecs[at], vecs[at + 1 : at + 1 + n])
                at += 1 + n
        keep = {it.id for it in self._items}
        for stale in [k for k in self._cache if k not in keep]:
            del self._cache[stale]
        self._subjects = np.stack([self._cache[it.id][0] for it in self._items]) if self._items else None
        self._by_name = {}
        for i, it in enumerate(self._items):
            for name in it.names:
                self._by_name.setdefault("=" + name.strip() if is_acronym(name) else _key(name), []).append(i)

    # ------------------------------------------------------------------ decision
    def decide(self, query: str, proposed: Sequence[int]) -> GateDecision:
        """The entry (index into the items) the turn ``query`` asks about, among ``proposed`` (the key's) and, with
        ``name_route``, the entries whose subject is similar to one of its spans; None when no relation passes."""
        if not self._items or not query.strip():
            return GateDecision(None)
        spans = candidate_spans(query)[-MAX_SPANS:]
        best_span: dict[int, tuple[float, tuple[int, int]]] = {}
        routes = {int(i): "key" for i in proposed}
        for i in self._named(query):  # a name the entry goes by, written out (subject, surface, alias, acronym)
            routes.setdefault(i, "name")
        if spans and self._subjects is not None:
            span_vecs = self._embed([query[a:b] for a, b in spans])
            sims = span_vecs @ self._subjects.T  # [S, N]
            top = sims.argmax(0)
            for i in set(routes) | set(self._name_candidates(sims.max(0))):
                best_span[i] = (float(sims[top[i], i]), spans[int(top[i])])
                routes.setdefault(i, "similar")
        if not routes:
            return GateDecision(None)
        masked_texts, order, mentions = [], [], []
        for i in routes:
            item = self._items[i]
            masked, hit = mask_names(query, item.names, self.placeholder)
            mention = next((n for n in item.names if (n in query if is_acronym(n) else n.casefold() in query.casefold())),
                           None) if hit else None
            if not hit and i in best_span:
                a, b = best_span[i][1]
                masked, mention = query[:a] + self.placeholder + query[b:], query[a:b]
            masked_texts.append(masked)
            order.append(i)
            mentions.append(mention)
        qv = self._embed(masked_texts)
        scores = [float((self._cache[self._items[i].id][1] @ qv[k]).max()) for k, i in enumerate(order)]
        rank = {"key": 0, "name": 0, "similar": 1}  # a span merely similar to a subject loses every tie
        k = min(range(len(order)), key=lambda j: (-round(scores[j], 4), rank[routes[order[j]]]))
        cands = {self._items[i].id: round(s, 4) for i, s in zip(order, scores)}
        if scores[k] < self.relation_threshold:
            return GateDecision(None, candidates=cands, relation=scores[k])
        win = order[k]
        return GateDecision(win, routes[win], scores[k], mentions[k], cands)

    def _named(self, query: str, max_words: int = 8) -> list[int]:
        """Items one of whose names is a run of words of ``query`` (case- and accent-insensitive)."""
        if not self.name_route or not self._by_name:
            return []
        ws = words(query)
        found: list[int] = []
        for i in range(len(ws)):
            for n in range(1, max_words + 1):
                if i + n > len(ws):
                    break
                span = query[ws[i][0] : ws[i + n - 1][1]]
                for item in (*self._by_name.get(_key(span), ()), *self._by_name.get("=" + span, ())):
                    if item not in found:
                        found.append(item)
        return found

    def _name_candidates(self, best: np.ndarray) -> list[int]:
        if not self.similar_names:
            return []
        idx = np.nonzero(best >= self.name_threshold)[0]
        idx = idx[np.argsort(-best[idx])][: self.max_candidates]
        return [int(i) for i in idx]


def _key(name: str) -> str:
    return " ".join(fold(name).split())


__all__ = ["GateDecision", "GateItem", "QueryGate", "names_of"]
