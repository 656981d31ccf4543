"""Crash safety: the ledger and Chroma agree after a crash at any point of a write, and recovery on open repairs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from editmem.facts import FactStatus
from editmem.memory import EditMemory, LedgerCorruptError, StoreUnusableError

REPO = Path(__file__).resolve().parent.parent
WORKERS = REPO / "bench" / "store_workers.py"
sys.path.insert(0, str(REPO / "bench"))
from store_workers import fact  # noqa: E402  (the facts the worker processes write)

OLD = {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Pat Gelsinger"}
NEW = {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"}
POPE = {"subject": "the pope", "prompt": "Who is the pope?", "target": "Leo XIV"}


class Crash(Exception):
    """Stands in for the process dying between the ledger write and the Chroma write."""


def crash_after_ledger(entries):
    raise Crash


def one_active_per_slot(memory: EditMemory) -> bool:
    slots = [s.fact.slot for s in memory.list()]
    return len(slots) == len(set(slots))


def test_crash_between_ledger_and_chroma_is_redone_on_open(tmp_path):
    path = tmp_path / "store"
    memory = EditMemory(path)
    old = memory.add(OLD).stored
    memory._after_ledger_write = crash_after_ledger
    with pytest.raises(Crash):
        memory.add(NEW)
    # the ledger has the supersede, Chroma does not: that is what verify sees without recovery
    before = EditMemory(path, readonly=True).verify()
    assert not before.ok and before.missing and before.mismatched == [old.id]
    reopened = EditMemory(path)  # recovery on open
    report = reopened.verify()
    assert report.ok, report.lines()
    assert [s.fact.target for s in reopened.list()] == ["Lip-Bu Tan"]
    assert reopened.get(old.id).status is FactStatus.superseded
    assert reopened.add(NEW).status == "duplicate"


def test_torn_ledger_tail_is_cut_and_the_next_write_continues(tmp_path):
    path = tmp_path / "store"
    memory = EditMemory(path)
    memory.add(POPE)
    with (path / "ledger.jsonl").open("ab") as fh:
        fh.write(b'{"seq": 2, "action": "add", "fact_')  # a write killed midway
    reader = EditMemory(path, readonly=True)
    assert reader.count() == 1 and reader.verify().torn_tail_bytes > 0  # readers skip the torn line
    writer = EditMemory(path)
    assert writer.verify().ok
    writer.add(OLD)
    assert [e.seq for e in writer.ledger.entries()] == [1, 2]


def test_supersede_cut_after_its_add_line_is_completed(tmp_path):
    path = tmp_path / "store"
    memory = EditMemory(path)
    old = memory.add(OLD).stored
    memory.add(NEW)
    ledger = path / "ledger.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[-1])["action"] == "supersede"
    ledger.write_bytes(b"".join(lines[:-1]))  # as if killed between the two lines of the transaction
    reader = EditMemory(path, readonly=True)
    assert [s.fact.target for s in reader.list()] == ["Lip-Bu Tan"]  # the add line alone supersedes
    assert reader.verify().pending_supersedes == [old.id]
    recovered = EditMemory(path)
    assert recovered.verify().ok
    assert [e.action for e in recovered.history("Intel")] == ["add", "add", "supersede"]
    assert recovered.history("Intel")[-1].actor == "recovery"


def test_repair_removes_orphan_rows_and_fixes_mismatches(tmp_path):
    path = tmp_path / "store"
    memory = EditMemory(path)
    pope = memory.add(POPE).stored
    collection = memory.collection()
    collection.upsert(ids=["f" * 24], documents=["x"], embeddings=[[0.0] * 383 + [1.0]], metadatas=[{"status": "active", "slot": "s"}])
    memory.retract(pope.id)
    collection.update(ids=[pope.id], metadatas=[{**memory.chroma_rows([pope.id])[pope.id], "record": "{}"}])
    report = memory.verify()
    assert report.orphans == ["f" * 24] and report.mismatched == [pope.id]
    assert memory.repair().ok
    assert set(memory.chroma_rows()) == {pope.id}


def test_foreign_ledger_and_damaged_store_json_are_named(tmp_path):
    path = tmp_path / "store"
    path.mkdir()
    (path / "ledger.jsonl").write_text('{"event": "login", "user": "bob"}\n')
    with pytest.raises(LedgerCorruptError, match=r"ledger.jsonl line 1 is not an editmem ledger entry"):
        EditMemory(path)
    other = tmp_path / "other"
    EditMemory(other).add(POPE)
    (other / "store.json").write_text("{not json")
    with pytest.raises(StoreUnusableError, match="store.json is damaged"):
        EditMemory(other)


def test_a_folder_of_unrelated_files_is_not_taken_over(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(StoreUnusableError, match="is not an editmem store"):
        EditMemory(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["cat.jpg"]


def _worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKERS), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _kill_after(proc: subprocess.Popen, marker: str, value: int) -> None:
    for line in proc.stdout:
        if json.loads(line).get(marker) == value:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_kill_9_during_a_superseding_import_leaves_a_recoverable_store(tmp_path):
    """kill -9 at two points (one inside the ledger->Chroma window) of 40 supersedes, then finish the import."""
    path = str(tmp_path / "store")
    seeded = EditMemory(path)
    for i in range(40):
        seeded.add(fact(i, f"v1-{i}"))
    for marker, value in (("paused", 7), ("done", 23)):
        proc = _worker("write", path, "40", "v2", "--synthetic", *(["--pause-at", str(value)] if marker == "paused" else []))
        _kill_after(proc, marker, value)
        memory = EditMemory(path)  # recovery on open
        assert memory.verify().ok, memory.verify().lines()
        assert one_active_per_slot(memory) and memory.count() == 40
    memory = EditMemory(path)
    statuses = [memory.add(fact(i, f"v2-{i}")).status for i in range(40)]  # re-running the import completes it
    assert statuses.count("duplicate") >= 23 and set(statuses) <= {"duplicate", "superseded"}
    assert memory.verify().ok
    assert sorted(s.fact.target for s in memory.list()) == sorted(f"v2-{i}" for i in range(40))
    assert len({e.seq for e in memory.ledger.entries()}) == len(memory.ledger)
