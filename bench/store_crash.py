"""kill -9 during a superseding import: do the ledger and Chroma agree afterwards, and does re-importing finish it?

    python bench/store_crash.py --n 300 --kills 5

Seeds N facts, then runs a writer process (bench/store_workers.py) that supersedes all N and kills it with
SIGKILL at ``--kills`` points: alternately after a random number of completed supersedes, and *inside* the
window between a transaction's ledger write and its Chroma write (the writer pauses there on request). After
each kill it counts disagreements three ways: as left on disk (a read-only check, no recovery), after recovery
on open (what the next process sees), and after re-running the import to the end. Writes
``bench/results/store_crash.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine_info, write_results

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "store_workers.py"


def _run(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKERS), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _disagreements(report) -> int:
    return len(report.missing) + len(report.orphans) + len(report.mismatched) + len(report.slots_with_several_active)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    from editmem.memory import EditMemory

    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="editmem-crash-") as tmp:
        for kill in range(args.kills):
            store = str(Path(tmp) / f"store{kill}")
            seed = _run("seed", store, str(args.n))
            assert seed.wait() == 0, seed.stderr.read()
            inside = kill % 2 == 1
            point = rng.randint(1, args.n - 1)
            proc = _run("write", store, str(args.n), "v2", *(["--pause-at", str(point)] if inside else []))
            marker = "paused" if inside else "done"
            for line in proc.stdout:
                if json.loads(line).get(marker) == point:
                    break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            on_disk = EditMemory(store, readonly=True).verify()
            recovered = EditMemory(store)
            after_open = recovered.verify()
            slots = [s.fact.slot for s in recovered.list()]
            finish = _run("write", store, str(args.n), "v2")
            out, err = finish.communicate()
            assert finish.returncode == 0, err
            statuses = json.loads(out.strip().splitlines()[-1])["statuses"]
            final = EditMemory(store)
            final_report = final.verify()
            targets = sorted(s.fact.target for s in final.list())
            rows.append({
                "kill": kill + 1, "where": "between ledger and Chroma write" if inside else "after a completed supersede",
                "after_supersedes": point if not inside else point - 1,
                "disagreements_on_disk": _disagreements(on_disk), "pending_supersede_on_disk": len(on_disk.pending_supersedes),
                "disagreements_after_open": _disagreements(after_open) + after_open.problems - _disagreements(after_open),
                "active_facts_after_open": len(slots), "slots_with_two_active_after_open": len(slots) - len(set(slots)),
                "reimport_statuses": statuses, "disagreements_after_reimport": final_report.problems,
                "all_new_values_after_reimport": targets == sorted(f"v2-{i}" for i in range(args.n)),
            })
            print(json.dumps(rows[-1]), flush=True)
    data = {"n": args.n, "kills": rows, "total_disagreements_after_open": sum(r["disagreements_after_open"] for r in rows),
            "total_disagreements_after_reimport": sum(r["disagreements_after_reimport"] for r in rows), "machine": machine_info()}
    lines = [
        f"# kill -9 during a superseding import ({args.n} supersedes)", "",
        "| kill | where | supersedes done | disagreements on disk (no recovery) | after recovery on open | active facts | re-import | after re-import | all new values |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['kill']} | {r['where']} | {r['after_supersedes']} | {r['disagreements_on_disk']} | {r['disagreements_after_open']} | "
                     f"{r['active_facts_after_open']} | {r['reimport_statuses']} | {r['disagreements_after_reimport']} | {r['all_new_values_after_reimport']} |")
    lines += ["", f"Disagreements after recovery on open, all kills: **{data['total_disagreements_after_open']}**; "
              f"after re-import: **{data['total_disagreements_after_reimport']}**.", "",
              "'On disk' is what a kill leaves before any process recovers it (read-only check): a transaction cut inside the "
              "ledger-to-Chroma window leaves Chroma one transaction behind the ledger, which the next open redoes."]
    write_results("store_crash", data, "\n".join(lines))
    return data


if __name__ == "__main__":
    main()
