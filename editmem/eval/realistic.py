"""The ``realistic`` benchmark: facts that changed in 2023-2025, with the probes a user's questions need.

Each line of ``editmem/eval/data/realistic.jsonl`` is one :class:`RealisticRecord` (schema and sources:
``docs/benchmarks/realistic.md``). Unlike ZsRE/CounterFact, every record carries

* a paraphrase and an **alias paraphrase** that names the subject differently (short name, abbreviation,
  description), never verbatim;
* three **same-subject probes**: other questions about the same subject, whose pre-edit answers must not change;
* one **unrelated probe** with a reference answer (the teacher-forcing context of token-level locality);
* its **source of truth** and the **date** of the change.

This module only reads and validates the file; :mod:`editmem.eval.datasets` turns records into
:class:`~editmem.eval.datasets.EvalRecord`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: ``--dataset realistic`` resolves to this package-data file
REALISTIC_FILE = Path(__file__).resolve().parent / "data" / "realistic.jsonl"
#: the changes the benchmark covers
YEARS = (2023, 2024, 2025)

RealisticKind = Literal["person", "organisation", "place", "creative_work", "event"]
_DATE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])(?:-(0[1-9]|[12]\d|3[01]))?$")


def _mentions(text: str, name: str) -> bool:
    """Whether ``name`` occurs in ``text`` as whole words, ignoring case and a leading article ("the Giro" is
    named by "the 2024 Giro")."""
    core = re.sub(r"^(?:the|a|an)\s+", "", name.strip(), flags=re.I)
    return re.search(r"(?<!\w)" + re.escape(core.casefold()) + r"(?!\w)", text.casefold()) is not None


class RealisticRecord(BaseModel):
    """One changed fact and its probes (one JSON object per line of the benchmark file)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^rl-\d{4}$")
    """Stable record id, ``rl-0001`` ..."""
    subject: str = Field(min_length=1)
    """The entity the fact is about, exactly as it appears in ``prompt``."""
    subject_kind: RealisticKind
    relation: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    """What changed, snake_case (``head_of_government``, ``chief_executive``, ``winner``, ...)."""
    prompt: str
    """The edit request's question; names the subject verbatim (the ``Fact`` contract)."""
    target: str
    """The new answer (short: a name, a place, a number)."""
    previous: str
    """The answer before the change (context for readers; never scored)."""
    aliases: list[str] = Field(min_length=1)
    """Other names of the subject used by ``alias_paraphrases`` (short name, abbreviation, description)."""
    paraphrases: list[str] = Field(min_length=1)
    """Other wordings of ``prompt``; may or may not name the subject verbatim."""
    alias_paraphrases: list[str] = Field(min_length=1)
    """Wordings that name the subject only through an alias."""
    same_subject_probes: list[str] = Field(min_length=3)
    """Questions about the same subject on other relations: their pre-edit answers must not change."""
    unrelated_probe: str
    unrelated_answer: str
    changed_on: str
    """Date of the change, ``YYYY-MM-DD`` (or ``YYYY-MM`` when only the month is certain)."""
    source: str = Field(min_length=3)
    """Source of truth: the announcement or the Wikipedia article title that records the change."""

    @field_validator("prompt", "target", "previous", "unrelated_probe", "unrelated_answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip() or value != value.strip():
            raise ValueError("must be non-blank and carry no surrounding whitespace")
        return value

    @field_validator("changed_on")
    @classmethod
    def _date(cls, value: str) -> str:
        match = _DATE.match(value)
        if not match or int(match.group(1)) not in YEARS:
            raise ValueError(f"must be YYYY-MM[-DD] in {YEARS[0]}-{YEARS[-1]}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "RealisticRecord":
        if self.subject not in self.prompt:
            raise ValueError(f"prompt must name the subject {self.subject!r} verbatim")
        if self.target.casefold() == self.previous.casefold():
            raise ValueError("target equals previous: the fact did not change")
        for text in self.alias_paraphrases:
            if self.subject.casefold() in text.casefold():
                raise ValueError(f"alias paraphrase names the subject verbatim: {text!r}")
            if not any(_mentions(text, alias) for alias in self.aliases):
                raise ValueError(f"alias paraphrase uses none of the aliases {self.aliases}: {text!r}")
        for text in self.same_subject_probes + [self.unrelated_probe]:
            if _mentions(text, self.target):
                raise ValueError(f"probe names the new answer {self.target!r}: {text!r}")
        for name in [self.subject] + self.aliases:
            if _mentions(self.unrelated_probe, name):
                raise ValueError(f"unrelated probe mentions the subject ({name!r}): {self.unrelated_probe!r}")
        prompts = [self.prompt] + self.paraphrases + self.alias_paraphrases + self.same_subject_probes
        if len({p.casefold() for p in prompts}) != len(prompts):
            raise ValueError("prompts, paraphrases and probes must all differ")
        return self

    def names_subject(self, text: str) -> bool:
        """Whether ``text`` contains the subject verbatim (the case subject-keyed strategies can locate)."""
        return self.subject in text


def iter_realistic(path: Path | str = REALISTIC_FILE) -> Iterator[tuple[int, dict]]:
    """``(line number, raw object)`` for every non-blank line; malformed JSON raises ``ValueError`` with the line."""
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{Path(path).name} line {number}: invalid JSON ({exc.msg})") from None


def is_realistic(raw: object) -> bool:
    """Whether a raw record is in the realistic format (detected from its keys)."""
    return isinstance(raw, dict) and {"same_subject_probes", "alias_paraphrases", "unrelated_probe"} <= set(raw)


def load_realistic(path: Path | str = REALISTIC_FILE) -> list[RealisticRecord]:
    """Every record of the file, validated; raises ``ValueError`` naming the line, or on duplicate ids."""
    out: list[RealisticRecord] = []
    seen: dict[str, int] = {}
    for number, raw in iter_realistic(path):
        try:
            record = RealisticRecord.model_validate(raw)
        except ValueError as exc:
            raise ValueError(f"{Path(path).name} line {number}: {exc}") from None
        if record.id in seen:
            raise ValueError(f"{Path(path).name} line {number}: duplicate id {record.id} (first on line {seen[record.id]})")
        seen[record.id] = number
        out.append(record)
    return out


__all__ = ["REALISTIC_FILE", "RealisticKind", "RealisticRecord", "is_realistic", "iter_realistic", "load_realistic"]
