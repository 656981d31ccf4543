"""Benchmarks of the ``llp`` strategy on the embedded model (CPU). Not a test: prints and writes JSON.

Subcommands::

    # retrieval simulation (keys only, values untrained; forward passes below z): how often the edit prompt, its
    # paraphrase and an unrelated prompt fire, at N = 100 and N = 1000 stored entries, for a preset
    python bench/bench_llp.py retrieval --preset default --n 1000 --out results/llp_retrieval_default.json
    # which retrieval layers and vote counts: keys for layers 0-13 (each layer's key is trained independently, so a
    # subset scores exactly as a strategy built on it), voting re-run on subsets, raw and chat-templated queries
    python bench/bench_llp.py retrieval --n 1000 --threads 2 --chat --subsets 0-7,2-9,4-11,6-13,0-13 \
        --votes 0.5,0.625,0.75 --config '{"retrieval_layers": [0,1,2,3,4,5,6,7,8,9,10,11,12,13], "injection_layer": 20}' \
        --out results/llp_retrieval_layers.json

    # greedy chat answers (target contained) after reopening an evaluation store
    python bench/bench_llp.py generation --store results/llp_zsre100_store --n 100 --out results/llp_generation.json

    # edit latency per fact (full training, memory pre-filled with N key-only entries) and the cost of a 32-token greedy
    # generation with N entries in memory vs the unedited model, in the same process
    python bench/bench_llp.py speed --threads 2 --entries 1000 --edits 5 --out results/llp_speed.json
    # the same with a real memory: a copy of the LLP artifacts of an evaluation store (edits from the train split)
    python bench/bench_llp.py speed --threads 2 --artifacts results/zsre1000_llp_artifacts --edits 10 --out results/llp_speed_real.json
    # a feed import: 10 facts per write call (their values train as one batch); latency per fact
    python bench/bench_llp.py speed --threads 2 --artifacts results/zsre1000_llp_artifacts --edits 20 --batch 10 --out results/llp_speed_batch10.json

Entries built by ``_synthetic_entries`` have real keys (prefix-averaged subject states refined by the configured
key objective against all earlier keys, exactly the write path's key stage) and *untrained* values (the
value initialisation): retrieval and inference cost do not depend on what a value contains.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "zsre_eval_1000.json"
TRAIN_DATA = DATA.with_name("zsre_train_4000.json")


def _strategy(config: dict[str, Any]):
    from editmem.memory.artifacts import ArtifactStore
    from editmem.models import load_model
    from editmem.strategies.llp import LLPConfig, LLPStrategy

    loaded = load_model()
    strategy = LLPStrategy(loaded.model, loaded.tokenizer, LLPConfig(**config), ArtifactStore(Path(tempfile.mkdtemp())))
    return loaded, strategy


def _synthetic_entries(strategy, records: list[dict[str, Any]], offset: int = 0, raw_keys: bool = False) -> float:
    """Add key-only entries (untrained values) for ``records``; returns seconds per key. ``raw_keys`` skips the key
    refinement (prefix-averaged subject states only): enough for timing, where only hit / no hit matters."""
    from editmem.facts import fact_id_for
    from editmem.strategies.llp import _Entry, _FactRec

    t0 = time.perf_counter()
    if raw_keys:
        return _raw_entries(strategy, records, offset, t0)
    for i, r in enumerate(records, start=offset):
        fact = _FactRec(fact_id_for(r["subject"], r["src"], r["alt"]), r["src"], r["alt"])
        seed = 1000 + i
        key, stats = strategy._refine_key(r["subject"], [fact], seed)
        value = strategy._value_init([fact])
        eid = f"e{i:05d}"
        strategy._entries[eid] = _Entry(eid, r["subject"], [fact], key, value, seed, stats)
        strategy._order.append(eid)
        strategy._invalidate()
    return (time.perf_counter() - t0) / max(1, len(records))


def _decide(trace, t_layer: float, t_vote: int, tie_break: str = "first", layers: set[int] | None = None) -> str | None:
    """Re-run the vote from a trace's per-layer top-k scores with other thresholds (t_layer >= the trace's), on
    ``layers`` only (a subset of the traced retrieval layers; all by default)."""
    votes: dict[str, int] = {}
    first: dict[str, int] = {}
    total: dict[str, float] = {}
    order = 0
    for layer in sorted(trace.details.get("layer_scores", {}), key=int):
        if layers is not None and int(layer) not in layers:
            continue
        for eid, score in trace.details["layer_scores"][layer]:
            if score > t_layer:
                votes[eid] = votes.get(eid, 0) + 1
                total[eid] = total.get(eid, 0.0) + score
                first.setdefault(eid, order)
            order += 1
    if not votes:
        return None
    best = max(votes.values())
    if best < t_vote:
        return None
    tied = [e for e, c in votes.items() if c == best]
    return max(tied, key=lambda e: total[e]) if tie_break == "score" else min(tied, key=lambda e: first[e])


SWEEP = [(0.8, 4), (0.85, 4), (0.85, 5), (0.85, 6), (0.875, 4), (0.875, 5), (0.9, 4)]


def _layer_range(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def _sweep_points(subsets: list[list[int]], votes: str | None) -> list[tuple[str, set[int], float, int]]:
    """(label, layers, t_layer, t_vote) to score: SWEEP for each subset, or ``--votes`` fractions of its size."""
    points = []
    for layers in subsets:
        tag = f"{layers[0]}-{layers[-1]}"
        pairs = SWEEP if votes is None else [(t, v) for t in (0.85, 0.875) for v in
                                             sorted({max(1, min(len(layers), round(float(f) * len(layers)))) for f in votes.split(",")})]
        points += [(f"{tag} {t}/{v}", set(layers), t, v) for t, v in pairs]
    return points


def _raw_entries(strategy, records: list[dict[str, Any]], offset: int, t0: float) -> float:
    """Batched set-up for timing: keys = subject state of ``prefix + " " + prompt`` (one prefix), values = zeros."""
    from editmem.facts import fact_id_for
    from editmem.strategies.llp import _Entry, _FactRec, _subject_index
    from editmem.tokens import pad_batch

    tok = strategy.tokenizer
    prefix = strategy._prefixes()[0]
    for lo in range(0, len(records), 64):
        chunk = records[lo : lo + 64]
        texts = [f"{prefix} {r['src']}" for r in chunk]
        index = [_subject_index(tok, t, r["subject"], len(prefix) + 1) for t, r in zip(texts, chunk)]
        ids, mask = pad_batch([tok(t)["input_ids"] for t in texts], tok.pad_token_id or 0, side="right")
        seen = strategy._bottom(ids, mask, strategy.cfg.retrieval_layers, stop_at_z=False)
        rows = torch.arange(len(chunk))
        for j, r in enumerate(chunk):
            i = offset + lo + j
            key = torch.stack([seen[layer][j, index[j]].float() for layer in strategy.cfg.retrieval_layers])
            fact = _FactRec(fact_id_for(r["subject"], r["src"], r["alt"]), r["src"], r["alt"])
            eid = f"e{i:05d}"
            strategy._entries[eid] = _Entry(eid, r["subject"], [fact], key, torch.zeros(strategy.cfg.b, key.shape[-1]), i, {})
            strategy._order.append(eid)
        del rows
    strategy._invalidate()
    return (time.perf_counter() - t0) / max(1, len(records))


def cmd_retrieval(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    config = {"preset": args.preset, **json.loads(args.config)}
    _, strategy = _strategy(config)
    records = json.loads(DATA.read_text())[: args.n]
    strategy._prefixes()
    strategy._generic()
    subsets = [_layer_range(s) for s in args.subsets.split(",")] if args.subsets else [list(strategy.cfg.retrieval_layers)]
    points = _sweep_points(subsets, args.votes)
    tok = strategy.tokenizer

    def chat(question: str) -> str:
        return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)

    out: dict[str, Any] = {"preset": args.preset, "config": config, "resolved": vars(strategy.cfg) if hasattr(strategy.cfg, "__dict__") else str(strategy.cfg), "points": []}
    built = 0
    for point in sorted({int(p) for p in args.points.split(",")} | {args.n}):
        point = min(point, len(records))
        out["key_seconds_per_entry"] = _synthetic_entries(strategy, records[built:point], offset=built)
        built = point
        sub = records[:point]
        ids = strategy._order[:point]
        rows = {
            "rel_prompt": [r["src"] for r in sub],
            "rel_leaky": [r["src"] + " " + r["alt"] for r in sub],
            "gen_prompt": [r["rephrase"] for r in sub],
            "gen_leaky": [r["rephrase"] + " " + r["alt"] for r in sub],
            "loc_false": [r["loc"] + " " + r["loc_ans"] for r in sub],
        }
        if args.chat:  # what a chat application sends: the question inside the template (retrieval sees the user turn)
            rows.update(rel_chat=[chat(r["src"]) for r in sub], gen_chat=[chat(r["rephrase"]) for r in sub],
                        loc_chat=[chat(r["loc"].replace("nq question: ", "") + "?") for r in sub])
        point_out: dict[str, Any] = {"N": point, "sweep": {}}
        for name, prompts in rows.items():
            traces = strategy.retrieve(prompts)
            for label, layers, t_layer, t_vote in points:
                if t_layer < strategy.cfg.t_layer or t_vote > len(layers):
                    continue
                decided = [_decide(t, t_layer, t_vote, strategy.cfg.tie_break, layers) for t in traces]
                value = (sum(d is not None for d in decided) if name.startswith("loc")
                         else sum(d == eid for d, eid in zip(decided, ids))) / len(traces)
                point_out["sweep"].setdefault(label, {})[name] = round(value, 4)
            if name.startswith("loc"):
                point_out[name] = sum(t.fired for t in traces) / len(traces)
                triggers: dict[str, int] = {}
                for t in traces:
                    if t.fired:
                        triggers[t.details["subject"]] = triggers.get(t.details["subject"], 0) + 1
                point_out[f"{name}_subjects"] = dict(sorted(triggers.items(), key=lambda kv: -kv[1])[:10])
            else:
                point_out[name] = sum(t.details.get("entry") == eid for t, eid in zip(traces, ids)) / len(traces)
        point_out["hub_entries"] = sum(bool(strategy._entries[i].stats.get("hub")) for i in ids)
        point_out["mean_key_shift"] = statistics.mean(strategy._entries[i].stats.get("key_shift", 0.0) for i in ids)
        out["points"].append(point_out)
        print(json.dumps(point_out), flush=True)
    return out


def _time_generation(model, tokenizer, prompts: list[str], tokens: int) -> list[float]:
    times = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        times.append(time.perf_counter() - t0)
    return times


def cmd_speed(args: argparse.Namespace) -> dict[str, Any]:
    from editmem.facts import Fact, StoredFact

    torch.set_num_threads(args.threads)
    overrides = json.loads(args.config)
    # a restored memory loads under the settings it was built with; --config then applies to the timed edits only
    loaded, strategy = _strategy({} if args.artifacts is not None else overrides)
    model, tok = loaded.model, loaded.tokenizer
    records = json.loads(DATA.read_text())
    t0 = time.perf_counter()
    strategy._prefixes()
    strategy._generic()
    one_time = time.perf_counter() - t0
    if args.artifacts is not None:
        # a real memory (e.g. the artifacts of a T=1000 evaluation run): trained keys and values; the timed edits
        # then come from the train split, whose subjects are not among the evaluation set's
        key_s = None
        _restore(strategy, args.artifacts)
        records = json.loads(TRAIN_DATA.read_text())
        if overrides:
            _reconfigure(strategy, overrides)
    else:
        key_s = _synthetic_entries(strategy, records[args.edits : args.edits + args.entries], raw_keys=args.raw_keys)
    strategy.attach()
    latencies, cpu, stats = [], [], []  # per fact: a write call's time divided by its facts (--batch)
    for start in range(0, args.edits, args.batch):
        facts = [Fact(subject=r["subject"], prompt=r["src"], target=r["alt"]) for r in records[start : min(args.edits, start + args.batch)]]
        t0, c0 = time.perf_counter(), time.process_time()
        strategy.apply([StoredFact(fact=fact, id=fact.id) for fact in facts])
        latencies += [(time.perf_counter() - t0) / len(facts)] * len(facts)
        cpu += [(time.process_time() - c0) / len(facts)] * len(facts)
        stats += strategy.last_edit_stats
        print(f"facts {start + 1}-{start + len(facts)}: {latencies[-1]:.2f} s per fact {stats[-1]}", flush=True)
    # generation: unrelated prompts (no hit) and edited prompts (hit), interleaved base / llp, repeated
    unrelated = [r["loc"].replace("nq question: ", "") + "?" for r in records[-args.prompts :]]
    edited = [r["src"] for r in records[: min(args.edits, args.prompts)]]
    timing: dict[str, list[float]] = {"base_unrelated": [], "llp_unrelated": [], "base_edited": [], "llp_edited": []}
    fired = {"unrelated": 0, "edited": 0}
    for _ in range(args.repeats):
        with strategy.disabled():
            timing["base_unrelated"] += _time_generation(model, tok, unrelated, args.tokens)
            timing["base_edited"] += _time_generation(model, tok, edited, args.tokens)
        timing["llp_unrelated"] += _time_generation(model, tok, unrelated, args.tokens)
        timing["llp_edited"] += _time_generation(model, tok, edited, args.tokens)
    for name, prompts in (("unrelated", unrelated), ("edited", edited)):
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]
        fired[name] = sum(t.fired for t in strategy.retrieve(texts))
    med = {k: statistics.median(v) for k, v in timing.items()}
    out = {
        "threads": args.threads,
        "entries_in_memory": len(strategy._order),
        "memory": str(args.artifacts) if args.artifacts is not None else ("raw keys" if args.raw_keys else "refined keys, untrained values"),
        "one_time_setup_s": one_time,
        "facts_per_write": args.batch,
        "key_only_entry_s": key_s,
        "edit_latency_s": latencies,
        "edit_latency_median_s": statistics.median(latencies),
        "edit_cpu_s": cpu,
        "edit_cpu_median_s": statistics.median(cpu),
        "load_average": __import__("os").getloadavg(),
        "edit_stats": stats,
        "generation_tokens": args.tokens,
        "generation_median_s": med,
        "overhead_unrelated": med["llp_unrelated"] / med["base_unrelated"],
        "overhead_edited": med["llp_edited"] / med["base_edited"],
        "fired": fired,
        "n_prompts": {"unrelated": len(unrelated), "edited": len(edited)},
    }
    print(json.dumps({k: v for k, v in out.items() if k != "edit_stats"}, indent=1))
    return out


def cmd_generation(args: argparse.Namespace) -> dict[str, Any]:
    """Reopen an evaluation store (restores keys/values without retraining) and score greedy chat answers."""
    from editmem.editable import EditableLLM
    from editmem.textnorm import contains_answer

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    llm = EditableLLM.open(args.store, strategy="llp")
    reopen_s = time.perf_counter() - t0
    records = json.loads(DATA.read_text())[args.start : args.start + args.n]
    rows = []
    for r in records:
        row = {"case_id": r["case_id"]}
        for name, prompt in (("rewrite", r["src"]), ("rephrase", r["rephrase"])):
            out = llm.generate(prompt, max_new_tokens=args.tokens)
            row[name] = out.text
            row[f"{name}_success"] = contains_answer(out.text, r["alt"])
            row[f"{name}_fired"] = bool(out.trace and out.trace.fired)
        if args.base:
            with llm.strategy.disabled():
                row["base_rewrite"] = llm.generate(r["src"], max_new_tokens=args.tokens).text
            row["base_rewrite_success"] = contains_answer(row["base_rewrite"], r["alt"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    mean = lambda key: sum(x[key] for x in rows) / len(rows)  # noqa: E731
    out = {"store": str(args.store), "reopen_s": reopen_s, "entries": len(llm.strategy._order), "n": len(rows),
           "gen_reliability": mean("rewrite_success"), "gen_generality": mean("rephrase_success"),
           "fired_rewrite": mean("rewrite_fired"), "fired_rephrase": mean("rephrase_fired"), "rows": rows}
    if args.base:
        out["base_gen_reliability"] = mean("base_rewrite_success")
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
    llm.close()
    return out


def _reconfigure(strategy, overrides: dict[str, Any]) -> None:
    """Write-path settings for the next edits of a restored memory (value/key training); the memory's layout
    (retrieval layers, injection layer, b) must stay as built."""
    from editmem.strategies.llp import LLPConfig

    config = LLPConfig(**{**dataclasses.asdict(strategy.config), **overrides})
    resolved = config.resolve(strategy.adapter.num_layers)
    if (resolved.retrieval_layers, resolved.injection_layer, resolved.b) != (strategy.cfg.retrieval_layers, strategy.cfg.injection_layer, strategy.cfg.b):
        raise SystemExit(f"--config {overrides} changes the restored memory's layout")
    strategy.config, strategy.cfg = config, resolved


def _restore(strategy, artifacts: Path) -> set[str]:
    """Load a copy of an LLP artifacts folder (keys, values, facts) into ``strategy``; the original is not touched."""
    import shutil

    from editmem.memory.artifacts import ArtifactStore

    copy = Path(tempfile.mkdtemp()) / "llp"
    shutil.copytree(artifacts, copy)
    strategy.artifacts = ArtifactStore(copy)
    restored = strategy.load()
    if restored is None:
        raise SystemExit(f"no compatible LLP state in {artifacts}")
    return restored


def cmd_snapshot(args: argparse.Namespace) -> dict[str, Any]:
    """Harness teacher-forced metrics (Rel./Gen./Loc., EVALUATION.md §3-4) of the records edited so far, on a copy
    of a running evaluation's LLP artifacts (the curve point at that moment), with the run's cached pre-edit
    measurements. Uses the harness's Scorer/measure_record/compare_to_pre/summarize."""
    import types

    from editmem.eval.datasets import load_records
    from editmem.eval.measure import compare_to_pre, measure_record, summarize
    from editmem.eval.scoring import Scorer

    torch.set_num_threads(args.threads)
    loaded, strategy = _strategy({})
    restored = _restore(strategy, args.artifacts)
    strategy.attach()
    records = load_records("zsre", args.n)
    ids = {r.fact.id: i for i, r in enumerate(records)}
    done = sorted(ids[f] for f in restored if f in ids)
    pre = json.loads(Path(args.pre).read_text())["pre"]
    llm = types.SimpleNamespace(model=loaded.model, tokenizer=loaded.tokenizer, strategy=strategy, loaded=loaded,
                                prepare_prompt=lambda prompt, chat=False: (prompt, None))
    scorer = Scorer(llm)
    post = [compare_to_pre(measure_record(scorer, records[i], generation=False), dict(pre[i])) for i in done]
    metrics = summarize(post, "zsre")
    out = {"n_entries": len(strategy._order), "n_records_scored": len(done), "metrics": metrics}
    print(json.dumps(out, indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("retrieval")
    p.add_argument("--preset", default="default", choices=["default", "paper"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--points", default="100")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--config", default="{}", help="JSON overrides of LLPConfig")
    p.add_argument("--subsets", help="layer ranges to score as retrieval sets, e.g. 0-7,6-13 (keys built for the "
                                     "config's retrieval_layers, which must cover them)")
    p.add_argument("--votes", help="t_vote as fractions of each subset's size, e.g. 0.5,0.625,0.75 (with t_layer "
                                   "0.85 and 0.875); default: the fixed SWEEP pairs")
    p.add_argument("--chat", action="store_true", help="also score chat-templated questions (user turn only)")
    p.add_argument("--out", type=Path)
    s = sub.add_parser("speed")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--entries", type=int, default=1000)
    s.add_argument("--edits", type=int, default=5)
    s.add_argument("--batch", type=int, default=1, help="facts per write call (latency is reported per fact)")
    s.add_argument("--prompts", type=int, default=5)
    s.add_argument("--repeats", type=int, default=2)
    s.add_argument("--tokens", type=int, default=32)
    s.add_argument("--raw-keys", action="store_true", help="fill the memory with unrefined keys (faster set-up)")
    s.add_argument("--artifacts", type=Path, help="use a copy of this LLP artifacts folder as the memory instead")
    s.add_argument("--config", default="{}", help="JSON overrides of LLPConfig (with --artifacts: for the timed edits)")
    s.add_argument("--out", type=Path)
    g = sub.add_parser("generation")
    g.add_argument("--store", type=Path, required=True)
    g.add_argument("--n", type=int, default=100)
    g.add_argument("--start", type=int, default=0)
    g.add_argument("--tokens", type=int, default=32)
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--base", action="store_true", help="also the unedited model's answer to the edit prompt")
    g.add_argument("--out", type=Path)
    n = sub.add_parser("snapshot")
    n.add_argument("--artifacts", type=Path, required=True)
    n.add_argument("--pre", type=Path, required=True)
    n.add_argument("--n", type=int, default=100)
    n.add_argument("--threads", type=int, default=1)
    n.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = {"snapshot": cmd_snapshot, "retrieval": cmd_retrieval, "speed": cmd_speed, "generation": cmd_generation}[args.cmd](args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
