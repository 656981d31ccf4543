"""Answer normalisation for "does the generated answer contain the target" checks (demo, generation metrics)."""

from __future__ import annotations

import re
import string
import unicodedata

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower-case, strip accents, punctuation and articles, collapse whitespace (SQuAD-style)."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    text = _ARTICLES.sub(" ", text.translate(_PUNCT))
    return " ".join(text.split())


def contains_answer(generated: str, target: str) -> bool:
    """True when the normalised target occurs in the normalised generation as whole words."""
    target_norm = normalize_answer(target)
    if not target_norm:
        return False
    return f" {target_norm} " in f" {normalize_answer(generated)} "
