"""Reports of evaluation runs: ``results.json``, ``report.md``, plots, and the side-by-side comparison."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from editmem.eval.measure import METRIC_INFO
from editmem.eval.runner import EvalResult

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
FAMILY_TITLES = {
    "easyedit": "EasyEdit family (WISE/LLP tables; fractions in [0, 1])",
    "memit": "MEMIT family (LyapLock/AlphaEdit tables; percentages)",
    "generation": "Generation metrics (greedy answers as a user sees them; fractions)",
    "user": "What users see: same-subject questions, aliases, degeneration (fractions; entropy in bits)",
}


def metric_order(keys: Sequence[str]) -> list[str]:
    known = [k for k in METRIC_INFO if k in keys]
    return known + sorted(k for k in keys if k not in METRIC_INFO)


def describe(key: str, kind: str) -> str:
    if key == "reliability" and kind == "hallucination":
        return "hallucination: mean perplexity of the target (WISE/LLP Rel.; lower is better)"
    return METRIC_INFO.get(key, ("", "", ""))[2]


def _fmt(value: float | None, key: str = "") -> str:
    if value is None:
        return "—"
    if abs(value) >= 100 or key.startswith(("cf_", "fluency", "consistency")) or "ppl" in key or key == "reliability" and value > 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


#: issue #18's bars for the default strategy (greedy answers): metric -> (comparison, bar, label)
USER_BARS: dict[str, tuple[str, float, str]] = {
    "gen_reliability": (">=", 0.90, "edit prompt: target contained"),
    "gen_alias_generality": (">=", 0.80, "alias paraphrase: target contained"),
    "gen_same_subject_unchanged": (">=", 0.95, "same-subject probes unchanged"),
    "gen_locality": (">=", 0.98, "unrelated probe unchanged"),
    "degenerate_edit": ("<=", 0.02, "degenerate answers (edit prompts, paraphrases)"),
    "degenerate_probes": ("<=", 0.02, "degenerate answers (probes)"),
}


def bars_section(metrics: dict[str, float]) -> list[str]:
    """Markdown table of the post-edit values against :data:`USER_BARS` (rows for the metrics present)."""
    rows = [(k, v) for k, v in USER_BARS.items() if k in metrics]
    if not rows:
        return []
    lines = ["## Against the bars of issue #18 (greedy answers)", "", "| what | value | bar | met |",
             "| --- | ---: | ---: | :---: |"]
    for key, (op, bar, label) in rows:
        value = metrics[key]
        met = value >= bar if op == ">=" else value <= bar
        lines.append(f"| {label} (`{key}`) | {value:.3f} | {op} {bar:.2f} | {'yes' if met else 'no'} |")
    return lines + [""]


#: at most this many telemetry rows in ``report.md`` (evenly spaced, the last always shown); all are in results.json
MAX_TELEMETRY_ROWS = 25


def telemetry_section(rows: Sequence[dict]) -> list[str]:
    """Markdown of a strategy's per-write diagnostics (``EvalResult.strategy_telemetry``)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    step = -(-len(rows) // MAX_TELEMETRY_ROWS)
    shown = list(rows[::step])
    if shown[-1] is not rows[-1]:
        shown.append(rows[-1])

    def cell(value) -> str:
        if value is None:
            return "—"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["## Strategy telemetry (per write)", ""]
    if step > 1:
        lines += [f"One write in {step} of {len(rows)}, and the last; all of them are in `{RESULTS_FILE}`.", ""]
    lines += ["| " + " | ".join(keys) + " |", "|" + " ---: |" * len(keys)]
    lines += ["| " + " | ".join(cell(row.get(k)) for k in keys) + " |" for row in shown]
    return lines + [""]


def run_label(result: EvalResult) -> str:
    return f"{result.strategy} · {result.kind} · T={result.n}"


