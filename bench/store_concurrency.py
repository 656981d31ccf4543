"""Two writers and readers on one local store, through the CLI and the SDK, as a user would run them.

    python bench/store_concurrency.py --n 200 --asks 10

1. two ``editmem import`` processes at once on a *new* store, covering the same N questions with different answers:
   exit codes, duplicate ledger sequence numbers, questions with other than one active fact, verify;
2. ``editmem ask`` run ``--asks`` times while imports run (a writer loop keeps importing superseding feeds until the
   asks are done): how many asks succeed and how many overlapped a running import;
3. a reader process (SDK) reading every question's active fact while a writer supersedes them all: reads that saw
   neither the old nor the new version.

Uses the ``context`` strategy and a tiny random-weight Llama (the embedded model's tokenizer), so the processes
measure the store, not the model. Writes ``bench/results/store_concurrency.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from _common import machine_info, write_results

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "store_workers.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EDITMEM_LOCK_TIMEOUT": "120"}


def tiny_checkpoint(folder: Path) -> Path:
    """A 2-layer random Llama saved with the embedded model's tokenizer (no download)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from editmem.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct"))
    config = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=256, vocab_size=len(tokenizer))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_feed(path: Path, n: int, tag: str) -> Path:
    sys.path.insert(0, str(HERE))
    from store_workers import fact

    path.write_text("".join(json.dumps(fact(i, f"{tag}-{i}")) + "\n" for i in range(n)))
    return path


def cli(store: Path, model: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "editmem.cli", "--store", str(store), "--model", str(model), "--strategy", "context", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def check_store(store: Path, n: int) -> dict:
    from editmem.memory import EditMemory

    memory = EditMemory(store)
    seqs = Counter(e.seq for e in memory.ledger.entries())
    per_question = Counter(s.fact.slot for s in memory.list())
    report = memory.verify()
    return {"ledger_entries": len(memory.ledger), "duplicate_seqs": sum(c - 1 for c in seqs.values() if c > 1),
            "active_facts": len(per_question), "questions_with_several_active": sum(1 for c in per_question.values() if c > 1),
            "questions_without_active": n - len(per_question), "verify_problems": report.problems}


def two_imports(tmp: Path, model: Path, n: int) -> dict:
    store = tmp / "two-imports"
    feeds = [write_feed(tmp / f"feed-{tag}.jsonl", n, tag) for tag in ("a", "b")]
    procs = [cli(store, model, "import", str(f)) for f in feeds]
    outs = [p.communicate() for p in procs]
    from editmem.memory import EditMemory

    writers = [e.detail["fact"]["target"].split("-")[0] for e in EditMemory(store).ledger.entries() if e.action == "add"]
    switches = sum(1 for x, y in zip(writers, writers[1:]) if x != y)  # > 1: the two imports interleaved
    return {"exit_codes": [p.returncode for p in procs], "writer_switches": switches, "outputs": [o[0].strip().splitlines()[-1:] for o in outs],
            "errors": [e.strip().splitlines()[-1:] for _, e in outs if e.strip()], **check_store(store, n)}


def asks_during_imports(tmp: Path, model: Path, n: int, asks: int) -> dict:
    store = tmp / "asks"
    seed = cli(store, model, "import", str(write_feed(tmp / "ask-v0.jsonl", n, "v0")))
    seed.communicate()
    done = threading.Event()
    running = threading.Event()
    imports = []

    def writer() -> None:
        version = 1
        while not done.is_set():
            proc = cli(store, model, "import", str(write_feed(tmp / f"ask-v{version}.jsonl", n, f"v{version}")))
            running.set()
            proc.communicate()
            running.clear()
            imports.append(proc.returncode)
            version += 1

    thread = threading.Thread(target=writer)
    thread.start()
    results = []
    time.sleep(2)
    for i in range(asks):
        overlapped = running.is_set()
        proc = cli(store, model, "ask", f"Who is the chief executive of Company {i}?", "--max-new-tokens", "2")
        out, err = proc.communicate()
        overlapped = overlapped and running.is_set()
        results.append({"exit": proc.returncode, "during_import": overlapped, "fired": "edits used" in out,
                        "error": (err.strip().splitlines() or [""])[-1][:200] if proc.returncode else ""})
    done.set()
    thread.join()
    return {"asks": len(results), "succeeded": sum(r["exit"] == 0 for r in results),
            "during_an_import": sum(r["during_import"] for r in results),
            "stated_a_fact": sum(r["fired"] for r in results), "import_exit_codes": imports,
            "failures": [r for r in results if r["exit"]], **check_store(store, n)}


def reader_during_supersedes(tmp: Path, n: int) -> dict:
    store = str(tmp / "reader")
    seed = subprocess.run([sys.executable, str(WORKERS), "seed", store, str(n)], env=ENV, capture_output=True, text=True)
    assert seed.returncode == 0, seed.stderr
    writer = subprocess.Popen([sys.executable, str(WORKERS), "write", store, str(n), "v2"], env=ENV, stdout=subprocess.PIPE, text=True)
    reader = subprocess.Popen([sys.executable, str(WORKERS), "read", store, str(n), "600"], env=ENV, stdout=subprocess.PIPE, text=True)
    writer_out, _ = writer.communicate()
    Path(f"{store}.stop").touch()  # the reader stops once the writer is done
    reader_out, _ = reader.communicate()
    seen = json.loads(reader_out.strip().splitlines()[-1])
    return {**seen, "writer": json.loads(writer_out.strip().splitlines()[-1])["statuses"], **check_store(Path(store), n)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--asks", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the two-imports case")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    with tempfile.TemporaryDirectory(prefix="editmem-conc-") as tmp_name:
        tmp = Path(tmp_name)
        model = tiny_checkpoint(tmp / "tiny-llama")
        runs = []
        for run in range(args.runs):
            sub = tmp / f"run{run}"
            sub.mkdir()
            runs.append(two_imports(sub, model, args.n))
            print(json.dumps(runs[-1]), flush=True)
        asks = asks_during_imports(tmp, model, args.n, args.asks)
        print(json.dumps(asks), flush=True)
        reader = reader_during_supersedes(tmp, 100)
        print(json.dumps(reader), flush=True)
    data = {"n": args.n, "two_imports": runs, "asks_during_imports": asks, "reader_during_supersedes": reader, "machine": machine_info()}
    lines = [f"# One store, several processes ({args.n} questions)", "", "## Two `editmem import` at once on a new store", "",
             "| run | exit codes | interleaving (writer switches in the ledger) | duplicate seq numbers | active facts | questions with >1 active | without | verify problems |",
             "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        lines.append(f"| {i} | {r['exit_codes']} | {r['writer_switches']} | {r['duplicate_seqs']} | {r['active_facts']} | {r['questions_with_several_active']} | "
                     f"{r['questions_without_active']} | {r['verify_problems']} |")
    lines += ["", "## `editmem ask` while imports run", "",
              f"{asks['succeeded']} of {asks['asks']} asks succeeded ({asks['during_an_import']} overlapped a running import; "
              f"{asks['stated_a_fact']} stated a stored fact); import exit codes {asks['import_exit_codes']}; "
              f"store afterwards: {asks['duplicate_seqs']} duplicate seq numbers, {asks['verify_problems']} verify problems.", "",
              "## A reader while a writer supersedes 100 facts", "",
              f"{reader['reads']} reads, **{reader['neither']} saw neither version**, {reader['errors']} errors; "
              f"{reader['searches']} searches, {reader['search_misses']} found another question's fact."]
    write_results("store_concurrency", data, "\n".join(lines))
    return data


if __name__ == "__main__":
    main()
