"""Where a fact's subject is named in a text: the span a subject-keyed strategy keys on, and the names a query
gate masks to compare relations.

Users write natural prompts: "Who is the ECB president?" for the subject ``European Central Bank``, "Who leads the
UK?" for ``United Kingdom``. :func:`locate_subject` finds the subject's surface form in a prompt, trying in order

1. ``exact``: the subject verbatim;
2. ``casefold``: the subject ignoring case, accents and runs of whitespace;
3. ``alias``: one of the fact's declared aliases (same normalisation);
4. ``acronym``: the initials of the subject's capitalised words (``ECB``, ``UK``), as a whole word;
5. ``partial``: the longest run of the subject's words that appears as whole words (``Meta`` for
   ``Meta Platforms``), at least one word that is not a stop word and three characters long;

and returns ``None`` when none matches. :func:`similar_span` is the last, model-based step (the named span of the
prompt whose sentence embedding is closest to the subject's), used by :func:`editmem.facts.parse_fact` when an
embedder is at hand. What is not located is rejected by the caller with the record and field named.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np

SpanMethod = Literal["exact", "casefold", "alias", "acronym", "partial", "similar", "given"]

#: words that never make a subject span on their own (articles, prepositions, question words)
STOP_WORDS = frozenset(
    "a an the of in on at to for and or by with from as is are was were be who what which when where why how "
    "does do did its it this that these those his her their our your my new old first last current".split()
)
#: how close a named span's embedding must be to the subject's for :func:`similar_span` (cosine, all-MiniLM-L6-v2).
#: High on purpose: the encoder puts competitors as close as aliases ("Germany" / "France" 0.75, "Chile" / "Peru"
#: 0.67, "Nike" / "Adidas" 0.75 against "United Kingdom" / "Britain" 0.87, "Kylian Mbappé" / "Mbappé" 0.84,
#: "Lionel Messi" / "Leo Messi" 0.82), and keying a fact on another entity is worse than rejecting it.
SIMILAR_SPAN_THRESHOLD = 0.80

_LEGAL_SUFFIXES = frozenset({"inc", "ltd", "corp", "plc", "llc", "co", "ag", "sa", "se", "nv", "gmbh"})
_WORD = re.compile(r"\w[\w.&'\-]*\w|\w")


@dataclasses.dataclass(frozen=True)
class SubjectSpan:
    """The subject as written in a text: character offsets, the surface text and how it was found."""

    start: int
    end: int
    text: str
    method: SpanMethod
    score: float = 1.0


def fold(text: str) -> str:
    """Case-, accent- and whitespace-insensitive form with one character per input character (offsets survive)."""
    out = []
    for ch in text:
        base = unicodedata.normalize("NFKD", ch)
        base = "".join(c for c in base if not unicodedata.combining(c)) or ch
        base = base.casefold()
        out.append(base[0] if len(base) == 1 else ch.casefold()[:1] or ch)
    return "".join(" " if c.isspace() else c for c in out)


def _word_pattern(needle: str) -> re.Pattern[str]:
    """``needle`` as whole words, any run of whitespace between its words."""
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in needle.split()) + r"(?!\w)")


def _find_words(haystack: str, needle: str) -> tuple[int, int] | None:
    """``(start, end)`` of ``needle`` in ``haystack`` as whole words (both already folded), or None."""
    if not needle.strip():
        return None
    match = _word_pattern(needle).search(haystack)
    return match.span() if match else None


def acronym(subject: str) -> str | None:
    """Initials of the subject's capitalised words (``European Central Bank`` -> ``ECB``); None under two."""
    letters = [w[0] for w in re.findall(r"[^\W\d_][\w'\-]*", subject)
               if w[0].isupper() and w.lower().rstrip(".") not in _LEGAL_SUFFIXES]
    return "".join(letters) if len(letters) >= 2 else None


def is_acronym(name: str) -> bool:
    """An all-capitals short name ("UK", "WHO", "ECB"): such names are matched case-sensitively."""
    letters = [c for c in name if c.isalpha()]
    return bool(letters) and len(letters) <= 6 and all(c.isupper() for c in letters) and " " not in name.strip()


def words(text: str) -> list[tuple[int, int]]:
    """Character spans of the words of ``text`` (a possessive ``'s`` is not part of the word)."""
    out = []
    for m in _WORD.finditer(text):
        a, b = m.start(), m.end()
        if text[a:b].lower().endswith("'s") and b - a > 2:
            b -= 2
        out.append((a, b))
    return out


