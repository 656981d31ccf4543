"""Temporal validity acts: expired facts stop firing at valid_to, future ones start at valid_from, as_of in the
memory, the SDK (context strategy), the trace and the CLI; and a second EditableLLM follows edits by ledger sequence."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from editmem.cli import main
from editmem.editable import EditableLLM
from editmem.memory import EditMemory

EXPIRED = {"subject": "Twitter", "prompt": "Who owns Twitter?", "target": "Twitter Inc.", "valid_to": "2020-01-01"}
FUTURE = {"subject": "Mars", "prompt": "Who governs Mars?", "target": "The Mars Council", "valid_from": "2099-01-01T00:00:00+05:00"}
CURRENT = {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan", "valid_from": "2025-03-18"}


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def test_memory_search_and_list_honour_as_of(tmp_path):
    memory = EditMemory(tmp_path / "s")
    ids = {f["subject"]: memory.add(f).stored.id for f in (EXPIRED, FUTURE, CURRENT)}
    now = utc(2026, 6, 1)

    def found(query, when):
        return [s.fact.subject for s, _ in memory.search(query, k=1, as_of=when)]

    assert found("Who owns Twitter?", now) != ["Twitter"]
    assert found("Who owns Twitter?", utc(2019, 6, 1)) == ["Twitter"]
    assert found("Who governs Mars?", now) != ["Mars"]
    assert found("Who governs Mars?", utc(2099, 1, 1, 12)) == ["Mars"]
    assert found("Who governs Mars?", utc(2098, 12, 31, 19, 1)) == ["Mars"]  # 2099-01-01 +05:00 is 2098-12-31 19:00 UTC
    assert found("Who governs Mars?", utc(2098, 12, 31, 18, 59)) != ["Mars"]
    assert found("Who is the CEO of Intel?", now) == ["Intel"]
    assert found("Who is the CEO of Intel?", utc(2025, 3, 17)) != ["Intel"]
    assert {s.fact.subject for s in memory.list(as_of=now)} == {"Intel"}
    assert memory.invalid_ids(now) == {ids["Twitter"], ids["Mars"]}
    naive = datetime(2019, 6, 1)  # no zone: taken as UTC
    assert found("Who owns Twitter?", naive) == ["Twitter"]


@pytest.fixture()
def llm(tmp_path, tiny_loaded):
    model = EditableLLM.open(tmp_path / "store", model=tiny_loaded, strategy="context")
    model.edit([EXPIRED, FUTURE, CURRENT])
    return model


def test_context_strategy_states_only_facts_valid_as_of(llm):
    def fired(question, **kw):
        out = llm.generate(question, max_new_tokens=1, **kw)
        return [llm.memory.get(i).fact.subject for i in out.trace.fact_ids], out

    assert fired("Who is the CEO of Intel?")[0] == ["Intel"]
    subjects, out = fired("Who owns Twitter?")
    assert subjects == [] and "Twitter Inc." not in out.prompt  # expired: not stated
    assert fired("Who governs Mars?")[0] == []  # not yet valid
    subjects, out = fired("Who owns Twitter?", as_of=utc(2019, 1, 1))
    assert subjects == ["Twitter"] and "Twitter Inc." in out.prompt
    assert out.trace.details["as_of"].startswith("2019-01-01T00:00:00")
    assert fired("Who governs Mars?", as_of=datetime(2100, 1, 1))[0] == ["Mars"]


def test_cli_ask_as_of(tmp_path, tiny_checkpoint):
    feed = tmp_path / "f.jsonl"
    feed.write_text(json.dumps(EXPIRED) + "\n")
    base = ["--store", str(tmp_path / "store"), "--model", str(tiny_checkpoint), "--strategy", "context"]
    runner = CliRunner()
    assert runner.invoke(main, [*base, "import", str(feed)], catch_exceptions=False).exit_code == 0
    now = runner.invoke(main, [*base, "ask", "Who owns Twitter?", "--max-new-tokens", "1"], catch_exceptions=False)
    then = runner.invoke(main, [*base, "ask", "Who owns Twitter?", "--max-new-tokens", "1", "--as-of", "2019-05-01"], catch_exceptions=False)
    assert now.exit_code == then.exit_code == 0
    assert "edits used" not in now.output
    assert "edits used" in then.output and "as of 2019-05-01" in then.output


def test_a_second_model_follows_edits_by_ledger_sequence(tmp_path, tiny_loaded):
    path = tmp_path / "store"
    writer = EditableLLM.open(path, model=tiny_loaded, strategy="context")
    reader = EditableLLM.open(path, model=tiny_loaded)
    old = writer.edit({"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Pat Gelsinger"}).added[0]
    assert reader.generate("Who is the CEO of Intel?", max_new_tokens=1).trace.fact_ids == [old]  # synced on the call
    new = writer.edit(CURRENT).added[0]
    assert reader.generate("Who is the CEO of Intel?", max_new_tokens=1).trace.fact_ids == [new]
    assert old not in reader.strategy.applied_ids()
    writer.forget(new)
    assert reader.generate("Who is the CEO of Intel?", max_new_tokens=1).trace.fact_ids == []


def test_as_of_on_a_strategy_without_temporal_support_is_refused(tmp_path, tiny_loaded):
    llm = EditableLLM.open(tmp_path / "store", model=tiny_loaded, strategy="memit")  # parametric: edits in the weights
    with pytest.raises(ValueError, match="cannot be scoped by time"):
        llm.generate("Who is the CEO of Intel?", max_new_tokens=1, as_of=utc(2020, 1, 1))
    assert llm.generate("Who is the CEO of Intel?", max_new_tokens=1).text is not None  # no as_of: unchanged
