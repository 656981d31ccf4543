"""Property-based tests (Hypothesis): the feed parser never raises and names line and field; a state machine over
add / supersede / retract / reopen / crash / torn write keeps "replaying the ledger gives the current state"."""

from __future__ import annotations

import json
import shutil
import string
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from editmem.facts import FactStatus, fact_id_for
from editmem.feeds import parse_feed
from editmem.memory import EditMemory
from editmem.memory.state import replay

FIELDS = ["subject", "prompt", "target", "rephrases", "tags", "valid_from", "valid_to", "namespace", "source",
          "confidence", "provenance", "relation", "colour"]
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
                   st.sampled_from(["2025-01-01", "2025-01-01T00:00:00+02:00", "2020-13-45", "", "   "]))
json_value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@st.composite
def record_line(draw) -> bytes:
    kind = draw(st.sampled_from(["good", "fields", "json", "bytes", "text"]))
    if kind == "good":
        subject = draw(st.text(string.ascii_letters, min_size=1, max_size=8))
        return json.dumps({"subject": subject, "prompt": f"Who is {subject}?", "target": draw(st.text(string.ascii_letters, min_size=1, max_size=8))}).encode()
    if kind == "fields":
        keys = draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True))
        return json.dumps({k: draw(json_value) for k in keys}, allow_nan=True).encode()
    if kind == "json":
        return json.dumps(draw(json_value), allow_nan=True).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=40)).replace(b"\n", b" ").replace(b"\r", b" ")
    return draw(st.text(max_size=40)).replace("\n", " ").replace("\r", " ").encode("utf-8", "surrogatepass")


def _check(path: Path, lines: list[bytes]) -> None:
    good, rejected = parse_feed(path)  # must never raise
    n = max(1, len(lines))
    for bad in rejected:
        assert 1 <= bad.line <= n and bad.field and bad.message
    for number, fact in good:
        assert 1 <= number <= n and fact.subject in fact.prompt
    assert not {n for n, _ in good} & {b.line for b in rejected}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(record_line(), max_size=8), prefix=st.sampled_from([b"", b"\xef\xbb\xbf"]))
