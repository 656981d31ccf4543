"""``consistency_proxy``: a labelled stand-in for MEMIT's Consistency score (EVALUATION.md §6.4).

The paper metric needs Wikidata relation/object ids, reference snippets and a shipped IDF table that our
CounterFact files lack, so it cannot be computed. The proxy: references = ``prompt + " " + target_new`` of all
*other* records (evaluation and train pool) with the same ``target_new``; IDF fitted with scikit-learn on
``corpus_passages.txt`` plus those strings; score = cosine of the TF-IDF vectors of the generated texts and the
references. Never report it in a column named "Consistency" next to paper numbers.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path


class ConsistencyProxy:
    """Fitted once per run; :meth:`score` gives the cosine for one record (None when it has no references)."""

    def __init__(self, pool: Sequence[dict], corpus_path: Path | None):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self._refs: dict[str, list[tuple[object, str]]] = defaultdict(list)
        for raw in pool:
            self._refs[raw["target_new"]].append((raw.get("_key"), f"{raw['prompt']} {raw['target_new']}"))
        texts = [t for refs in self._refs.values() for _, t in refs]
        if corpus_path is not None and corpus_path.is_file():
            texts += [line for line in corpus_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        self._vectorizer = TfidfVectorizer().fit(texts)

    @classmethod
    def from_files(cls, eval_path: Path, data_dir: Path) -> "ConsistencyProxy":
        """Pool = the evaluation file plus ``counterfact_train_*.json`` beside it (when present)."""
        pool: list[dict] = []
        files = [eval_path] + sorted(p for p in data_dir.glob("counterfact_train_*.json") if p != eval_path)
        for path in files:
            for i, raw in enumerate(json.loads(path.read_text(encoding="utf-8"))):
                pool.append({**raw, "_key": (path.name, i)})
        return cls(pool, data_dir / "corpus_passages.txt")

    def score(self, texts: Sequence[str], target_new: str, key: object) -> float | None:
        refs = [t for k, t in self._refs.get(target_new, []) if k != key]
        if not refs or not texts:
            return None
        from sklearn.metrics.pairwise import cosine_similarity

        vecs = self._vectorizer.transform([" ".join(texts), " ".join(refs)])
        return float(cosine_similarity(vecs[0], vecs[1])[0, 0])
