"""Edit latency per fact: ``llm.edit(fact)`` one fact at a time on a fresh store (median, p95, peak memory).

    python bench/edit_latency.py --strategy context --n 200 --threads 2

Writes ``bench/results/edit_latency-<strategy>.json`` and ``.md``. Any registered strategy works.
"""

from __future__ import annotations

import argparse
import tempfile

from _common import Timer, bench_facts, machine_info, ms, peak_rss_mb, summary, write_results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="context")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from editmem import EditableLLM, load_model
    from editmem.strategies import get_strategy

    config = get_strategy(args.strategy)[0].parse_overrides(args.config)
    info = machine_info()
    facts = [r.fact for r in bench_facts(args.n)]
    with Timer() as load:
        loaded = load_model(args.model)
    latencies = []
    with tempfile.TemporaryDirectory(prefix="editmem-bench-") as tmp:
        llm = EditableLLM.open(f"{tmp}/store", model=loaded, strategy=args.strategy, **config)
        llm.edit(bench_facts(args.n + 1)[-1].fact)  # warm-up (embedder load, first Chroma write); not timed
        for fact in facts:
            with Timer() as t:
                llm.edit(fact, actor="bench")
            latencies.append(t.seconds)
        llm.close()
    stats = summary(latencies)
    data = {"benchmark": "edit_latency", "strategy": args.strategy, "config": config, "n": args.n,
            "model": args.model, "model_load_s": load.seconds, "latency_s": stats, "latencies_s": latencies,
            "peak_rss_mb": peak_rss_mb(), "machine": info}
    md = "\n".join([
        f"# Edit latency per fact: `{args.strategy}` ({args.n} single-fact edits on a fresh store)", "",
        "| strategy | n | median (ms) | p95 (ms) | mean (ms) | max (ms) | peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {args.strategy} | {args.n} | {ms(stats['median'])} | {ms(stats['p95'])} | {ms(stats['mean'])} | "
        f"{ms(stats['max'])} | {data['peak_rss_mb']:.0f} |",
    ])
    write_results(f"edit_latency-{args.strategy}", data, md)
    print(md)
    return data


if __name__ == "__main__":
    main()
