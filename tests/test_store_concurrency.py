"""One writer at a time, any number of readers: the writer lock, unique sequence numbers, whole transactions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from editmem.memory import EditMemory, StoreLockedError

REPO = Path(__file__).resolve().parent.parent
WORKERS = REPO / "bench" / "store_workers.py"
POPE = {"subject": "the pope", "prompt": "Who is the pope?", "target": "Leo XIV"}


def _worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKERS), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _last_json(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_a_second_writer_gets_a_clear_locked_error_naming_the_pid(tmp_path):
    path = tmp_path / "store"
    EditMemory(path).add(POPE)
    holder = _worker("hold-lock", str(path), "30")
    try:
        pid = json.loads(holder.stdout.readline())["locked"]
        memory = EditMemory(path, lock_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(StoreLockedError, match=f"locked by pid {pid}"):
            memory.add({"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"})
        assert time.monotonic() - started < 10
        assert memory.count() == 1 and [s.fact.target for s in memory.list()] == ["Leo XIV"]  # reads need no lock
    finally:
        holder.kill()
        holder.wait()
    assert EditMemory(path).add({"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"}).status == "added"


def test_two_imports_and_a_reader_at_once_on_a_new_store(tmp_path):
    """Two writers cover the same 30 questions with different answers while a reader watches."""
    path = str(tmp_path / "store")
    reader = _worker("read", path, "30", "300", "--no-search")
    assert json.loads(reader.stdout.readline())["ready"]  # the reader is in its loop before the writers start
    writers = [_worker("write", path, "30", tag, "--synthetic") for tag in ("a", "b")]  # synthetic embeddings: fast start
    results = [_last_json(w) for w in writers]
    Path(f"{path}.stop").touch()
    seen = _last_json(reader)
    assert all(r["finished"] == 30 for r in results)
    memory = EditMemory(path)
    seqs = Counter(e.seq for e in memory.ledger.entries())
    assert max(seqs.values()) == 1 and sorted(seqs) == list(range(1, len(memory.ledger) + 1))
    active = memory.list()
    assert len(active) == 30 and len({s.fact.slot for s in active}) == 30  # exactly one active fact per question
    assert memory.verify().ok, memory.verify().lines()
    assert seen["errors"] == 0 and seen["neither"] == 0 and seen["reads"] > 0, seen
    writers_in_order = [e.detail["fact"]["target"][0] for e in memory.ledger.entries() if e.action == "add"]
    assert sum(x != y for x, y in zip(writers_in_order, writers_in_order[1:])) > 1  # the two imports did interleave
