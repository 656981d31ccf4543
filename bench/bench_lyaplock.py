"""Benchmark of the ``lyaplock`` strategy and its variants on the embedded model (CPU).

Subcommands::

    python bench/bench_lyaplock.py cf-curve --variant lyaplock --n 1000 --batch 100 --out results/lyaplock/cf_lyaplock
    python bench/bench_lyaplock.py speed --threads 2 --fresh-stats --out results/lyaplock/speed.json
    python bench/bench_lyaplock.py plot results/lyaplock/cf_lyaplock results/lyaplock/cf_memit_seq ... --out results/lyaplock/cf_curve.png
    python bench/bench_lyaplock.py table results/lyaplock/cf_lyaplock results/lyaplock/cf_memit_seq ...
    python bench/bench_lyaplock.py drift results/lyaplock/cf_memit_seq   (a run saved with --save)

``cf-curve`` writes CounterFact edits in batches straight through the strategy (the same ``apply`` the SDK and the
evaluation harness call) and, after every batch, records the strategy's telemetry (preservation loss per layer
against LyapLock's threshold, queue weight, update norms), the MEMIT-family probability metrics (EVALUATION.md
§6.1) of the first batch's records (the forgetting probe) and of the batch just written, and the perplexity of
held-out corpus text (lines the statistics never saw). At the end all records are scored on the final model.
Everything is written to ``<out>/curve.json`` and ``<out>/curve.md`` (the same curve as a Markdown table) after each
batch, so an interrupted run still leaves its curve. ``table`` re-renders the Markdown of existing runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _load(threads: int):
    torch.set_num_threads(threads)
    from editmem.models import load_model

    return load_model()


def _strategy(loaded, variant: str, out: Path, overrides: dict):
    from editmem.memory.artifacts import ArtifactStore
    from editmem.strategies.lyaplock import LyapLockConfig, LyapLockStrategy

    cfg = LyapLockConfig(variant=variant, **overrides)
    return LyapLockStrategy(loaded.model, loaded.tokenizer, cfg, ArtifactStore(out / "artifacts"), None)


def _stored(subject: str, prompt: str, target: str):
    from editmem.facts import Fact, StoredFact, fact_id_for

    return StoredFact(fact=Fact(subject=subject, prompt=prompt, target=target), id=fact_id_for(subject, prompt, target))


@torch.no_grad()
def answer_nll(model, tokenizer, pairs: list[tuple[str, str]], batch: int = 32) -> list[float]:
    """Length-normalised NLL of ``" " + answer`` after ``prompt`` (EVALUATION.md §6.1), joint tokenisation."""
    from editmem.tokens import encode_prompt_target, pad_batch

    encs = [encode_prompt_target(tokenizer, p, a) for p, a in pairs]
    out: list[float] = []
    for i in range(0, len(encs), batch):
        part = encs[i : i + batch]
        ids, mask = pad_batch([e.input_ids for e in part], tokenizer.pad_token_id, side="right")
        lp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for r, e in enumerate(part):
            tgt = e.input_ids[e.start :]
            vals = [lp[r, e.start - 1 + j, t].item() for j, t in enumerate(tgt)]
            out.append(-sum(vals) / len(vals))
    return out


def cf_metrics(model, tokenizer, records: list[dict]) -> dict[str, float]:
    """Efficacy / paraphrase / neighbourhood success rates (%) of CounterFact records."""
    if not records:
        return {}
    pairs = []
    for r in records:
        for prompt in (r["prompt"], r["rephrase_prompt"], r["locality_prompt"]):
            pairs += [(prompt, r["target_new"]), (prompt, r["ground_truth"])]
    nll = answer_nll(model, tokenizer, pairs)
    es = ps = ns = 0
    for i in range(len(records)):
        e_new, e_true, p_new, p_true, n_new, n_true = nll[6 * i : 6 * i + 6]
        es += e_new < e_true
        ps += p_new < p_true
        ns += n_true < n_new
    n = len(records)
    es, ps, ns = 100 * es / n, 100 * ps / n, 100 * ns / n
    score = 3 / (1 / max(es, 1e-9) + 1 / max(ps, 1e-9) + 1 / max(ns, 1e-9))
    return {"efficacy": es, "paraphrase": ps, "neighborhood": ns, "score": score, "n": n}


@torch.no_grad()
def _nll_total(model, tokenizer, lines: list[str], max_len: int = 256, batch: int = 16) -> tuple[float, int]:
    """Summed NLL over all predicted tokens of ``lines`` (each truncated to ``max_len`` tokens), and the token count."""
    from editmem.tokens import pad_batch

    total, count = 0.0, 0
    rows = [tokenizer(x)["input_ids"][:max_len] for x in lines]
    rows = [r for r in rows if len(r) > 1]
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        ids, mask = pad_batch(part, tokenizer.pad_token_id, side="right")
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None]).squeeze(2)
        m = mask[:, 1:].bool()
        total += float(-(lp[m]).sum())
        count += int(m.sum())
    return total, count


def _is_passage(line: str) -> bool:
    """A web passage of the shared corpus (≥ 30 words), as opposed to a one-line fact sentence."""
    return len(line.split()) >= 30


def heldout_lines(strategy, first: int = 200) -> list[str]:
    """The perplexity set: the first ``first`` corpus lines held out of the statistics, plus every held-out passage."""
    from editmem.strategies.locate.stats import corpus_split

    _, held = corpus_split(strategy.stats_source().corpus, strategy.config.stats_holdout_every)
    return held[:first] + [x for x in held[first:] if _is_passage(x)]


def heldout_ppls(model, tokenizer, lines: list[str]) -> dict[str, float]:
    """Perplexity of the held-out lines, all together and split by kind: the shared corpus is mostly one-line
    CounterFact/ZsRE *train* facts written as sentences (relation-level damage shows there first) plus a few
    web passages (plain text). Each line is scored once; ``all`` pools the two parts' token NLLs."""
    sums = {"passages": _nll_total(model, tokenizer, [x for x in lines if _is_passage(x)]),
            "facts": _nll_total(model, tokenizer, [x for x in lines if not _is_passage(x)])}
    sums["all"] = (sum(t for t, _ in sums.values()), sum(c for _, c in sums.values()))
    return {name: math.exp(t / c) for name, (t, c) in sums.items() if c}