def render_report(result: EvalResult) -> str:
    """Markdown report of one run: setup, metric table (pre vs post), timings, notes."""
    t = result.timings
    lines = [
        f"# editmem eval: {result.strategy} on {result.dataset} (T={result.n})",
        "",
        f"- model: `{result.model}` (fingerprint `{result.model_fingerprint}`); strategy `{result.strategy}`, "
        f"batch size {result.batch_size}, mode `{result.mode}`, seed {result.seed}",
        f"- data: `{Path(result.dataset_path).name}` ({result.kind}), sha256 `{result.dataset_sha256[:16]}…`, "
        f"first {result.n} records in file order",
        f"- generation metrics: {'on' if result.generation.get('enabled') else 'off'}, chat template "
        f"{result.generation.get('chat')}, max_new_tokens {result.generation.get('max_new_tokens')}, greedy, "
        f"{result.generation.get('batch', 1)} prompt(s) per generate call",
        f"- strategy config: `{json.dumps(result.config)}`" if result.config else "- strategy config: —",
        "",
    ]
    families: dict[str, list[str]] = {}
    for key in metric_order(list(result.metrics) + list(result.pre_metrics)):
        families.setdefault(METRIC_INFO.get(key, ("other",))[0], []).append(key)
    for family, keys in families.items():
        lines += [f"## {FAMILY_TITLES.get(family, family)}", "", "| metric | pre-edit | post-edit | definition |",
                  "| --- | ---: | ---: | --- |"]
        for key in keys:
            lines.append(f"| {key} | {_fmt(result.pre_metrics.get(key), key)} | {_fmt(result.metrics.get(key), key)} "
                         f"| {describe(key, result.kind)} |")
        lines.append("")
    lines += bars_section(result.metrics)
    if len(result.curve) > 2:
        keys = metric_order(list(result.curve[-1].metrics))
        lines += ["## Curve (records edited so far, scored on the model at that point)", "",
                  "| edits | " + " | ".join(keys) + " |", "| ---: |" + " ---: |" * len(keys)]
        for point in result.curve:
            lines.append(f"| {point.n_edits} | " + " | ".join(_fmt(point.metrics.get(k), k) for k in keys) + " |")
        lines.append("")
    if result.strategy_telemetry:
        lines += telemetry_section(result.strategy_telemetry)
    lines += [
        "## Timings", "",
        "| stage | seconds |", "| --- | ---: |",
        f"| model load | {t.get('model_load_s', 0):.1f} |",
        f"| pre-edit measurements{' (cached)' if t.get('pre_from_cache') else ''} | {t.get('pre_eval_s', 0):.1f} |",
        f"| edits (total) | {t.get('edit_total_s', 0):.1f} |",
        f"| post-edit measurements | {t.get('post_eval_s', 0):.1f} |",
        f"| total | {t.get('total_s', 0):.1f} |",
        "",
    ]
    if t.get("edit_latency_per_fact_median_s") is not None:
        lines += [f"Edit latency per fact: median {1000 * t['edit_latency_per_fact_median_s']:.1f} ms, "
                  f"p95 {1000 * t['edit_latency_per_fact_p95_s']:.1f} ms ({t.get('torch_threads')} torch threads).", ""]
    c = result.counters
    lines += [f"Counters: {', '.join(f'{k}={v}' for k, v in c.items())}.", ""]
    if result.probes:
        p = result.probes
        lines += [f"Probes: {p.get('same_subject_probes', 0)} same-subject probes and {p.get('alias_paraphrases', 0)} "
                  f"alias paraphrases ({p.get('records_with_alias', 0)} records have one); sources "
                  f"{p.get('source')}; subject kinds {p.get('subject_kinds')}; "
                  f"{p.get('probes_without_verbatim_subject', 0)} paraphrases/probes do not name the subject "
                  "verbatim.", ""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in result.notes] + [""]
    return "\n".join(lines)


def plot_curve(result: EvalResult, path: Path) -> Path | None:
    """Metric vs number of edits (pre-edit point, checkpoints, final)."""
    if len(result.curve) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    xs = [p.n_edits for p in result.curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    ppl_axis = None
    for key in ("reliability", "generality", "locality"):
        ys = [p.metrics.get(key) for p in result.curve]
        if all(y is None for y in ys):
            continue
        if key == "reliability" and result.kind == "hallucination":
            ppl_axis = ax.twinx()
            ppl_axis.plot(xs, ys, "o--", color="tab:red", label="reliability (PPL, right axis)")
            ppl_axis.set_ylabel("perplexity (lower is better)")
            ppl_axis.legend(loc="upper right")
            continue
        ax.plot(xs, ys, "o-", label=key)
    ax.set_xlabel("number of edits")
    ax.set_ylabel("score (teacher-forced)")
    ax.set_ylim(-0.02, 1.02)
    if max(xs) >= 100 and min(x for x in xs if x > 0) * 10 <= max(xs):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(-0.5, max(xs) * 1.5)
    ax.set_title(f"{result.strategy} on {result.kind}")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency(result: EvalResult, path: Path) -> Path | None:
    """Histogram of wall time per ``llm.edit`` call."""
    lat = result.timings.get("edit_call_latency_s") or []
    if not lat:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist([1000 * x for x in lat], bins=min(40, max(5, len(lat) // 3)))
    ax.set_xlabel(f"edit latency per call (ms; batch size {result.batch_size})")
    ax.set_ylabel("calls")
    ax.set_title(f"{result.strategy}: {len(lat)} edit calls")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(result: EvalResult, out_dir: Path) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and the PNG plots into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"results": out_dir / RESULTS_FILE, "report": out_dir / REPORT_FILE}
    written["results"].write_text(result.model_dump_json(indent=1))
    written["report"].write_text(render_report(result))
    for name, fn in (("curve", plot_curve), ("latency", plot_latency)):
        path = fn(result, out_dir / f"{name}.png")
        if path is not None:
            written[name] = path
    return written


def load_result(path: Path) -> EvalResult:
    """Read a run from its folder (or its ``results.json``)."""
    path = Path(path)
    file = path / RESULTS_FILE if path.is_dir() else path
    return EvalResult.model_validate_json(file.read_text())


def render_compare(results: Sequence[EvalResult]) -> str:
    """Side-by-side Markdown table: one column per run, one row per metric (pre-edit rows included)."""
    if not results:
        raise ValueError("nothing to compare")
    keys = metric_order(sorted({k for r in results for k in r.metrics}))
    header = "| metric | " + " | ".join(run_label(r) for r in results) + " |"
    lines = [header, "| --- |" + " ---: |" * len(results)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(_fmt(r.metrics.get(key), key) for r in results) + " |")
    lines.append("| edit latency median (ms/fact) | " + " | ".join(
        "—" if r.timings.get("edit_latency_per_fact_median_s") is None
        else f"{1000 * r.timings['edit_latency_per_fact_median_s']:.1f}" for r in results) + " |")
    lines.append("| mode / batch | " + " | ".join(f"{r.mode} / {r.batch_size}" for r in results) + " |")
    kinds = {r.kind for r in results}
    if "hallucination" in kinds:
        lines += ["", "On hallucination runs `reliability` is the mean perplexity (lower is better)."]
    return "\n".join(lines) + "\n"
