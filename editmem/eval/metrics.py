"""Metric arithmetic, model-free: every function here works on ids, logits or strings (EVALUATION.md §3-§6).

The model-facing side (which prompt is fed, through which strategy) is in :mod:`editmem.eval.scoring`; keeping
the arithmetic separate lets the unit tests check each metric on hand-made inputs with a known answer.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from editmem.textnorm import contains_answer, normalize_answer

__all__ = [
    "TeacherForced",
    "answer_entropy",
    "answer_words",
    "contains_answer",
    "is_degenerate",
    "repeated_run",
    "generation_unchanged",
    "harmonic_mean",
    "mean",
    "median",
    "ngram_entropy",
    "fluency_score",
    "normalize_answer",
    "perplexity",
    "prob_comparison",
    "score_logits",
    "token_accuracy",
    "token_agreement",
]


@dataclass(frozen=True)
class TeacherForced:
    """One teacher-forced pass over ``prompt + " " + target``.

    ``pred`` are the argmax predictions at the answer positions (``logits[start-1 … len-2]``), ``target`` the
    answer token ids (``ids[start … len-1]``), ``nll`` the mean next-token cross-entropy over those positions.
    """

    pred: list[int]
    target: list[int]
    nll: float
    start: int
    mismatch: bool = False

    @property
    def accuracy(self) -> float:
        return token_accuracy(self.pred, self.target)

    @property
    def ppl(self) -> float:
        return perplexity(self.nll)


def score_logits(logits: torch.Tensor, input_ids: Sequence[int], start: int, *, mismatch: bool = False) -> TeacherForced:
    """Slice a ``[seq, vocab]`` logit matrix at the answer positions (EVALUATION.md §3 steps 6-7, §5 step 4).

    The logit at position ``t-1`` predicts token ``t``; the answer is ``input_ids[start:]``.
    """
    ids = torch.as_tensor(list(input_ids), dtype=torch.long)
    if logits.dim() != 2 or logits.shape[0] != ids.shape[0]:
        raise ValueError(f"logits must be [seq={ids.shape[0]}, vocab], got {tuple(logits.shape)}")
    if not 1 <= start < ids.shape[0]:
        raise ValueError(f"answer start {start} outside 1..{ids.shape[0] - 1}")
    answer_logits = logits[start - 1 : -1].float()
    target = ids[start:]
    log_probs = torch.log_softmax(answer_logits, dim=-1)
    nll = float(-log_probs.gather(1, target[:, None]).mean())
    return TeacherForced(answer_logits.argmax(-1).tolist(), target.tolist(), nll, start, mismatch)


def token_accuracy(pred: Sequence[int], target: Sequence[int]) -> float:
    """Fraction of answer positions whose argmax equals the answer token (partial credit, not exact match)."""
    if len(pred) != len(target):
        raise ValueError(f"pred and target lengths differ ({len(pred)} vs {len(target)})")
    if not target:
        raise ValueError("empty answer")
    return sum(int(p == t) for p, t in zip(pred, target)) / len(target)


def token_agreement(pre: Sequence[int], post: Sequence[int]) -> float:
    """EasyEdit locality: fraction of positions where the post-edit argmax equals the pre-edit one (§4).

    Positions present in only one list (a tokenisation that changed length) count as disagreement.
    """
    width = max(len(pre), len(post))
    if width == 0:
        raise ValueError("empty locality token lists")
    return sum(int(a == b) for a, b in zip(pre, post)) / width


def perplexity(nll: float) -> float:
    """``exp(mean NLL)`` (§5); ``inf`` on overflow rather than an exception."""
    try:
        return math.exp(nll)
    except OverflowError:
        return math.inf


def prob_comparison(nll_preferred: float, nll_other: float) -> tuple[bool, float]:
    """CounterFact test (§6.1): success when the preferred answer has the lower length-normalised NLL.

    Returns ``(success, magnitude)`` with magnitude ``exp(-nll_preferred) - exp(-nll_other)``.
    """
    return nll_preferred < nll_other, math.exp(-nll_preferred) - math.exp(-nll_other)


def generation_unchanged(pre: str, post: str) -> bool:
    """Generation locality: the greedy answer to an unrelated prompt is character-for-character the pre-edit one."""
    return pre == post


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean (CounterFact Score = HM of ES, PS, NS); 0 when any value is 0."""
    if not values:
        raise ValueError("harmonic mean of nothing")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def mean(values: Sequence[float | bool | None]) -> float | None:
    """Mean over the non-None values (None when there are none)."""
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def median(values: Sequence[float | None]) -> float | None:
    kept = sorted(float(v) for v in values if v is not None)
    if not kept:
        return None
    mid = len(kept) // 2
    return kept[mid] if len(kept) % 2 else (kept[mid - 1] + kept[mid]) / 2


