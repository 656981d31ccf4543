"""Fact feeds: JSONL or CSV files of facts, validated line by line and imported into a store.

Schema (one record per JSONL line, or one CSV row under a header):

=================  ========  ===================================================================
field              required  notes
=================  ========  ===================================================================
subject            yes       must occur verbatim in ``prompt``
prompt             yes       question or cloze sentence
target             yes       the new answer (no leading space needed)
rephrases          no        JSON list, or in CSV a ``|``-separated string
locality_prompts   no        same as ``rephrases``
relation           no
valid_from/to      no        ISO date or datetime
tags               no        JSON list, or in CSV a ``,``-separated string
namespace          no        default ``default``
provenance         no        object with source, source_uri, author, confidence; the flat columns
                             ``source``, ``source_uri``, ``author``, ``confidence`` work too
=================  ========  ===================================================================

A bad record is reported with its line number and field and does not stop or undo the good ones.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from editmem.facts import Fact, FactValidationError, parse_fact

PROVENANCE_COLUMNS = ("source", "source_uri", "author", "confidence")
LIST_COLUMNS = {"rephrases": "|", "locality_prompts": "|", "tags": ","}
IMPORT_CHUNK = 64  # facts per llm.edit call (and per artifact save) during an import


class RejectedRecord(BaseModel):
    line: int
    field: str
    message: str


class ImportSummary(BaseModel):
    """What an import did (or, with ``dry_run``, would do)."""

    feed: str
    added: int = 0
    duplicate: int = 0
    superseded: int = 0
    rejected: list[RejectedRecord] = Field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.rejected


def _normalise_record(raw: dict[str, Any], *, from_csv: bool) -> dict[str, Any]:
    record = {k: v for k, v in raw.items() if k is not None and not (from_csv and v in ("", None))}
    if from_csv:
        for column, sep in LIST_COLUMNS.items():
            if isinstance(record.get(column), str):
                record[column] = [x.strip() for x in record[column].split(sep) if x.strip()]
    provenance = dict(record.pop("provenance", None) or {})
    for column in PROVENANCE_COLUMNS:
        if column in record:
            provenance.setdefault(column, record.pop(column))
    if provenance:
        record["provenance"] = provenance
    return record


def read_feed(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    """Yield ``(line_number, record_or_parse_error)`` for every record of a JSONL or CSV feed."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                return
            for row in reader:
                extra = row.pop(None, None)
                if extra:
                    yield reader.line_num, ValueError(f"{len(extra)} more value(s) than header columns")
                    continue
                yield reader.line_num, _normalise_record(row, from_csv=True)
        return
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, ValueError(f"invalid JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(data, dict):
                yield number, ValueError("a feed line must be a JSON object")
                continue
            yield number, _normalise_record(data, from_csv=False)


def parse_feed(path: str | Path, *, feed_name: str | None = None, source: str = "feed") -> tuple[list[tuple[int, Fact]], list[RejectedRecord]]:
    """Validate every record; returns the good facts (with line numbers) and the rejected lines."""
    path = Path(path)
    name = feed_name or path.name
    good: list[tuple[int, Fact]] = []
    rejected: list[RejectedRecord] = []
    defaults = {"source": source, "feed": name, "source_uri": str(path)}
    for number, item in read_feed(path):
        record = f"{name} line {number}"
        if isinstance(item, Exception):
            rejected.append(RejectedRecord(line=number, field="<record>", message=str(item)))
            continue
        try:
            good.append((number, parse_fact(item, record=record, provenance=defaults)))
        except FactValidationError as exc:
            for field, msg, value in exc.errors:
                rejected.append(RejectedRecord(line=number, field=field, message=f"{msg} (got {value!r})"))
    return good, rejected


def count_dry_run(memory, facts: list[Fact], summary: ImportSummary) -> ImportSummary:
    """Fill ``summary`` with what importing ``facts`` would do, without changing anything."""
    for fact in facts:
        try:
            stored = memory.get(fact.id)
        except KeyError:
            summary.superseded += int(memory.active_in_slot(fact.slot) is not None)
            summary.added += 1
            continue
        summary.duplicate += int(stored.active)
        summary.added += int(not stored.active)
    return summary


def apply_facts(llm, facts: list[Fact], summary: ImportSummary, *, actor: str = "cli", batch_size: int | None = None, progress: bool = False) -> ImportSummary:
    """Store and apply ``facts`` through ``llm.edit`` in chunks of ``batch_size`` (the strategy's own by default)."""
    from tqdm.auto import tqdm

    size = batch_size or llm.strategy.config.batch_size
    # The strategy sees ``size`` facts per update; the store is saved once per progress chunk, not per update.
    chunk_size = max(size, IMPORT_CHUNK)
    with tqdm(total=len(facts), desc=f"import {summary.feed}", unit="fact", disable=not progress) as bar:
        for i in range(0, len(facts), chunk_size):
            chunk = facts[i : i + chunk_size]
            report = llm.edit(chunk, actor=actor, batch_size=size)
            summary.added += len(report.added)
            summary.duplicate += len(report.duplicates)
            summary.superseded += len(report.superseded)
            bar.update(len(chunk))
    return summary


def import_feed(llm, path: str | Path, *, dry_run: bool = False, actor: str = "sdk", batch_size: int | None = None, progress: bool = False) -> ImportSummary:
    """Import a feed into an :class:`~editmem.EditableLLM` (or only validate and count it with ``dry_run``).

    Rejected records are reported in the summary and skip nothing else.
    """
    good, rejected = parse_feed(path)
    summary = ImportSummary(feed=Path(path).name, rejected=rejected, dry_run=dry_run)
    facts = [fact for _, fact in good]
    if dry_run:
        return count_dry_run(llm.memory, facts, summary)
    return apply_facts(llm, facts, summary, actor=actor, batch_size=batch_size, progress=progress)
