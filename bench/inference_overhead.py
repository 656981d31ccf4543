"""Inference overhead of stored edits: 32-token greedy generation with 0, 100, 1,000 and 10,000 edits in memory.

    python bench/inference_overhead.py --strategy context --sizes 0,100,1000,10000 --threads 2

One store grows through the sizes (facts added with ``llm.edit`` in chunks, timed: that is also the import
throughput at each size). At every size the same prompts are generated with the edits active and with the strategy
disabled (the unedited model, same process, interleaved prompt by prompt so CPU contention hits both alike);
exactly 32 new tokens each (``min_new_tokens=32``). Half the prompts are paraphrases of edited facts (retrieval
hits once those facts are stored), half are unrelated questions. Writes ``bench/results/inference_overhead-<strategy>``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from _common import Timer, bench_facts, current_rss_mb, machine_info, ms, peak_rss_mb, summary, write_results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="context")
    parser.add_argument("--sizes", default="0,100,1000,10000")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per size (half hits, half unrelated)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=500, help="facts per llm.edit call while growing the store")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))

    import torch

    torch.set_num_threads(args.threads)
    from editmem import EditableLLM, load_model

    info = machine_info()
    records = bench_facts(max(sizes + [1]))
    hits = [r.rephrase or r.fact.prompt for r in records[: args.prompts // 2]]
    misses = [r.loc_prompt for r in records[-(args.prompts - len(hits)) :] if r.loc_prompt]
    prompts = [p for pair in zip(hits, misses) for p in pair]
    loaded = load_model(args.model)
    rows, stored = [], 0
    with tempfile.TemporaryDirectory(prefix="editmem-bench-") as tmp:
        llm = EditableLLM.open(f"{tmp}/store", model=loaded, strategy=args.strategy)
        llm.generate("warm-up", max_new_tokens=2)
        for size in sizes:
            with Timer() as grow:
                for lo in range(stored, size, args.chunk):
                    llm.edit([r.fact for r in records[lo : min(size, lo + args.chunk)]], actor="bench")
            added, stored = size - stored, size
            edited, base, fired = [], [], 0
            for _ in range(args.repeats):
                for prompt in prompts:
                    with Timer() as t:
                        out = llm.generate(prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
                    edited.append(t.seconds)
                    fired += int(bool(out.trace and out.trace.fired))
                    with llm.strategy.disabled(), Timer() as t:
                        llm.generate(prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
                    base.append(t.seconds)
            ratios = [e / b for e, b in zip(edited, base)]
            row = {"edits": size, "edited_s": summary(edited), "base_s": summary(base),
                   "ratio_median": statistics.median(ratios), "prompts_with_facts_stated": fired / len(edited),
                   "grow_s": grow.seconds, "grow_facts_per_s": added / grow.seconds if added else None,
                   "rss_mb": current_rss_mb(), "peak_rss_mb": peak_rss_mb()}
            rows.append(row)
            _write(args, prompts, rows, info)  # after every size, so a long run leaves its partial table
            print(f"{size:>6} edits: edited {ms(row['edited_s']['median'])} ms, base {ms(row['base_s']['median'])} ms, "
                  f"x{row['ratio_median']:.2f}, grow {grow.seconds:.0f}s", flush=True)
        llm.close()
    return _write(args, prompts, rows, info, final=True)


def _write(args, prompts: list[str], rows: list[dict], info: dict, final: bool = False) -> dict:
    data = {"benchmark": "inference_overhead", "strategy": args.strategy, "tokens": args.tokens,
            "prompts": prompts, "repeats": args.repeats, "rows": rows, "complete": final, "machine": info}
    lines = [
        f"# Inference overhead of `{args.strategy}`: {args.tokens}-token greedy generation vs the unedited model", "",
        f"{len(prompts)} prompts x {args.repeats} per size (half paraphrases of edited facts, half unrelated); "
        "median wall time per generation; ratio = median over prompts of edited / unedited, measured in the same run.", "",
        "| edits in memory | edited median (ms) | edited p95 (ms) | unedited median (ms) | ratio | prompts with facts stated | add facts/s | RSS (MiB) | peak RSS (MiB) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        rate = "—" if r["grow_facts_per_s"] is None else f"{r['grow_facts_per_s']:.1f}"
        lines.append(f"| {r['edits']:,} | {ms(r['edited_s']['median'])} | {ms(r['edited_s']['p95'])} | "
                     f"{ms(r['base_s']['median'])} | {r['ratio_median']:.2f} | {r['prompts_with_facts_stated']:.2f} | "
                     f"{rate} | {r['rss_mb']:.0f} | {r['peak_rss_mb']:.0f} |")
    md = "\n".join(lines)
    write_results(f"inference_overhead-{args.strategy}", data, md)
    if final:
        print(md)
    return data


if __name__ == "__main__":
    main()
