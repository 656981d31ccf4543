"""EditMemory: idempotent adds, supersede and retract with history, search, persistence, model checks."""

import pytest

from editmem.facts import Fact, FactStatus
from editmem.memory import EditMemory, FactNotFoundError, StoreMismatchError

CEO_OLD = {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Pat Gelsinger"}
CEO_NEW = {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"}
POPE = {"subject": "the pope", "prompt": "Who is the pope?", "target": "Leo XIV"}


@pytest.fixture()
def memory(tmp_path):
    return EditMemory(tmp_path / "store")


def test_add_is_idempotent(memory):
    first = memory.add(Fact(**CEO_NEW))
    again = memory.add(Fact(**CEO_NEW))
    assert first.status == "added" and again.status == "duplicate"
    assert again.stored.id == first.stored.id
    assert memory.count() == 1
    assert [e.action for e in memory.ledger.entries()] == ["add"]


def test_supersede_keeps_the_old_record_with_valid_to(memory):
    old = memory.add(Fact(**CEO_OLD)).stored
    result = memory.add(Fact(**CEO_NEW))
    assert result.status == "superseded" and result.replaced.id == old.id
    assert result.stored.version == 2 and result.stored.supersedes == old.id
    kept = memory.get(old.id)
    assert kept.status is FactStatus.superseded and kept.fact.valid_to is not None and kept.superseded_by == result.stored.id
    assert [s.fact.target for s in memory.list()] == ["Lip-Bu Tan"]
    assert [e.action for e in memory.history("intel")] == ["add", "add", "supersede"]


def test_retract_keeps_the_record_and_readd_revives_it(memory):
    stored = memory.add(Fact(**POPE)).stored
    memory.retract(stored.id, actor="alice", reason="test")
    assert memory.count() == 0
    assert memory.get(stored.id).status is FactStatus.retracted
    entry = memory.ledger.entries()[-1]
    assert (entry.action, entry.actor, entry.detail["reason"]) == ("retract", "alice", "test")
    assert memory.add(Fact(**POPE)).status == "added"
    assert memory.count() == 1


def test_unknown_id_raises(memory):
    with pytest.raises(FactNotFoundError):
        memory.retract("deadbeef" * 3)


def test_search_and_filters(memory):
    memory.add(Fact(**CEO_NEW, tags=["ceo"]))
    memory.add(Fact(**POPE))
    hits = memory.search("Who runs Intel?", k=2)
    assert hits[0][0].fact.subject == "Intel" and hits[0][1] > hits[1][1]
    assert [s.fact.subject for s in memory.list(subject="INTEL")] == ["Intel"]
    assert [s.fact.subject for s in memory.list(where={"tags": "ceo"})] == ["Intel"]


def test_reopen_restores_everything_and_ledger_replays_to_the_same_state(tmp_path):
    path = tmp_path / "store"
    memory = EditMemory(path)
    memory.add(Fact(**CEO_OLD))
    memory.add(Fact(**CEO_NEW))
    pope = memory.add(Fact(**POPE)).stored
    memory.retract(pope.id)
    del memory
    reopened = EditMemory(path)
    assert [s.fact.target for s in reopened.list()] == ["Lip-Bu Tan"]
    assert reopened.count(status=None) == 3
    # replaying the append-only ledger gives the current state
    state = {}
    for entry in reopened.ledger.entries():
        state[entry.fact_id] = {"add": "active", "supersede": "superseded", "retract": "retracted"}[entry.action]
    assert state == {s.id: s.status.value for s in reopened.list(status=None)}


def test_store_refuses_another_model(memory):
    memory.check_model(model_name="a", fingerprint="111", strategy="context")
    with pytest.raises(StoreMismatchError, match="keeps its strategy"):
        memory.check_model(model_name="a", fingerprint="111", strategy="llp")
    memory.check_model(model_name="a", fingerprint="111", strategy="llp", switch_strategy=True)  # deliberate switch
    assert memory.read_meta()["strategy"] == "llp"
    with pytest.raises(StoreMismatchError, match="built for model 'a'"):
        memory.check_model(model_name="b", fingerprint="222", strategy="context")


def test_add_many_matches_adding_one_by_one(tmp_path):
    batch = [CEO_OLD, POPE, CEO_NEW, POPE, CEO_OLD]  # supersede inside the batch, a duplicate, then a stale re-send
    bulk = EditMemory(tmp_path / "bulk")
    single = EditMemory(tmp_path / "single")
    assert [r.status for r in bulk.add_many(batch)] == [single.add(f).status for f in batch]
    assert [r.status for r in bulk.add_many(batch)] == ["stale", "duplicate", "duplicate", "duplicate", "stale"]
    assert [(e.action, e.fact_id, e.seq) for e in bulk.ledger.entries()] == [(e.action, e.fact_id, e.seq) for e in single.ledger.entries()]
    assert {s.id: s.status for s in bulk.list(status=None)} == {s.id: s.status for s in single.list(status=None)}
    assert bulk.verify().ok and EditMemory(tmp_path / "bulk").verify().ok
    assert bulk.search("Who runs Intel?", k=1)[0][0].fact.target == "Lip-Bu Tan"