def test_jsonl_parser_never_raises_and_names_line_and_field(lines, prefix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "feed.jsonl"
        path.write_bytes(prefix + b"\n".join(lines) + b"\n")
        _check(path, lines)
        good, _ = parse_feed(path)
        goods = [i + 1 for i, line in enumerate(lines) if line.startswith(b'{"subject"') and b'"prompt": "Who is' in line]
        assert {n for n, _ in good} >= set(goods)  # every well-formed record survives its neighbours


csv_cell = st.one_of(st.text(max_size=12), st.sampled_from(['"', '""', ",", "a|b", "2025-01-01", "\xff"]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.lists(st.sampled_from(FIELDS), min_size=0, max_size=5),
       rows=st.lists(st.lists(csv_cell, max_size=6), max_size=6), raw=st.lists(st.binary(max_size=20), max_size=2),
       prefix=st.sampled_from([b"", b"\xef\xbb\xbf"]))
def test_csv_parser_never_raises(header, rows, raw, prefix):
    text = "\n".join([",".join(header)] + [",".join(r) for r in rows]).encode("utf-8", "surrogatepass")
    lines = [text, *raw]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "feed.csv"
        path.write_bytes(prefix + b"\n".join(lines))
        _check(path, path.read_bytes().splitlines() or [b""])


class Crash(Exception):
    pass


SLOTS = [("Intel", "Who is the CEO of Intel?"), ("Nike", "Who is the CEO of Nike?"), ("the pope", "Who is the pope?")]
TARGETS = ["A", "B", "C"]


class LedgerMachine(RuleBasedStateMachine):
    """A model of the store (status per fact id) against EditMemory, across reopens and crashes."""

    @initialize()
    def open_store(self):
        self.tmp = tempfile.mkdtemp(prefix="editmem-sm-")
        self.path = Path(self.tmp) / "store"
        self.memory = EditMemory(self.path)
        self.status: dict[str, str] = {}
        self.active: dict[int, str | None] = {}

    def _model_add(self, slot: int, target: str) -> str:
        fact_id = fact_id_for(*SLOTS[slot], target)
        state = self.status.get(fact_id)
        if state in ("active", "superseded"):
            return "duplicate" if state == "active" else "stale"
        previous = self.active.get(slot)
        if previous is not None:
            self.status[previous] = "superseded"
        self.status[fact_id] = "active"
        self.active[slot] = fact_id
        return "superseded" if previous else "added"

    @rule(slot=st.integers(0, 2), answer=st.sampled_from(TARGETS))
    def add(self, slot, answer):
        subject, prompt = SLOTS[slot]
        expected = self._model_add(slot, answer)
        assert self.memory.add({"subject": subject, "prompt": prompt, "target": answer}).status == expected

    @rule(slot=st.integers(0, 2), answer=st.sampled_from(TARGETS))
    def crash_during_add(self, slot, answer):
        """The process dies after the ledger write: the transaction is committed, Chroma is behind."""
        subject, prompt = SLOTS[slot]
        fact_id = fact_id_for(subject, prompt, answer)
        if self.status.get(fact_id) in ("active", "superseded"):
            return
        self._model_add(slot, answer)

        def die(entries):
            raise Crash

        self.memory._after_ledger_write = die
        try:
            self.memory.add({"subject": subject, "prompt": prompt, "target": answer})
        except Crash:
            pass
        self.reopen()

    @rule(slot=st.integers(0, 2), answer=st.sampled_from(TARGETS))
    def retract(self, slot, answer):
        fact_id = fact_id_for(*SLOTS[slot], answer)
        if fact_id not in self.status:
            return
        self.memory.retract(fact_id)
        if self.status[fact_id] == "active":
            self.active[slot] = None
        self.status[fact_id] = "retracted"

    @rule()
    def torn_write(self):
        with (self.path / "ledger.jsonl").open("ab") as fh:
            fh.write(b'{"seq": 1000, "action": "add", "fact_id": "abc')
        self.reopen()

    @rule()
    def reopen(self):
        self.memory = EditMemory(self.path)
        assert self.memory.verify().ok, self.memory.verify().lines()

    @invariant()
    def ledger_replay_equals_state(self):
        if not hasattr(self, "memory"):
            return
        memory = self.memory
        replayed = replay(memory.ledger.entries())
        assert {i: s.status.value for i, s in replayed.records.items()} == {i: s.status.value for i, s in memory.state.records.items()}
        assert {i: s.status.value for i, s in memory.state.records.items()} == self.status
        seqs = [e.seq for e in memory.ledger.entries()]
        assert len(seqs) == len(set(seqs))
        active_slots = [s.fact.slot for s in memory.list()]
        assert len(active_slots) == len(set(active_slots)) == sum(1 for v in self.active.values() if v)

    def teardown(self):
        shutil.rmtree(getattr(self, "tmp", ""), ignore_errors=True)


LedgerMachine.TestCase.settings = settings(max_examples=12, stateful_step_count=10, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
test_ledger_state_machine = LedgerMachine.TestCase


def test_replayed_records_are_identical_after_reopen(tmp_path):
    """Replaying twice gives the same records to the byte (timestamps come from the ledger)."""
    memory = EditMemory(tmp_path / "s")
    memory.add({"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "A", "valid_from": "2099-01-01"})
    memory.add({"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "B"})
    memory.retract(memory.list()[0].id)
    again = EditMemory(tmp_path / "s")
    assert [s.model_dump_json() for s in again.list(status=None)] == [s.model_dump_json() for s in memory.list(status=None)]
    old = next(s for s in again.list(status=None) if s.fact.target == "A")
    assert old.status is FactStatus.superseded and old.fact.valid_to >= old.fact.valid_from  # never an invalid record