def fluency_text(prompt: str, continuation: str) -> str:
    """The text fluency is measured on (§6.3 step 1): prompt included, NFKD, blank lines folded to spaces."""
    joiner = "" if not continuation or continuation[0].isspace() else " "
    return unicodedata.normalize("NFKD", prompt + joiner + continuation).replace("\n\n", " ")


def _word_tokenize(text: str) -> list[str]:
    import nltk

    # preserve_line=True skips the punkt_tab sentence splitter, which is not installed offline (EVALUATION.md §6.3)
    return nltk.word_tokenize(text, preserve_line=True)


def ngram_entropy(words: Sequence[str], n: int) -> float:
    """Shannon entropy (bits) of the n-gram frequency distribution of ``words`` (0 for fewer than n words)."""
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    if not total:
        return 0.0
    return -sum((c / total) * math.log2(c / total) for c in grams.values())


def fluency_score(text: str) -> float:
    """MEMIT n-gram entropy of one text: ``mean(2/3·H2, 4/3·H3)`` over NLTK word tokens (not yet ×100)."""
    words = _word_tokenize(text)
    return (2 / 3 * ngram_entropy(words, 2) + 4 / 3 * ngram_entropy(words, 3)) / 2


_WORD = re.compile(r"\w+(?:['’]\w+)*", re.UNICODE)

#: n -> how many back-to-back repeats of one n-gram mark a degenerate answer: "Sato, Sato, Sato" (1-gram x3),
#: "I am I am I am" (2-gram x3), "the CEO of the CEO of" (3-gram x2). Bigrams need 3 so "New York, New York" passes.
DEGENERATE_RUNS: dict[int, int] = {1: 3, 2: 3, 3: 2, 4: 2}


def answer_words(text: str) -> list[str]:
    """Lower-cased word tokens of a generated answer (punctuation dropped; no NLTK, so it runs everywhere)."""
    return [w.casefold() for w in _WORD.findall(unicodedata.normalize("NFKC", text))]


def repeated_run(words: Sequence[str], n: int) -> int:
    """Longest run of the same ``n``-gram repeated back to back in ``words`` (1 when nothing repeats).

    ``["sato", "sato", "sato"]`` has a unigram run of 3; ``"a b a b a b"`` a bigram run of 3.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    best = 1 if len(words) >= n else 0
    for start in range(len(words) - n + 1):
        gram, run, pos = tuple(words[start : start + n]), 1, start + n
        while tuple(words[pos : pos + n]) == gram:
            run, pos = run + 1, pos + n
        best = max(best, run)
    return best


def is_degenerate(text: str) -> bool:
    """Whether a greedy answer loops: one n-gram repeated back to back (thresholds in :data:`DEGENERATE_RUNS`).

    Small edited models fail this way ("Sato, Sato, Sato", "the CEO of the CEO of"); ordinary sentences, which
    repeat function words only at a distance, do not trip it. An empty answer is not degenerate (it is scored by
    the other metrics).
    """
    words = answer_words(text)
    return any(repeated_run(words, n) >= runs for n, runs in DEGENERATE_RUNS.items())


def answer_entropy(text: str) -> float | None:
    """MEMIT's n-gram entropy ``mean(2/3·H2, 4/3·H3)`` (bits) of one answer's word tokens; None under 3 words.

    The same formula as :func:`fluency_score` on a regex tokenisation, so it needs no NLTK and applies to the
    short greedy answers of every dataset. Low values mean repetitive text; compare pre- and post-edit values.
    """
    words = answer_words(text)
    if len(words) < 3:
        return None
    return max(0.0, (2 / 3 * ngram_entropy(words, 2) + 4 / 3 * ngram_entropy(words, 3)) / 2)
