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

A bad record is reported with its line number and field and does not stop or undo the good ones. That includes bytes
that are not text: a line with invalid UTF-8 is rejected by line number and the others are read; a UTF-8 byte-order
mark is ignored; UTF-16 and UTF-32 files with a byte-order mark are decoded; a binary file (NUL bytes, no BOM) is
one rejection. Limits: a line (JSONL) or row (CSV) holds at most :data:`MAX_LINE_BYTES`; text fields have the limits
of :class:`~editmem.facts.Fact` (subject 500, prompt 2,000, target 1,000 characters, lists 64 items).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from editmem.facts import Fact, FactStatus, FactValidationError, parse_fact

PROVENANCE_COLUMNS = ("source", "source_uri", "author", "confidence")
LIST_COLUMNS = {"rephrases": "|", "locality_prompts": "|", "tags": ","}
IMPORT_CHUNK = 64  # facts per llm.edit call (and per artifact save) during an import
MAX_LINE_BYTES = 256 * 1024
"""Longest feed line (or CSV row) accepted; longer ones are rejected by line number."""
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


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
    stale: int = 0
    """facts superseded earlier and sent again (an old feed): not re-activated"""
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
    provenance = record.pop("provenance", None) or {}
    if not isinstance(provenance, dict):  # left for validation to reject by name
        record["provenance"] = provenance
        return record
    provenance = dict(provenance)
    for column in PROVENANCE_COLUMNS:
        if column in record:
            provenance.setdefault(column, record.pop(column))
    if provenance:
        record["provenance"] = provenance
    return record


def decode_lines(data: bytes) -> Iterator[tuple[int, str | Exception]]:
    """Split a feed's bytes into ``(line_number, text_or_error)``: BOMs handled, one bad line never spoils the rest."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            if encoding != "utf-8-sig":
                try:
                    text = data.decode(encoding)
                except UnicodeDecodeError as exc:
                    yield 1, ValueError(f"file starts with a {encoding.upper()} byte-order mark but is not valid {encoding.upper()} (byte {exc.start})")
                    return
                for number, line in enumerate(text.splitlines(keepends=True), start=1):
                    yield number, line
                return
            data = data[len(bom):]
            break
    raw_lines = data.splitlines(keepends=True)
    with_nul = sum(1 for raw in raw_lines if b"\x00" in raw)
    if with_nul > max(3, len(raw_lines) // 2):  # one message for a binary file, not one per "line"
        yield 1, ValueError(f"binary file ({with_nul} of {len(raw_lines)} lines hold NUL bytes, no byte-order mark): a feed is UTF-8 text, JSONL or CSV")
        return
    for number, raw in enumerate(raw_lines, start=1):
        if b"\x00" in raw:
            yield number, ValueError("line holds NUL bytes (binary data, or UTF-16 without a byte-order mark)")
            continue
        if len(raw) > MAX_LINE_BYTES:
            yield number, ValueError(f"line is {len(raw):,} bytes, at most {MAX_LINE_BYTES:,} allowed")
            continue
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, ValueError(f"not valid UTF-8 at byte {exc.start + 1} of the line ({raw[exc.start:exc.start + 1]!r}); save the feed as UTF-8")


def _read_csv(lines: list[tuple[int, str | Exception]]) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    bad = {number: item for number, item in lines if isinstance(item, Exception)}
    # undecodable lines become empty lines: csv skips them and line numbers stay those of the file
    text = [item if isinstance(item, str) else "\n" for _, item in lines]
    reader = csv.DictReader(io.StringIO("".join(text), newline=""))
    reported: set[int] = set()

    def flush_bad(upto: int) -> Iterator[tuple[int, Exception]]:
        for number in sorted(n for n in bad if n <= upto and n not in reported):
            reported.add(number)
            yield number, bad[number]

    try:
        if not reader.fieldnames:
            yield from flush_bad(len(lines))
            return
        names = [n.strip() if isinstance(n, str) else n for n in reader.fieldnames]
        reader.fieldnames = names
        for row in reader:
            yield from flush_bad(reader.line_num)
            number = reader.line_num  # the row's last physical line (a quoted field may span several)
            if sum(len(str(v or "")) for v in row.values()) > MAX_LINE_BYTES:
                yield number, ValueError(f"row is over {MAX_LINE_BYTES:,} characters")
                continue
            extra = row.pop(None, None)
            if extra:
                yield number, ValueError(f"{len(extra)} more value(s) than header columns")
                continue
            yield number, _normalise_record(row, from_csv=True)
    except csv.Error as exc:
        yield reader.line_num or 1, ValueError(f"CSV: {exc}")
    yield from flush_bad(len(lines))


def read_feed(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    """Yield ``(line_number, record_or_error)`` for every record of a JSONL or CSV feed (never raises on content)."""
    path = Path(path)
    lines = list(decode_lines(path.read_bytes()))
    if path.suffix.lower() == ".csv":
        yield from _read_csv(lines)
        return
    for number, line in lines:
        if isinstance(line, Exception):
            yield number, line
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, ValueError(f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        except RecursionError:
            yield number, ValueError("invalid JSON: nested too deeply")
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
                got = f" (got {value!r})" if value is not None else ""
                rejected.append(RejectedRecord(line=number, field=field, message=f"{msg}{got}"))
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
        summary.stale += int(stored.status is FactStatus.superseded)
        summary.added += int(stored.status is FactStatus.retracted)
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
            summary.stale += len(getattr(report, "stale", []))
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
