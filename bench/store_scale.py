"""Inference overhead and memory of retrieval at 10,000 and 100,000 stored facts (the ``context`` strategy's path).

    python bench/store_scale.py --sizes 10000,100000 --full 10000 --prompts 4 --tokens 16

Two parts, both with synthesised entries (facts "Who is the chief executive of Company i?"; their embeddings are
random unit vectors, so they are spread like real ones but cost nothing to make; the probe facts that the prompts
ask about are embedded for real):

* **retrieval alone** at every size: the exact in-process search (one matrix-vector product over the active
  facts' embeddings, :mod:`editmem.memory.vectors`) plus the query embedding, median over 200 queries; the search
  matrix's bytes and the process's resident memory;
* **end to end** at ``--full`` sizes: a real store (ledger + Chroma, written with ``EditMemory.add_many``), opened
  as an ``EditableLLM`` with the embedded SmolLM2-135M-Instruct and the ``context`` strategy; each prompt is
  generated with the edits and without (``strategy.disabled()``), interleaved so CPU contention hits both alike.
  ratio = median over prompts of edited / unedited wall time. Half the prompts ask about a stored fact (the fact
  is stated, so the prompt is longer), half are unrelated.

Writes ``bench/results/store_scale.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import Timer, current_rss_mb, machine_info, ms, peak_rss_mb, write_results

HERE = Path(__file__).resolve().parent
PROBES = [
    ({"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"}, "Who runs Intel as chief executive?"),
    ({"subject": "the pope", "prompt": "Who is the pope?", "target": "Leo XIV"}, "Who is the current pope?"),
]
MISSES = ["What is the boiling point of water at sea level?", "Name a primary colour."]


def synthetic(n: int, seed: int = 0) -> tuple[list[dict], dict[str, np.ndarray]]:
    from editmem.facts import fact_id_for

    rng = np.random.default_rng(seed)
    facts, vectors = [], {}
    for i in range(n):
        subject = f"Company {i}"
        fact = {"subject": subject, "prompt": f"Who is the chief executive of {subject}?", "target": f"Person {i}"}
        vector = rng.standard_normal(384).astype(np.float32)
        vectors[fact_id_for(fact["subject"], fact["prompt"], fact["target"])] = vector / np.linalg.norm(vector)
        facts.append(fact)
    return facts, vectors


def retrieval_alone(size: int, queries: int = 200) -> dict:
    from editmem.memory.embedding import embed_texts
    from editmem.memory.vectors import VectorIndex

    _, vectors = synthetic(size)
    index = VectorIndex()
    for fact_id, vector in vectors.items():
        index.put(fact_id, vector, namespace="default", valid_from=None, valid_to=None)
    index.search(vectors[next(iter(vectors))], 1)  # builds the matrix
    texts = [f"Who is the chief executive of Company {i}?" for i in range(queries)]
    embed_texts(texts[:2])
    search, total = [], []
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    for text in texts:
        t0 = time.perf_counter()
        query = embed_texts([text])[0]
        t1 = time.perf_counter()
        index.search(query, 1, namespace="default", as_of=now)
        t2 = time.perf_counter()
        search.append(t2 - t1)
        total.append(t2 - t0)
    return {"size": size, "search_median_ms": statistics.median(search) * 1e3, "search_p95_ms": sorted(search)[int(0.95 * len(search))] * 1e3,
            "embed_and_search_median_ms": statistics.median(total) * 1e3, "matrix_mib": index.nbytes() / 2**20,
            "rss_mib": current_rss_mb()}


def end_to_end(size: int, loaded, prompts: list[str], tokens: int, tmp: Path) -> dict:
    from editmem import EditableLLM
    from editmem.memory import EditMemory

    store = tmp / f"store-{size}"
    facts, vectors = synthetic(size)
    with Timer() as write:
        memory = EditMemory(store)
        for lo in range(0, len(facts), 20_000):
            memory.add_many(facts[lo : lo + 20_000], actor="bench", vectors=vectors)
        memory.add_many([p for p, _ in PROBES], actor="bench")
    del memory
    with Timer() as opening:
        llm = EditableLLM.open(store, model=loaded, strategy="context")
    llm.generate("warm-up", max_new_tokens=2)
    edited, base, ratios, fired = [], [], [], 0
    for prompt in prompts:
        with Timer() as t:
            out = llm.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens)
        fired += int(bool(out.trace and out.trace.fired))
        with llm.strategy.disabled(), Timer() as u:
            llm.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens)
        edited.append(t.seconds)
        base.append(u.seconds)
        ratios.append(t.seconds / u.seconds)
    active = llm.memory.count()
    llm.close()
    return {"size": size, "active": active, "write_s": write.seconds, "open_s": opening.seconds,
            "edited_median_ms": statistics.median(edited) * 1e3, "unedited_median_ms": statistics.median(base) * 1e3,
            "ratio": statistics.median(ratios), "prompts_with_fact_stated": fired, "prompts": len(prompts),
            "rss_mib": current_rss_mb(), "peak_rss_mib": peak_rss_mb()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="retrieval-alone sizes")
    parser.add_argument("--full", default="0,10000", help="end-to-end sizes (real store + model)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    import torch

    torch.set_num_threads(args.threads)
    info = machine_info()
    alone = [retrieval_alone(int(s)) for s in args.sizes.split(",") if s]
    for row in alone:
        print(row, flush=True)
    full = []
    if args.full:
        from editmem import load_model

        loaded = load_model(args.model, device="cpu")
        hits = [q for _, q in PROBES][: args.prompts // 2]
        prompts = [p for pair in zip(hits, MISSES) for p in pair][: args.prompts]
        with tempfile.TemporaryDirectory(prefix="editmem-scale-") as tmp:
            for size in (int(s) for s in args.full.split(",")):
                full.append(end_to_end(size, loaded, prompts, args.tokens, Path(tmp)))
                print(full[-1], flush=True)
    data = {"retrieval_alone": alone, "end_to_end": full, "tokens": args.tokens, "machine": info}
    lines = ["# Retrieval at scale: exact in-process search (context strategy)", "",
             "## Retrieval alone (synthesised facts, random unit embeddings)", "",
             "| facts | search median (ms) | search p95 (ms) | query embedding + search median (ms) | search matrix (MiB) | RSS (MiB) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in alone:
        lines.append(f"| {r['size']:,} | {r['search_median_ms']:.2f} | {r['search_p95_ms']:.2f} | {r['embed_and_search_median_ms']:.1f} | "
                     f"{r['matrix_mib']:.1f} | {r['rss_mib']:.0f} |")
    if full:
        lines += ["", f"## End to end: {args.tokens}-token greedy generation, embedded SmolLM2-135M-Instruct", "",
                  "| facts in store | edited median (ms) | unedited median (ms) | ratio | prompts with a fact stated | store write (s) | open (s) | RSS (MiB) |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in full:
            lines.append(f"| {r['size']:,} (+2 probes) | {ms(r['edited_median_ms'] / 1e3)} | {ms(r['unedited_median_ms'] / 1e3)} | {r['ratio']:.2f} | "
                         f"{r['prompts_with_fact_stated']}/{r['prompts']} | {r['write_s']:.1f} | {r['open_s']:.1f} | {r['rss_mib']:.0f} |")
    lines += ["", "Ratio: median over prompts of edited / unedited wall time, interleaved. A prompt about a stored fact gets the fact "
              "stated in its user turn, which lengthens it; the store size itself adds the search time above."]
    write_results("store_scale", data, "\n".join(lines))
    return data


if __name__ == "__main__":
    main()
