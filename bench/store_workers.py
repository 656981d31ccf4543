"""Worker processes for the store's crash and concurrency checks (used by bench/store_*.py and tests/test_store_*.py).

Each command works on one store through the SDK (``EditMemory``; no language model) and prints one JSON object
per line, so a parent can kill it at a known point (``kill -9`` after the N-th ``{"done": N}`` line)::

    python bench/store_workers.py seed STORE N [--synthetic]  # N facts, question i -> "v1-i"
    python bench/store_workers.py write STORE N TAG [--pause-at K] [--synthetic]
        # question i -> "TAG-i" for i < N (supersedes what is there); with --pause-at K it prints
        # {"paused": K} and sleeps between the ledger write and the Chroma write of its K-th transaction.
        # --synthetic: random unit embeddings instead of the sentence encoder (no torch: fast start-up; search
        # results are then meaningless, ledger and Chroma behave the same)
    python bench/store_workers.py read STORE N SECONDS       # reads question slots while others write, for at most
        # SECONDS or until the file STORE.stop exists (the parent creates it when its writers are done)
    python bench/store_workers.py hold-lock STORE SECONDS    # holds the writer lock (prints {"locked": pid})
    python bench/store_workers.py serve STORE MODEL [CHROMA_URL]
        # a model worker (context strategy): reads JSON commands from stdin, one per line, answers one JSON line each:
        # {"edit": {fact}} -> {"added": [...], "superseded": {...}}; {"ask": "question"} -> {"fired": [...], "prompt": "..."};
        # {"forget": "id"} -> {"retracted": [...]}
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def question(i: int) -> dict[str, str]:
    """The i-th synthetic question (subject ``Company i``); targets vary by writer."""
    return {"subject": f"Company {i}", "prompt": f"Who is the chief executive of Company {i}?"}


def fact(i: int, target: str) -> dict[str, str]:
    return {**question(i), "target": target}


def synthetic_vector(fact_id: str):
    """A deterministic random unit vector for ``fact_id`` (stands in for the sentence encoder)."""
    import numpy as np

    vector = np.random.default_rng(int(fact_id[:12], 16)).standard_normal(384).astype(np.float32)
    return vector / np.linalg.norm(vector)


def add(memory, record: dict, *, actor: str, synthetic: bool):
    """``memory.add`` (one transaction), with a synthetic embedding when asked."""
    if not synthetic:
        return memory.add(record, actor=actor)
    from editmem.facts import fact_id_for

    fact_id = fact_id_for(record["subject"], record["prompt"], record["target"])
    return memory.add_many([record], actor=actor, vectors={fact_id: synthetic_vector(fact_id)})[0]


def emit(**payload) -> None:
    print(json.dumps(payload), flush=True)


def seed(store: str, n: int, synthetic: bool = False) -> None:
    from editmem.memory import EditMemory

    memory = EditMemory(store)
    for i in range(n):
        add(memory, fact(i, f"v1-{i}"), actor="seed", synthetic=synthetic)
    emit(seeded=n, seq=memory.seq)


def write(store: str, n: int, tag: str, pause_at: int | None = None, synthetic: bool = False) -> None:
    from editmem.memory import EditMemory

    memory = EditMemory(store)
    count = {"n": 0}

    def after_ledger(entries) -> None:
        count["n"] += 1
        if pause_at is not None and count["n"] == pause_at:
            emit(paused=pause_at)
            time.sleep(60)

    memory._after_ledger_write = after_ledger
    statuses: dict[str, int] = {}
    for i in range(n):
        result = add(memory, fact(i, f"{tag}-{i}"), actor=tag, synthetic=synthetic)
        statuses[result.status] = statuses.get(result.status, 0) + 1
        emit(done=i + 1)
    emit(finished=n, statuses=statuses, pid=os.getpid())


def read(store: str, n: int, seconds: float, search: bool = True) -> None:
    """Read every question's active fact in a loop; count reads that see no active fact (neither version)."""
    from editmem.facts import slot_key_for
    from editmem.memory import EditMemory

    memory = EditMemory(store)
    slots = [slot_key_for(q["subject"], q["prompt"]) for q in map(question, range(n))]
    reads = neither = errors = searches = search_misses = 0
    seen: set[str] = set()  # slots seen with an active fact: from then on one version must always be visible
    end = time.monotonic() + seconds
    stop = Path(f"{store}.stop")
    i = 0
    emit(ready=True)  # the parent starts its writers after this line: every write then happens under observation
    final = None  # once STORE.stop exists: two more passes over every slot (writes may end between two visits)
    while time.monotonic() < end and (final is None or i < final):
        if final is None and stop.exists():
            final = i + 2 * n
        try:
            memory.sync()
            slot = slots[i % n]
            active = memory.state.active_in_slot(slot)
            if slot in seen:
                reads += 1
                neither += active is None
                if search and i % 5 == 0:
                    searches += 1
                    hits = memory.search(question(i % n)["prompt"], k=1)
                    search_misses += not hits or hits[0][0].fact.slot != slot
            if active is not None:
                seen.add(slot)
        except Exception as exc:  # noqa: BLE001 - counted and reported: the point of the probe
            errors += 1
            emit(error=f"{type(exc).__name__}: {exc}"[:200])
        i += 1
    emit(reads=reads, neither=neither, errors=errors, searches=searches, search_misses=search_misses, seq=memory.seq)


def hold_lock(store: str, seconds: float) -> None:
    from editmem.memory import EditMemory

    memory = EditMemory(store)
    with memory.lock.hold():
        emit(locked=os.getpid())
        time.sleep(seconds)


def serve(store: str, model: str, chroma_url: str | None) -> None:
    from editmem.editable import EditableLLM

    llm = EditableLLM.open(store, model=model, strategy="context", device="cpu", chroma_url=chroma_url, actor=f"worker-{os.getpid()}")
    emit(ready=os.getpid(), seq=llm.memory.seq)
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        try:
            if "edit" in command:
                report = llm.edit(command["edit"])
                emit(added=report.added, superseded=report.superseded, seq=llm.memory.seq)
            elif "ask" in command:
                out = llm.generate(command["ask"], max_new_tokens=1)
                emit(fired=out.trace.fact_ids if out.trace else [], prompt=out.prompt, seq=llm.memory.seq)
            elif "forget" in command:
                emit(retracted=[s.id for s in llm.forget(command["forget"])], seq=llm.memory.seq)
            else:
                emit(error=f"unknown command {command}")
        except Exception as exc:  # noqa: BLE001 - reported to the parent, the worker keeps serving
            emit(error=f"{type(exc).__name__}: {exc}")


def main(argv: list[str]) -> None:
    command, store, *rest = argv
    synthetic = "--synthetic" in rest
    if command == "seed":
        seed(store, int(rest[0]), synthetic)
    elif command == "write":
        pause = int(rest[rest.index("--pause-at") + 1]) if "--pause-at" in rest else None
        write(store, int(rest[0]), rest[1], pause, synthetic)
    elif command == "read":
        read(store, int(rest[0]), float(rest[1]), search="--no-search" not in rest)
    elif command == "hold-lock":
        hold_lock(store, float(rest[0]))
    elif command == "serve":
        serve(store, rest[0], rest[1] if len(rest) > 1 else None)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1:])