def curve_markdown(run: dict) -> str:
    """One cf-curve run (``curve.json``) as a Markdown table: per batch the preservation loss against the
    threshold, the queue weight of the top edited layer, ES / PS / NS of the first and newest batch, perplexity."""
    layers = run["config"]["layers"]
    top = str(max(layers))
    alpha = f", α {run['config']['alpha']:g}" if run["variant"] == "lyaplock" else ""
    base = run["base"]
    reg = f"L2 {run['config']['l2']:g}" if run["variant"] == "alphaedit" else f"λ {run['lambda']:g}"
    lines = [f"### `{run['variant']}`{alpha}: {run['n']} CounterFact edits in batches of {run['batch']}, "
             f"layers {min(layers)}–{top}, {reg}",
             "",
             f"Unedited: held-out perplexity {base['ppl']:.1f}; first batch ES / PS / NS "
             f"{base['probe']['efficacy']:.0f} / {base['probe']['paraphrase']:.0f} / {base['probe']['neighborhood']:.0f}.",
             "",
             f"| edits | s per edit | `D_sum` | threshold | `w` used (layer {top}) | ES / PS / NS first batch "
             "| ES / PS / NS newest batch | ppl ratio: all / passages / fact sentences |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in run["curve"]:
        f, t = p["probe_first_batch"], p["this_batch"]
        split = p.get("ppl_ratio_split", {})
        ppl = " / ".join(f"{split[k]:.3f}" if k in split else "–" for k in ("passages", "facts"))
        lines.append(f"| {p['n_edits']} | {p['s_per_edit']} | {p['D_sum']:.0f} | {p['threshold_sum']:.0f} | "
                     f"{p['w_used'][top]:.2f} | {f['efficacy']:.0f} / {f['paraphrase']:.0f} / {f['neighborhood']:.0f} | "
                     f"{t['efficacy']:.0f} / {t['paraphrase']:.0f} / {t['neighborhood']:.0f} | {p['ppl_ratio']:.3f} / {ppl} |")
    if run.get("final"):
        fin = run["final"]
        lines += ["", f"All {run['n']} records on the final model: ES {fin['efficacy']:.1f}, PS {fin['paraphrase']:.1f}, "
                  f"NS {fin['neighborhood']:.1f}."]
    return "\n".join(lines) + "\n"


def _write_curve(out: Path, result: dict) -> None:
    """The run so far, as JSON and as a Markdown table."""
    (out / "curve.json").write_text(json.dumps(result, indent=1))
    (out / "curve.md").write_text(curve_markdown(result))


def cmd_cf_curve(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = _load(args.threads)
    model, tok = loaded.model, loaded.tokenizer
    records = json.loads((DATA / "counterfact_eval_2000.json").read_text())[: args.n]
    overrides = json.loads(args.config) if args.config else {}
    strategy = _strategy(loaded, args.variant, out, overrides)
    held = heldout_lines(strategy, args.ppl_lines)
    probe = records[: args.batch]
    t0 = time.time()
    base_ppl = heldout_ppls(model, tok, held)
    base = {"ppl": base_ppl["all"], "ppl_split": base_ppl, "probe": cf_metrics(model, tok, probe), "all": cf_metrics(model, tok, records) if args.base_all else None}
    result = {"variant": args.variant, "n": args.n, "batch": args.batch, "threads": args.threads, "config": strategy.config.to_dict(),
              "lambda": strategy.lam, "base": base, "base_eval_s": round(time.time() - t0, 1), "curve": []}
    strategy.attach()
    for lo in range(0, len(records), args.batch):
        part = records[lo : lo + args.batch]
        facts = [_stored(r["subject"], r["prompt"], r["target_new"]) for r in part]
        t1 = time.time()
        strategy.apply(facts)
        edit_s = time.time() - t1
        tel = strategy.telemetry[-1]
        t2 = time.time()
        point = {
            "n_edits": lo + len(part),
            "edit_s": round(edit_s, 1),
            "s_per_edit": round(edit_s / len(part), 2),
            "D": {l: v["D"] for l, v in tel["layers"].items()},
            "threshold": {l: v["threshold"] for l, v in tel["layers"].items()},
            "w_used": {l: v["w_used"] for l, v in tel["layers"].items()},
            "delta_fro": {l: v["delta_fro"] for l, v in tel["layers"].items()},
            "drift_fro": {l: v["drift_fro"] for l, v in tel["layers"].items()},
            "D_sum": tel["D_sum"],
            "threshold_sum": tel["threshold_sum"],
            "z_loss": tel.get("z_loss"),
            "probe_first_batch": cf_metrics(model, tok, probe),
            "this_batch": cf_metrics(model, tok, part),
            "ppl_split": heldout_ppls(model, tok, held),
        }
        point["ppl"] = point["ppl_split"]["all"]
        point["ppl_ratio"] = point["ppl"] / base["ppl"]
        point["ppl_ratio_split"] = {k: v / base["ppl_split"][k] for k, v in point["ppl_split"].items() if k in base["ppl_split"]}
        point["eval_s"] = round(time.time() - t2, 1)
        result["curve"].append(point)
        _write_curve(out, result)
        print(json.dumps({k: point[k] for k in ("n_edits", "s_per_edit", "D_sum", "threshold_sum", "ppl_ratio", "ppl_ratio_split")}),
              point["probe_first_batch"], point["this_batch"], flush=True)
    if args.save:
        strategy.save()  # edited weights + solver state under <out>/artifacts, for later re-evaluation
    result["final"] = cf_metrics(model, tok, records)
    result["final_ppl_ratio"] = result["curve"][-1]["ppl_ratio"] if result["curve"] else None
    _write_curve(out, result)
    print("final", result["final"], flush=True)


def cmd_speed(args) -> None:
    loaded = _load(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads((DATA / "zsre_eval_1000.json").read_text())
    overrides = json.loads(args.config) if args.config else {}
    res: dict = {"threads": args.threads, "variant": args.variant, "config": overrides}
    strategy = _strategy(loaded, args.variant, out.parent / f"speed_{args.variant}", overrides)
    if args.fresh_stats:
        # the one-off statistics pass, timed without the cache (nothing is written)
        from editmem.strategies.locate.stats import collect_stats

        t = time.time()
        fresh = collect_stats(loaded.model, loaded.tokenizer, strategy.adapter, strategy.layers, strategy.stats_source())
        res["stats_fresh_s"] = round(time.time() - t, 1)
        res["stats_layers"] = strategy.layers
        res["stats_tokens"] = next(iter(fresh.values())).n_tokens
        print(res, flush=True)
    t = time.time()
    strategy.editor()  # templates + statistics from the cache + projector
    res["prepare_s (templates + cached stats + projector)"] = round(time.time() - t, 2)
    res["stats_meta"] = strategy.stats_meta
    for size, count in ((1, args.single), (args.big, 1)):
        facts = [_stored(r["subject"], r["src"], r["alt"]) for r in records[:size * count]]
        t = time.time()
        for i in range(count):
            strategy.apply(facts[i * size : (i + 1) * size])
        res[f"s_per_edit_batch{size}"] = round((time.time() - t) / (size * count), 2)
        print(res, flush=True)
    strategy.detach()
    out.write_text(json.dumps(res, indent=1))


def run_label(run: dict) -> str:
    return run["variant"] + (f" α={run['config']['alpha']:g}" if run["variant"] == "lyaplock" else "")


def compare_markdown(runs: list[dict]) -> str:
    """Several cf-curve runs side by side: per edit count, each run's ``D_sum`` and perplexity ratio (all held-out
    lines; web passages where measured), and the final scores on all records."""
    head = "| edits | " + " | ".join(f"{run_label(r)}: `D_sum` / ppl ratio" for r in runs) + " |"
    lines = [head, "|" + " --- |" * (len(runs) + 1)]
    points = [{p["n_edits"]: p for p in r["curve"]} for r in runs]
    for n in sorted(set().union(*points)):
        cells = []
        for by_n in points:
            p = by_n.get(n)
            passages = p.get("ppl_ratio_split", {}).get("passages") if p else None
            cells.append("–" if p is None else f"{p['D_sum']:.0f} / {p['ppl_ratio']:.2f}x" + (f" (passages {passages:.2f}x)" if passages else ""))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    finals = [r.get("final") for r in runs]
    lines.append("| all records, final model: ES / PS / NS | " + " | ".join(
        "–" if not f else f"{f['efficacy']:.1f} / {f['paraphrase']:.1f} / {f['neighborhood']:.1f}" for f in finals) + " |")
    return "\n".join(lines) + "\n"


def cmd_table(args) -> None:
    runs = [json.loads((Path(d) / "curve.json").read_text()) for d in args.dirs]
    for d, run in zip(args.dirs, runs):
        markdown = curve_markdown(run)
        (Path(d) / "curve.md").write_text(markdown)
        print(markdown)
    if len(runs) > 1:
        print(compare_markdown(runs))


def _layer_io(model, tokenizer, adapter, layers: list[int], lines: list[str]) -> tuple[dict, dict]:
    """Keys (inputs of ``mlp_out``) of ``layers`` and the outputs of the top edited block and of the last block,
    at every real token of ``lines`` (float64)."""
    from editmem.strategies.locate.forward import pad_id_of, read_activations, right_pad

    blocks = [max(layers), adapter.num_layers - 1]
    keys: dict[int, list] = {l: [] for l in layers}
    hidden: dict[int, list] = {b: [] for b in blocks}
    rows = [tokenizer(x, truncation=True, max_length=256)["input_ids"] for x in lines]
    for i in range(0, len(rows), 8):
        ids, mask = right_pad(rows[i : i + 8], pad_id_of(tokenizer), model.device)
        k, h = read_activations(model, adapter, ids, mask, key_layers=layers, block_layers=blocks)
        m = mask.bool()
        for l in layers:
            keys[l].append(k[l][m].double())
        for b in blocks:
            hidden[b].append(h[b][m].double())
    return {l: torch.cat(v) for l, v in keys.items()}, {b: torch.cat(v) for b, v in hidden.items()}


def cmd_drift(args) -> None:
    """How much of the edited model's drift on held-out text the preservation loss sees.

    ``D = tr((W−W0) C (W−W0)ᵀ)`` is each layer's drift on the keys of the *unedited* model, ``E‖(W−W0) k0‖²``;
    the edited model's layer output moves by ``E‖W k1 − W0 k0‖²``, where ``k1`` also carries the edits of the
    layers below. Both are measured on held-out passages and fact sentences of a run saved with ``--save``, and
    ``E‖(W−W0) k0‖²`` also on lines the statistics were collected on, beside the run's own ``D`` (from ``C``): if
    held-out lines saw much more drift than statistics lines, the update would be exploiting directions where the
    covariance estimate is too small (too few statistics tokens)."""
    from editmem.strategies.locate.stats import corpus_split

    loaded = _load(args.threads)
    run = json.loads((Path(args.dir) / "curve.json").read_text())
    variant = args.variant or run["variant"]
    strategy = _strategy(loaded, variant, Path(args.dir), {"layers": run["config"]["layers"], "alpha": run["config"]["alpha"]})
    if not strategy.load():
        raise SystemExit(f"{args.dir}/artifacts holds no saved state for {variant} (run cf-curve with --save)")
    train, held = corpus_split(strategy.stats_source().corpus, strategy.config.stats_holdout_every)
    parts = {"passages": [x for x in held if _is_passage(x)][: args.lines], "facts": [x for x in held if not _is_passage(x)][: args.lines],
             # lines the statistics were collected on: D_form there against D_form on held-out lines tells whether the
             # key covariance is over-fitted to its corpus (an update that hides in directions C under-estimates)
             "train_passages": [x for x in train if _is_passage(x)][: args.lines], "train_facts": [x for x in train if not _is_passage(x)][: args.lines]}
    adapter, layers = strategy.adapter, strategy.layers
    last = run["curve"][-1] if run["curve"] else {}
    result: dict = {"dir": args.dir, "variant": variant, "n_edits": last.get("n_edits", 0), "lines_per_part": args.lines,
                    "D_statistics": last.get("D", {})}
    for name, lines in parts.items():
        strategy.detach()
        k0, h0 = _layer_io(loaded.model, loaded.tokenizer, adapter, layers, lines)
        strategy.attach()
        k1, h1 = _layer_io(loaded.model, loaded.tokenizer, adapter, layers, lines)
        per_layer = {}
        for l in layers:
            W, W0 = adapter.mlp_out_weight(l).detach().double(), strategy.W0[l].double()
            seen = float(((k0[l] @ (W - W0).T) ** 2).sum(1).mean())
            actual = float(((k1[l] @ W.T - k0[l] @ W0.T) ** 2).sum(1).mean())
            per_layer[str(l)] = {"D_form": seen, "actual": actual, "ratio": actual / seen, "D_statistics": result["D_statistics"].get(str(l))}
        result[name] = {
            "layers": per_layer,
            "ratio_summed": sum(v["actual"] for v in per_layer.values()) / sum(v["D_form"] for v in per_layer.values()),
            "block_output_rel_change": {str(b): float(((h1[b] - h0[b]).norm(dim=1) / h0[b].norm(dim=1)).mean()) for b in h0},
        }
        print(name, "actual / D_form:", {l: round(v["ratio"], 2) for l, v in per_layer.items()}, "summed", round(result[name]["ratio_summed"], 2),
              "| D_form:", {l: round(v["D_form"], 1) for l, v in per_layer.items()}, flush=True)
    print("D from the statistics:", {l: round(v, 1) for l, v in result["D_statistics"].items()}, flush=True)
    (Path(args.dir) / "drift_vs_D.json").write_text(json.dumps(result, indent=1))


def cmd_plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads((Path(d) / "curve.json").read_text()) for d in args.dirs]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for i, run in enumerate(runs):
        xs = [p["n_edits"] for p in run["curve"]]
        label, c = run_label(run), f"C{i}"  # one colour per run in every panel
        axes[0].plot(xs, [p["D_sum"] for p in run["curve"]], marker="o", color=c, label=f"{label}: D")
        if run["variant"] == "lyaplock" and run["curve"] and run["curve"][0]["threshold_sum"]:
            axes[0].plot(xs, [p["threshold_sum"] for p in run["curve"]], ls="--", color=c, label=f"{label}: threshold")
        axes[1].plot(xs, [p["probe_first_batch"]["efficacy"] for p in run["curve"]], marker="o", color=c, label=f"{label}: ES first batch")
        axes[1].plot(xs, [p["this_batch"]["efficacy"] for p in run["curve"]], ls=":", color=c, label=f"{label}: ES newest batch")
        axes[2].plot(xs, [p["probe_first_batch"]["neighborhood"] for p in run["curve"]], marker="o", color=c, label=f"{label}: NS first batch")
        axes[3].plot(xs, [p["ppl_ratio"] for p in run["curve"]], marker="o", color=c, label=f"{label}: all held-out lines")
        if all("ppl_ratio_split" in p for p in run["curve"]):
            axes[3].plot(xs, [p["ppl_ratio_split"]["passages"] for p in run["curve"]], ls="--", color=c, label=f"{label}: web passages")
    axes[3].axhline(1.10, ls=":", color="gray", label="bar: 1.10x")
    axes[0].set_yscale("log")
    axes[0].set_title("preservation loss D (sum over layers)")
    axes[1].set_title("efficacy (%)")
    axes[2].set_title("neighbourhood (%)")
    axes[3].set_title("held-out perplexity / unedited")
    for ax in axes:
        ax.set_xlabel("edits")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("wrote", args.out)


def _config_label(run: dict) -> str:
    """The run's config overrides against the strategy defaults (the axis a frontier varies)."""
    from editmem.strategies.lyaplock import LyapLockConfig

    defaults = LyapLockConfig(variant=run["variant"]).to_dict()
    diff = {k: v for k, v in run["config"].items() if k not in ("layers", "progress") and defaults.get(k) != v}
    layers = run["config"]["layers"]
    span = f"layers {layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else f"layers {layers}"
    return ", ".join([run["variant"], span] + [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in diff.items()])


def cmd_frontier(args) -> None:
    """Efficacy against perplexity at one edit count across runs (default: after their first batch).

    At the first batch no queue has acted and nothing compounds, so this isolates what one batch of edits costs
    the model for the efficacy it buys; the plot marks the per-batch perplexity allowance that ``--bar`` over
    ``--n-total`` edits leaves if batch costs add up (they were measured to, or to grow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for d in args.dirs:
        run = json.loads((Path(d) / "curve.json").read_text())
        by_n = {p["n_edits"]: p for p in run["curve"]}
        n = args.at or min(by_n)
        if n not in by_n:
            raise SystemExit(f"{d}: no point at {n} edits (has {sorted(by_n)})")
        p = by_n[n]
        rows.append({"dir": d, "label": _config_label(run), "n_edits": n, "D_sum": p["D_sum"], "ppl_ratio": p["ppl_ratio"],
                     "ppl_passages": p.get("ppl_ratio_split", {}).get("passages"), **{k: p["this_batch"][k] for k in ("efficacy", "paraphrase", "neighborhood")}})
    rows.sort(key=lambda r: r["ppl_ratio"])
    allowance = args.bar ** (rows[0]["n_edits"] / args.n_total) if args.n_total else None
    lines = ["| config | edits | `D_sum` | ppl ratio (passages) | ES / PS / NS of the batch |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['label']} | {r['n_edits']} | {r['D_sum']:.0f} | {r['ppl_ratio']:.3f}x ({r['ppl_passages']:.3f}x) | "
              f"{r['efficacy']:.0f} / {r['paraphrase']:.0f} / {r['neighborhood']:.0f} |" for r in rows]
    if allowance:
        lines.append(f"\nPer-batch allowance if batch costs add up: {args.bar:g}^({rows[0]['n_edits']}/{args.n_total}) = {allowance:.4f}x.")
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [r["ppl_ratio"] for r in rows]
    ax.plot(xs, [r["efficacy"] for r in rows], "o", label="efficacy (ES)")
    ax.plot(xs, [r["paraphrase"] for r in rows], "s", label="paraphrase (PS)")
    short = {"clamp_norm_factor": "clamp", "mom2_update_weight": "λ", "lyaplock, ": ""}
    for i, r in enumerate(rows):
        text = r["label"]
        for long, abbrev in short.items():
            text = text.replace(long, abbrev)
        ax.annotate(text, (r["ppl_ratio"], r["efficacy"]), fontsize=7, rotation=20, xytext=(3, 4 if i % 2 else -14), textcoords="offset points")
    ax.axhline(90, ls=":", color="gray", label="ES bar 90")
    if allowance:
        ax.axvline(allowance, ls="--", color="red", label=f"per-batch allowance for {args.bar:g}x over {args.n_total} edits")
    ax.set_xlabel(f"held-out perplexity / unedited, after {rows[0]['n_edits']} edits")
    ax.set_ylabel("score of the batch (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if args.out:
        fig.savefig(args.out, dpi=110)
        print("wrote", args.out)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
        Path(args.json).with_suffix(".md").write_text(markdown)
        print("wrote", args.json, "and", Path(args.json).with_suffix(".md"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cf-curve")
    c.add_argument("--variant", default="lyaplock", choices=["lyaplock", "memit", "memit_seq", "alphaedit"])
    c.add_argument("--n", type=int, default=1000)
    c.add_argument("--batch", type=int, default=100)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--config", default="", help="JSON object of LyapLockConfig overrides")
    c.add_argument("--ppl-lines", type=int, default=200, help="first held-out lines scored (plus every held-out passage)")
    c.add_argument("--save", action="store_true", help="save the edited strategy state at the end")
    c.add_argument("--base-all", action="store_true", help="also score all records on the unedited model")
    c.add_argument("--out", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--variant", default="lyaplock")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--single", type=int, default=5, help="edits timed one at a time")
    s.add_argument("--big", type=int, default=100, help="size of the batch timed once")
    s.add_argument("--config", default="", help="JSON object of LyapLockConfig overrides")
    s.add_argument("--fresh-stats", action="store_true", help="also time the statistics pass without the cache")
    s.add_argument("--out", required=True)
    g = sub.add_parser("plot")
    g.add_argument("dirs", nargs="+")
    g.add_argument("--out", required=True)
    t = sub.add_parser("table", help="re-render <dir>/curve.md from <dir>/curve.json; several dirs: also side by side")
    t.add_argument("dirs", nargs="+")
    d = sub.add_parser("drift", help="preservation loss against the real drift on held-out text (a run saved with --save)")
    d.add_argument("dir")
    d.add_argument("--variant", default=None, help="default: the variant recorded in <dir>/curve.json")
    d.add_argument("--lines", type=int, default=30, help="held-out passages and fact sentences scored, each")
    d.add_argument("--threads", type=int, default=1)
    f = sub.add_parser("frontier", help="efficacy against perplexity at one edit count across cf-curve runs (JSON + Markdown + PNG)")
    f.add_argument("dirs", nargs="+")
    f.add_argument("--at", type=int, default=None, help="edit count compared (default: each run's first batch)")
    f.add_argument("--bar", type=float, default=1.10, help="perplexity bar over the whole run")
    f.add_argument("--n-total", type=int, default=1000, help="edits the bar is for (0: no allowance line)")
    f.add_argument("--out", default=None, help="PNG path")
    f.add_argument("--json", default=None, help="rows as JSON, and the table as Markdown beside it (.md)")
    args = p.parse_args(argv)
    {"cf-curve": cmd_cf_curve, "speed": cmd_speed, "plot": cmd_plot, "table": cmd_table, "drift": cmd_drift,
     "frontier": cmd_frontier}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
