"""Throughput of a feed import: a JSONL feed of N facts imported into a fresh store with ``editmem.feeds``.

    python bench/feed_import.py --strategy context --n 1000 --threads 2

Times validation (``parse_feed``) and the import (``import_feed``: store + apply) separately; writes
``bench/results/feed_import-<strategy>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import Timer, bench_facts, machine_info, peak_rss_mb, write_results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="context")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=None, help="facts per edit call (strategy default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from editmem import EditableLLM, load_model
    from editmem.feeds import import_feed, parse_feed

    info = machine_info()
    loaded = load_model(args.model)
    with tempfile.TemporaryDirectory(prefix="editmem-bench-") as tmp:
        feed = Path(tmp) / "bench_feed.jsonl"
        with feed.open("w") as fh:
            for record in bench_facts(args.n):
                fact = record.fact.model_dump(mode="json", exclude={"provenance"})
                fh.write(json.dumps(fact) + "\n")
        with Timer() as parse:
            good, rejected = parse_feed(feed)
        llm = EditableLLM.open(Path(tmp) / "store", model=loaded, strategy=args.strategy)
        llm.memory.search("warm-up", k=1)  # loads the sentence embedder outside the timed region
        with Timer() as imp:
            result = import_feed(llm, feed, actor="bench", batch_size=args.batch_size)
        llm.close()
    data = {"benchmark": "feed_import", "strategy": args.strategy, "n": args.n, "batch_size": args.batch_size,
            "parse_s": parse.seconds, "import_s": imp.seconds, "facts_per_s": args.n / imp.seconds,
            "parse_facts_per_s": args.n / parse.seconds, "added": result.added, "rejected": len(rejected) + len(result.rejected),
            "peak_rss_mb": peak_rss_mb(), "machine": info}
    md = "\n".join([
        f"# Feed import throughput: `{args.strategy}`, {args.n} facts (JSONL)", "",
        "| strategy | facts | validate (s) | import (s) | facts/s | validate facts/s | peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {args.strategy} | {result.added} | {parse.seconds:.2f} | {imp.seconds:.1f} | {data['facts_per_s']:.1f} | "
        f"{data['parse_facts_per_s']:.0f} | {data['peak_rss_mb']:.0f} |",
    ])
    write_results(f"feed_import-{args.strategy}", data, md)
    print(md)
    return data


if __name__ == "__main__":
    main()
