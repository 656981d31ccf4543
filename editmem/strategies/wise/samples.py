"""What one edit trains on besides the fact itself: the context templates (§4.2) and the irrelevant rows (§3.2)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

#: seeds of the reference's context templates; each is continued by 5 and by 10 tokens -> 10 texts
TEMPLATE_SEEDS = ["I", "You", "Because", "Yes", "Q: "]

#: training splits and how their unrelated (locality) text is built: ``a + " " + b``
_POOL_FILES: dict[str, tuple[str, str, str]] = {
    "zsre": ("zsre_train_4000.json", "loc", "loc_ans"),
    "hallucination": ("hallucination_train_306.json", "locality_prompt", "locality_ground_truth"),
    "counterfact": ("counterfact_train_4000.json", "locality_prompt", "locality_ground_truth"),
}


def context_templates(model, tokenizer, *, sampling: str, seed: int) -> list[str]:
    """``["{}"]`` + the 10 continuations of :data:`TEMPLATE_SEEDS` (5 then 10 new tokens) followed by ``" {}"``.

    ``sampling="greedy"`` is the reference (degenerate on SmolLM2: ``"I-1000 {}"``); ``"top_k"`` draws top-5 samples
    from a seeded generator. Call with the strategy detached (the templates come from the unedited model).
    """
    from editmem.prefixes import sample_prefixes

    top_k = 1 if sampling == "greedy" else 5
    texts: list[str] = []
    for i, new_tokens in enumerate((5, 10)):
        texts += sample_prefixes(model, tokenizer, starts=TEMPLATE_SEEDS, max_new_tokens=new_tokens, top_k=top_k,
                                 seed=seed + i)
    return ["{}"] + [" ".join(t.split()) + " {}" for t in texts]


def _pool_from_json(path: Path, a: str | None = None, b: str | None = None) -> list[str]:
    records = json.loads(path.read_text())
    out = []
    for rec in records:
        keys = (a, b) if a else next(((x, y) for _, x, y in _POOL_FILES.values() if x in rec and y in rec), (None, None))
        if keys[0] is None:
            continue
        text = f"{rec.get(keys[0], '')} {rec.get(keys[1], '')}".strip()
        if text:
            out.append(text)
    return out


def build_pool(spec: str, *, data_dir: Path, corpus: Path, sampled=None) -> tuple[list[str], str]:
    """The irrelevant-row pool named by ``spec`` (see ``WISEConfig.irrelevant_pool``) and where it came from.

    ``sampled`` is a zero-argument callable returning model-sampled texts (the last resort of ``"auto"``)."""
    if spec in _POOL_FILES:
        name, a, b = _POOL_FILES[spec]
        path = data_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"wise: irrelevant_pool={spec!r} needs {path}")
        return _pool_from_json(path, a, b), str(path)
    if spec == "auto":
        name, a, b = _POOL_FILES["zsre"]
        if (data_dir / name).is_file():
            return _pool_from_json(data_dir / name, a, b), str(data_dir / name)
        spec = "corpus" if corpus.is_file() else "sampled"
    if spec == "corpus":
        if not corpus.is_file():
            raise FileNotFoundError(f"wise: irrelevant_pool='corpus' needs {corpus}")
        return [line.strip() for line in corpus.read_text().splitlines() if line.strip()], str(corpus)
    if spec == "sampled":
        if sampled is None:
            raise ValueError("wise: no sampler for irrelevant_pool='sampled'")
        return list(sampled()), "model-sampled"
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"wise: irrelevant_pool {spec!r} is neither a known pool nor a file")
    if path.suffix == ".json":
        return _pool_from_json(path), str(path)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()], str(path)


def pick(pool: list[str], fact_id: str, seed: int, n: int = 1) -> list[str]:
    """The ``n`` irrelevant texts of one fact: a pure function of (fact id, seed), so a replay, or a stream that never
    held some other fact, trains each fact against the same rows."""
    out = []
    for j in range(n):
        h = int(hashlib.sha256(f"{seed}:{fact_id}:{j}".encode()).hexdigest()[:12], 16)
        out.append(pool[h % len(pool)])
    return out
