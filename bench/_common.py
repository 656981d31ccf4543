"""Shared helpers of the speed benchmarks: fact sources, machine info, JSON + Markdown output.

Benchmarks are scripts (``python bench/<name>.py``), not tests: they time things and never assert on time.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: files the benchmark facts are drawn from, in this order (train splits first; speed only, nothing is scored)
FACT_FILES = ("zsre_train_4000.json", "counterfact_train_4000.json", "zsre_eval_1000.json", "counterfact_eval_2000.json")


def bench_facts(n: int) -> list:
    """The first ``n`` distinct facts (by slot) from :data:`FACT_FILES` as :class:`~editmem.eval.EvalRecord`.

    Facts sharing a subject+prompt slot are skipped, so every edit adds one active fact (no supersede noise).
    """
    from editmem.eval.datasets import data_dir, load_records

    out, slots = [], set()
    for name in FACT_FILES:
        path = data_dir() / name
        if not path.is_file():
            continue
        for record in load_records(path):
            if record.fact.slot in slots:
                continue
            slots.add(record.fact.slot)
            out.append(record)
            if len(out) == n:
                return out
    raise RuntimeError(f"only {len(out)} distinct facts available in {data_dir()}, {n} asked")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def summary(values: Sequence[float]) -> dict[str, float]:
    """median / p95 / mean / min / max of a list of seconds."""
    data = sorted(values)
    if not data:
        return {}
    p95 = data[min(len(data) - 1, max(0, round(0.95 * (len(data) - 1))))]
    return {"n": len(data), "median": statistics.median(data), "p95": p95, "mean": statistics.fmean(data),
            "min": data[0], "max": data[-1]}


def machine_info() -> dict[str, Any]:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "loadavg_start": os.getloadavg(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for dist in ("editmem", "torch", "transformers", "chromadb"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return info


def write_results(name: str, data: dict[str, Any], markdown: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` (the Markdown gets a machine footer)."""
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {**data, "machine": {**data.get("machine", {}), "loadavg_end": os.getloadavg()}}
    m = data["machine"]
    footer = (f"\n\nMachine: {m.get('cpu_count')} CPUs, {m.get('torch_threads')} torch threads, "
              f"CUDA {m.get('cuda')}, load average {tuple(round(x, 1) for x in m['loadavg_start'])} at start / "
              f"{tuple(round(x, 1) for x in m['loadavg_end'])} at end (other processes share the CPU when > threads); "
              f"torch {m.get('torch')}, transformers {m.get('transformers')}; {m.get('started_at')}.\n")
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=1, default=str))
    md_path.write_text(markdown.rstrip() + footer)
    return json_path, md_path


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self) -> "Timer":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{1000 * seconds:.1f}"
