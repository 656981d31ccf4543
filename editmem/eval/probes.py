"""Same-subject probes and alias paraphrases for records that do not carry their own.

Subject-keyed strategies fire on *every* question about an edited subject, and the papers' probes cannot show it:
ZsRE's locality questions are about other subjects and its paraphrases repeat the subject verbatim. So every
record gets K questions about **the same subject on other relations** and, where possible, paraphrases that
**name the subject differently**. A record that brings its own (the ``realistic`` benchmark) keeps them; the
others get them from here:

* :func:`subject_kind` guesses the kind of subject (person, organisation, place, creative work, event) and the
  edited relation from the edit prompt's wording (keyword rules in :data:`RELATION_RULES`; ``generic`` when none
  matches);
* :data:`TEMPLATE_BANK` holds, per kind, questions a user would ask about such a subject, each tagged with its
  relation; :func:`template_probes` picks K of them that are *not* the edited relation (a fixed, per-subject
  order, so pre- and post-edit runs ask the same questions);
* :func:`derive_aliases` makes mechanical aliases (a person's surname, an organisation without its leading
  "The"), which :func:`alias_rephrases` substitutes into the paraphrase.

Everything is deterministic and model-free, so the unit tests check it on hand-made records.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

SubjectKind = Literal["person", "organisation", "place", "creative_work", "event", "generic"]
SUBJECT_KINDS: tuple[SubjectKind, ...] = ("person", "organisation", "place", "creative_work", "event", "generic")

#: default number of same-subject probes per record
DEFAULT_K = 3

#: kind -> (relation, question template); ``{s}`` is the subject. Questions about stable facts of the subject,
#: the kind users ask about a name they know, so the pre-edit answer is what must survive an unrelated edit.
TEMPLATE_BANK: dict[str, tuple[tuple[str, str], ...]] = {
    "person": (
        ("birthplace", "Where was {s} born?"),
        ("known_for", "What is {s} best known for?"),
        ("nationality", "What nationality is {s}?"),
        ("occupation", "What does {s} do for a living?"),
        ("birth_date", "When was {s} born?"),
        ("education", "Where did {s} study?"),
    ),
    "organisation": (
        ("founded", "When was {s} founded?"),
        ("headquarters", "Where is {s} headquartered?"),
        ("founder", "Who founded {s}?"),
        ("industry", "What does {s} do?"),
        ("known_for", "What is {s} best known for?"),
        ("country", "In which country is {s} based?"),
    ),
    "place": (
        ("country", "Which country is {s} in?"),
        ("language", "What language do people speak in {s}?"),
        ("known_for", "What is {s} famous for?"),
        ("continent", "On which continent is {s}?"),
        ("landmark", "What is the most famous landmark in {s}?"),
        ("climate", "What is the climate like in {s}?"),
    ),
    "creative_work": (
        ("creator", "Who created {s}?"),
        ("released", "When did {s} first come out?"),
        ("genre", "What genre is {s}?"),
        ("plot", "What is {s} about?"),
        ("language", "What language is {s} in?"),
        ("known_for", "Why is {s} famous?"),
    ),
    "event": (
        ("first_held", "When was {s} first held?"),
        ("frequency", "How often does {s} take place?"),
        ("organiser", "Who organises {s}?"),
        ("description", "What is {s}?"),
        ("location", "Where does {s} take place?"),
        ("known_for", "What is {s} known for?"),
    ),
    "generic": (
        ("known_for", "What is {s} known for?"),
        ("description", "What is {s}?"),
        ("fact", "Tell me one fact about {s}."),
        ("origin", "Where does {s} come from?"),
    ),
}

#: (pattern on the lower-cased edit prompt, kind, relation); first match wins. Covers the common ZsRE/CounterFact
#: relation wordings; anything else is ``generic`` with no relation excluded.
RELATION_RULES: tuple[tuple[str, SubjectKind, str], ...] = (
    (r"law in .* declares|official language|language (?:of|spoken)", "place", "language"),
    (r"\bborn\b|\bbirth", "person", "birthplace"),
    (r"\bdied\b|\bdie\b|\bdeath\b|passed away|life ended", "person", "death"),
    (r"mother tongue|native (?:language|tongue)|\bspeaks?\b|speaker of|language used by|writes in", "person",
     "language"),
    (r"citizen|nationality", "person", "nationality"),
    (r"religion", "person", "religion"),
    (r"\bprofession\b|\boccupation\b|works? (?:as|in)|worked|employed|\bjob\b|holds? the (?:title|position)|"
     r"position (?:that|of)|\bheld\b", "person", "occupation"),
    (r"\bplays?\b|\bposition\b|sports team|\bteam\b|\bclub\b|\bplayer\b|member of", "person", "team"),
    (r"\binstrument\b|\bperforms?\b", "person", "instrument"),
    (r"\beducated\b|\bstud(?:y|ied)\b|alma mater|\battend|universit|\bwent\b", "person", "education"),
    (r"headquarter|\bhq\b", "organisation", "headquarters"),
    (r"\bfounded\b|\bfounder\b|established|was formed", "organisation", "founded"),
    (r"\bchief executive\b|\bceo\b", "organisation", "chief_executive"),
    (r"\bowned by\b|\bowner\b|parent company|subsidiary", "organisation", "owner"),
    (r"record label|\blabel\b", "creative_work", "label"),
    (r"\bgenre\b", "creative_work", "genre"),
    (r"composer|composed|\bwritten\b|\bauthor\b|\bwrote\b|directed|\bdirector\b|created|\bcreator\b|"
     r"produced|product of|developed|\bmade\b|publisher|\bby who\b|, by$|formulated", "creative_work", "creator"),
    (r"original network|\baired?\b|premiere|\bbroadcast|\bchannel\b", "creative_work", "network"),
    (r"released|\bstar\b|appear in", "creative_work", "released"),
    (r"capital|\bcontinent\b|located|\blocation\b|in which country|which country is|twin city|sister city|"
     r"which place|place where|can be found in|is within|\bis in$|native to|country .* from", "place", "location"),
    (r"\bwon\b|\bwinner\b|champion|\bheld in\b|\bhost(?:ed)?\b", "event", "winner"),
)


def subject_kind(prompt: str, subject: str = "") -> tuple[SubjectKind, str | None]:
    """``(kind, edited relation)`` guessed from an edit prompt's wording; ``("generic", None)`` if no rule fits.

    The subject's own words are removed first, so "Autonomous University of Madrid, which is located in" is read
    by its relation ("located in") and not by the name.
    """
    text = (prompt.replace(subject, " ") if subject else prompt).casefold()
    for pattern, kind, relation in RELATION_RULES:
        if re.search(pattern, text):
            return kind, relation
    return "generic", None


def _order(subject: str, count: int) -> list[int]:
    """A fixed permutation of ``range(count)`` per subject, so probes vary across subjects but never across runs."""
    keyed = [(hashlib.sha256(f"{subject}\x1f{i}".encode()).hexdigest(), i) for i in range(count)]
    return [i for _, i in sorted(keyed)]


def template_probes(subject: str, kind: str, relation: str | None, k: int = DEFAULT_K) -> list[str]:
    """``k`` same-subject questions for ``subject`` from :data:`TEMPLATE_BANK` (never the edited relation)."""
    if kind not in TEMPLATE_BANK:
        raise KeyError(f"unknown subject kind {kind!r}; expected one of {SUBJECT_KINDS}")
    bank = [(rel, text) for rel, text in TEMPLATE_BANK[kind] if rel != relation]
    return [bank[i][1].format(s=subject) for i in _order(subject, len(bank))[:k]]


_CORPORATE = re.compile(r",?\s+(?:inc\.?|ltd\.?|plc|llc|corp\.?|corporation|company|co\.|group|s\.a\.|ag)$", re.I)


def derive_aliases(subject: str, kind: str) -> list[str]:
    """Mechanical aliases of a subject: a person's surname; an organisation or work without "The" or a legal
    suffix. Empty when none differs from the subject (then the record has no alias paraphrase)."""
    words = subject.split()
    out: list[str] = []
    if kind == "person" and len(words) >= 2 and words[-1][:1].isupper():
        out.append(words[-1])
    elif kind in ("organisation", "creative_work", "event", "place"):
        short = _CORPORATE.sub("", subject)
        if short.lower().startswith("the ") and len(short.split()) > 1:
            short = short[4:]
        if short and short != subject:
            out.append(short)
    return [a for a in out if a and a != subject and len(a) >= 3]


def alias_rephrases(subject: str, prompts: list[str], aliases: list[str]) -> list[str]:
    """The prompts with the subject replaced by the first alias (prompts not naming the subject are skipped).

    Only whole-word occurrences are replaced, so a subject inside a longer word is left alone.
    """
    if not aliases:
        return []
    pattern = re.compile(r"(?<!\w)" + re.escape(subject) + r"(?!\w)")
    out = []
    for prompt in prompts:
        if pattern.search(prompt):
            out.append(pattern.sub(aliases[0], prompt, count=1))
    return out


__all__ = [
    "DEFAULT_K",
    "RELATION_RULES",
    "SUBJECT_KINDS",
    "SubjectKind",
    "TEMPLATE_BANK",
    "alias_rephrases",
    "derive_aliases",
    "subject_kind",
    "template_probes",
]
