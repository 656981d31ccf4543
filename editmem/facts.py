"""Facts, provenance and ledger records: the data that crosses every boundary of editmem.

A :class:`Fact` is one edit request ("``prompt`` should now be answered with ``target``") plus where it
came from. Its id is a content hash of ``subject``/``prompt``/``target``, so importing the same fact twice
is a no-op, and a fact with the same subject and prompt but another target *supersedes* the old one.
"""

from __future__ import annotations

import hashlib
import unicodedata
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from editmem.subjects import SpanMethod, acronym, locate_subject, similar_span


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def to_utc(value: datetime | None) -> datetime | None:
    """A timezone-aware UTC datetime: naive values are taken as UTC, aware ones converted.

    Every datetime a fact carries goes through this, so dates with and without a zone compare (a mixed feed once
    raised ``TypeError`` on ``valid_to < valid_from``) and ``as_of`` filters compare like with like.
    """
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


#: size limits of a fact's text fields (characters). A 100 KB target once drowned the embedding of its prompt and
#: another fact was retrieved for its own question; prompts and answers are sentences, not documents.
MAX_SUBJECT_CHARS = 500
MAX_PROMPT_CHARS = 2_000
MAX_TARGET_CHARS = 1_000
MAX_LIST_ITEMS = 64


def _norm(text: str) -> str:
    """Whitespace- and Unicode-normalised text used for ids and slot keys (case is kept)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def fact_id_for(subject: str, prompt: str, target: str) -> str:
    """Content hash of a fact: the same subject/prompt/target always gives the same id."""
    payload = "\x1f".join(_norm(x) for x in (subject, prompt, target))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def slot_key_for(subject: str, prompt: str) -> str:
    """Key of the "slot" a fact fills: facts sharing it supersede each other."""
    payload = "\x1f".join(_norm(x).casefold() for x in (subject, prompt))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


class FactStatus(str, Enum):
    active = "active"
    superseded = "superseded"
    retracted = "retracted"


class Provenance(BaseModel):
    """Where a fact came from."""

    model_config = ConfigDict(extra="forbid")

    source: str = "sdk"
    """Kind of source: ``sdk``, ``cli``, ``feed``, ``eval`` or free text such as a system name."""
    source_uri: str | None = None
    """URI of the document or record the fact was taken from."""
    feed: str | None = None
    """Name of the feed (file) it was imported from."""
    author: str | None = None
    """Who asserted it (a person, a team, a pipeline)."""
    ingested_at: datetime = Field(default_factory=utcnow)
    """When editmem first saw it (UTC)."""
    confidence: float = 1.0
    """Confidence in [0, 1] given by the source."""

    @field_validator("ingested_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return to_utc(value)

    @field_validator("confidence")
    @classmethod
    def _confidence_in_range(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"must be between 0 and 1, got {value}")
        return value


class Fact(BaseModel):
    """One fact edit.

    ``prompt`` is a question or a cloze sentence that names ``subject`` (locate-then-edit and layer-level-prompt
    strategies key on the subject's last token in it); ``target`` is the new answer, without a leading space.

    The subject need not be verbatim: "Who is the ECB president?" names ``European Central Bank`` by its acronym.
    Validation locates it (:func:`editmem.subjects.locate_subject`: case/accent-insensitive, ``aliases``, acronym,
    partial name) and records the surface form in ``subject_in_prompt`` and the step that found it in
    ``subject_match``; :func:`parse_fact` adds a last, embedding-based step. A subject that cannot be located is
    rejected, naming the field.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    subject: str = Field(min_length=1, max_length=MAX_SUBJECT_CHARS)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    target: str = Field(min_length=1, max_length=MAX_TARGET_CHARS)
    rephrases: list[str] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    """Paraphrases of ``prompt`` (evaluation, and strategies that train on them)."""
    locality_prompts: list[str] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    """Unrelated prompts whose answers must not change."""
    relation: str | None = Field(default=None, max_length=MAX_SUBJECT_CHARS)
    aliases: list[str] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    """Other names of the subject ("UK", "Britain"): used to locate it in prompts and by query gates."""
    subject_in_prompt: str | None = Field(default=None, max_length=MAX_SUBJECT_CHARS)
    """The subject as written in ``prompt`` when it is not verbatim (filled by validation; may be given)."""
    subject_match: SpanMethod | None = None
    """How ``subject_in_prompt`` was found (see :mod:`editmem.subjects`); None when the subject is verbatim."""
    valid_from: datetime | None = None
    """First instant the fact holds (UTC; a date means midnight UTC). Before it, retrieval-gated strategies skip it."""
    valid_to: datetime | None = None
    """First instant the fact no longer holds (exclusive). From then on retrieval-gated strategies skip it."""
    tags: list[str] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    namespace: str = Field(default="default", max_length=MAX_SUBJECT_CHARS)
    """Scope for retrieval-gated strategies; parametric strategies (lyaplock) edit globally."""
    provenance: Provenance = Field(default_factory=Provenance)

    @field_validator("subject", "prompt", "target")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("rephrases", "locality_prompts")
    @classmethod
    def _prompt_sized(cls, value: list[str]) -> list[str]:
        for item in value:
            if len(item) > MAX_PROMPT_CHARS:
                raise ValueError(f"an item has {len(item)} characters, at most {MAX_PROMPT_CHARS} allowed")
        return value

    @field_validator("valid_from", "valid_to")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return to_utc(value)

    @field_validator("target")
    @classmethod
    def _no_leading_space(cls, value: str) -> str:
        # Strategies insert exactly one space between prompt and target; a stored leading space would double it.
        return value.lstrip()

    @model_validator(mode="after")
    def _subject_in_prompt(self) -> "Fact":
        if self.subject_in_prompt is not None:
            if self.subject_in_prompt not in self.prompt:
                raise ValueError(f"subject_in_prompt {self.subject_in_prompt!r} does not occur in prompt {self.prompt!r}")
            if self.subject_in_prompt == self.subject:
                self.subject_in_prompt, self.subject_match = None, None
            elif self.subject_match is None:
                self.subject_match = "given"
        else:
            span = locate_subject(self.prompt, self.subject, self.aliases)
            if span is None:
                raise ValueError(unlocated_message(self.subject, self.prompt, self.aliases))
            if span.method != "exact":
                self.subject_in_prompt, self.subject_match = span.text, span.method
        if self.valid_from and self.valid_to and self.valid_to < self.valid_from:
            raise ValueError("valid_to is before valid_from")
        return self

    def valid_at(self, when: datetime) -> bool:
        """True when ``when`` lies in ``[valid_from, valid_to)`` (open ends are unbounded)."""
        when = to_utc(when)
        return (self.valid_from is None or self.valid_from <= when) and (self.valid_to is None or when < self.valid_to)

    @property
    def surface(self) -> str:
        """The subject as written in ``prompt`` (what a subject-keyed strategy keys on)."""
        return self.subject_in_prompt or self.subject

    @property
    def id(self) -> str:
        return fact_id_for(self.subject, self.prompt, self.target)

    @property
    def slot(self) -> str:
        return slot_key_for(self.subject, self.prompt)

    def content_hash(self) -> str:
        """Hash of the whole record (provenance excluded), for feeds that re-send a fact with new details."""
        body = self.model_dump(mode="json", exclude={"provenance"})
        for name in _LATER_FIELDS:  # fields added later hash as before while they keep their default
            if not body.get(name):
                body.pop(name, None)
        return hashlib.sha256(repr(sorted(body.items())).encode()).hexdigest()[:24]

    def document(self) -> str:
        """Text embedded for semantic search."""
        return f"{self.prompt} {self.target}"


#: fields added after facts were first stored: left out of :meth:`Fact.content_hash` while empty
_LATER_FIELDS = ("aliases", "subject_in_prompt", "subject_match")


UNLOCATED = "is not named in prompt"


def unlocated_message(subject: str, prompt: str, aliases: list[str] | tuple[str, ...] = ()) -> str:
    """The error for a subject that no step of :mod:`editmem.subjects` finds in the prompt."""
    tried = ["verbatim", "case-insensitive"]
    if aliases:
        tried.append(f"aliases {list(aliases)}")
    if acronym(subject):
        tried.append(f"acronym {acronym(subject)!r}")
    tried += ["partial name", "similar named span"]
    return (f"subject {subject!r} {UNLOCATED} {prompt!r} (tried {', '.join(tried)}); name it in the "
            "prompt, or give `aliases` or `subject_in_prompt`")


class StoredFact(BaseModel):
    """A fact as the memory holds it: the fact plus its lifecycle state."""

    model_config = ConfigDict(extra="forbid")

    fact: Fact
    id: str
    status: FactStatus = FactStatus.active
    version: int = 1
    """1 for the first fact in its slot, 2 for the one that superseded it, ..."""
    supersedes: str | None = None
    superseded_by: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    retracted_at: datetime | None = None

    @field_validator("created_at", "retracted_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return to_utc(value)

    @property
    def active(self) -> bool:
        return self.status is FactStatus.active


LedgerAction = Literal["add", "supersede", "retract", "reapply"]


class LedgerEntry(BaseModel):
    """One append-only line of the edit ledger."""

    model_config = ConfigDict(extra="forbid")

    seq: int
    at: datetime = Field(default_factory=utcnow)
    action: LedgerAction
    fact_id: str
    actor: str = "sdk"
    subject: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return to_utc(value)


class FactValidationError(ValueError):
    """A record could not be turned into a :class:`Fact`. Names the record and the offending field(s)."""

    def __init__(self, record: str, errors: list[tuple[str, str, Any]]):
        self.record = record
        self.errors = errors  # (field, message, value)
        parts = "; ".join(f"field {field!r}: {msg} (got {value!r})" for field, msg, value in errors)
        super().__init__(f"{record}: {parts}")


def parse_fact(data: dict[str, Any] | Fact, *, record: str = "record", provenance: dict[str, Any] | None = None,
               locate_similar: bool = True) -> Fact:
    """Validate ``data`` into a :class:`Fact`, raising :class:`FactValidationError` naming ``record`` and fields.

    ``provenance`` supplies defaults (for instance the feed name) that the record's own provenance overrides.
    With ``locate_similar``, a subject that the textual steps do not find in the prompt is looked for as the
    prompt's named span most similar to it (:func:`editmem.subjects.similar_span`, the local sentence encoder);
    only when that fails too is the record rejected (field ``subject``).
    """
    if isinstance(data, Fact):
        return data
    if not isinstance(data, dict):
        raise FactValidationError(record, [("<record>", "must be an object", data)])
    payload = dict(data)
    own = payload.get("provenance") or {}
    if not isinstance(own, dict):
        raise FactValidationError(record, [("provenance", "must be an object", _short_value(own))])
    if provenance:
        payload["provenance"] = {**provenance, **own}
    if locate_similar:
        _locate_by_similarity(payload)
    try:
        return Fact.model_validate(payload)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "<record>"
            value = err.get("input")
            if field == "<record>" and UNLOCATED in err["msg"]:  # the subject-location check names its field
                field, value = "subject", payload.get("subject")
            errors.append((field, err["msg"], _short_value(value)))
        raise FactValidationError(record, errors) from None
    except (TypeError, ValueError, OverflowError) as exc:  # a validator tripping on an odd value: still name the record
        raise FactValidationError(record, [("<record>", f"{type(exc).__name__}: {exc}", None)]) from None


def _locate_by_similarity(payload: dict[str, Any]) -> None:
    """Fill ``subject_in_prompt`` from the most similar named span when the textual steps find nothing."""
    subject, prompt, aliases = payload.get("subject"), payload.get("prompt"), payload.get("aliases") or []
    if payload.get("subject_in_prompt") is not None or not isinstance(subject, str) or not isinstance(prompt, str):
        return
    if not subject.strip() or not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        return
    if locate_subject(prompt, subject, aliases) is not None:
        return
    from editmem.memory.embedding import embed_texts  # the local encoder, loaded only for this step

    span = similar_span(prompt, subject, lambda texts: embed_texts(texts))
    if span is not None:
        payload["subject_in_prompt"], payload["subject_match"] = span.text, span.method


def _short_value(value: Any, limit: int = 80) -> Any:
    """The offending value for an error message, cut to ``limit`` characters (a 100 KB target is not echoed)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}... ({len(value)} characters)"
    if isinstance(value, (dict, list)) and len(repr(value)) > limit:
        return f"{repr(value)[:limit]}..."
    return value