def locate_subject(text: str, subject: str, aliases: Sequence[str] = ()) -> SubjectSpan | None:
    """The textual steps 1-5 of the module docstring; None when the subject is not named in ``text``."""
    at = text.find(subject)
    if at >= 0:
        return SubjectSpan(at, at + len(subject), subject, "exact")
    folded = fold(text)
    for name, method in [(subject, "casefold"), *((a, "alias") for a in sorted(aliases, key=len, reverse=True))]:
        exact = is_acronym(name)
        needle = name.strip() if exact else fold(name).strip()
        span = _find_words(text if exact else folded, needle)
        if span is not None:
            at, end = span
            return SubjectSpan(at, end, text[at:end], method)  # type: ignore[arg-type]
    short = acronym(subject)
    if short:
        m = re.search(r"(?<!\w)" + re.escape(short) + r"(?!\w)", text)
        if m:
            return SubjectSpan(m.start(), m.end(), m.group(0), "acronym")
    return _partial(text, folded, subject)


def _partial(text: str, folded: str, subject: str) -> SubjectSpan | None:
    parts = fold(subject).split()
    best: tuple[int, int, int] | None = None  # (length in words, start, end)
    for n in range(len(parts) - 1, 0, -1):
        for i in range(len(parts) - n + 1):
            run = parts[i : i + n]
            content = [w for w in run if w not in STOP_WORDS and len(w) >= 3]
            if not content:
                continue
            span = _find_words(folded, " ".join(run))
            if span is not None:
                at, end = span
                if best is None or end - at > best[2] - best[1]:
                    best = (n, at, end)
        if best is not None:
            break
    if best is None:
        return None
    _, a, b = best
    return SubjectSpan(a, b, text[a:b], "partial")


def candidate_spans(text: str, max_words: int = 4) -> list[tuple[int, int]]:
    """Runs of up to ``max_words`` words that neither start nor end on a stop word (the named spans a subject
    could be)."""
    ws = words(text)
    out = []
    for i in range(len(ws)):
        for n in range(1, max_words + 1):
            if i + n > len(ws):
                break
            a, b = ws[i][0], ws[i + n - 1][1]
            first, last = text[ws[i][0] : ws[i][1]].lower(), text[ws[i + n - 1][0] : b].lower()
            if first in STOP_WORDS or last in STOP_WORDS:
                continue
            out.append((a, b))
    return out


Embed = Callable[[list[str]], np.ndarray]


def similar_span(text: str, subject: str, embed: Embed, threshold: float = SIMILAR_SPAN_THRESHOLD) -> SubjectSpan | None:
    """Step 6: the candidate span of ``text`` whose embedding is closest to ``subject``'s, if at least
    ``threshold`` (cosine). ``embed`` maps texts to row vectors."""
    spans = candidate_spans(text)
    if not spans:
        return None
    vecs = _unit(embed([subject] + [text[a:b] for a, b in spans]))
    sims = vecs[1:] @ vecs[0]
    k = int(np.argmax(sims))
    if float(sims[k]) < threshold:
        return None
    a, b = spans[k]
    return SubjectSpan(a, b, text[a:b], "similar", round(float(sims[k]), 4))


def mask_names(text: str, names: Iterable[str], placeholder: str = "X") -> tuple[str, bool]:
    """``text`` with every whole-word occurrence of any of ``names`` (case/accent-insensitive, longest first)
    replaced by ``placeholder``; and whether anything was replaced."""
    folded = fold(text)
    hits: list[tuple[int, int]] = []
    for name in sorted({n for n in names if n and n.strip()}, key=len, reverse=True):
        exact = is_acronym(name)  # "US", "WHO": matched as written, so "tell us" and "who" are not names
        needle = name.strip() if exact else fold(name).strip()
        for m in _word_pattern(needle).finditer(text if exact else folded):
            if not any(a < m.end() and m.start() < b for a, b in hits):
                hits.append((m.start(), m.end()))
    if not hits:
        return text, False
    out, last = [], 0
    for a, b in sorted(hits):
        out.append(text[last:a])
        out.append(placeholder)
        last = b
    out.append(text[last:])
    return "".join(out), True


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


__all__ = ["SIMILAR_SPAN_THRESHOLD", "STOP_WORDS", "SubjectSpan", "acronym", "candidate_spans", "fold", "is_acronym",
           "locate_subject", "mask_names", "similar_span", "words"]
