"""Per-record measurements and their aggregation into the reported metrics (EVALUATION.md §3-§7).

:func:`measure_record` takes the raw measurements of one record on the model as it is now (pre-edit or
post-edit). :func:`compare_to_pre` adds the values defined relative to the pre-edit model (locality).
:func:`summarize` averages per-record values into the metric table. Raw values are kept in the result file so
either metric family can be recomputed from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from editmem.eval.datasets import EvalRecord
from editmem.eval.metrics import (
    contains_answer,
    fluency_score,
    generation_unchanged,
    harmonic_mean,
    mean,
    median,
    perplexity,
    prob_comparison,
    token_agreement,
)
from editmem.eval.scoring import Scorer
from editmem.eval.user_probes import USER_METRIC_INFO, compare_probes, summarize_probes

Measurement = dict[str, Any]

#: metric key -> (family, direction, short description); drives report ordering and labels
METRIC_INFO: dict[str, tuple[str, str, str]] = {
    "reliability": ("easyedit", "higher", "teacher-forced token accuracy of the target on the edit prompt"),
    "generality": ("easyedit", "higher", "teacher-forced token accuracy of the target on the paraphrase"),
    "locality": ("easyedit", "higher", "token agreement with the pre-edit model on the unrelated probe"),
    "avg": ("easyedit", "higher", "mean of reliability, generality, locality"),
    "reliability_token_acc": ("easyedit", "higher", "hallucination: token accuracy of the target"),
    "reliability_ppl_median": ("easyedit", "lower", "hallucination: median perplexity of the target"),
    "ppl_below_pre": ("easyedit", "higher", "hallucination: fraction of records whose PPL fell below pre-edit"),
    "cf_efficacy": ("memit", "higher", "% records with P(new) > P(true) on the edit prompt"),
    "cf_paraphrase": ("memit", "higher", "% records with P(new) > P(true) on the paraphrase"),
    "cf_neighborhood": ("memit", "higher", "% records with P(true) > P(new) on the neighbourhood prompt"),
    "cf_score": ("memit", "higher", "harmonic mean of efficacy, paraphrase, neighborhood"),
    "cf_efficacy_diff": ("memit", "higher", "mean P(new) - P(true) on the edit prompt, x100"),
    "cf_paraphrase_diff": ("memit", "higher", "mean P(new) - P(true) on the paraphrase, x100"),
    "cf_neighborhood_diff": ("memit", "higher", "mean P(true) - P(new) on the neighbourhood prompt, x100"),
    "fluency_ngram_entropy_2prompts": ("memit", "higher", "n-gram entropy x100 of top-5 samples (2 prompts/record)"),
    "consistency_proxy": ("memit", "higher", "TF-IDF cosine to same-target facts x100 (proxy, not paper Consistency)"),
    "gen_reliability": ("generation", "higher", "greedy answer to the edit prompt contains the target"),
    "gen_generality": ("generation", "higher", "greedy answer to the paraphrase contains the target"),
    "gen_locality": ("generation", "higher", "greedy answer to the unrelated prompt is unchanged"),
    **USER_METRIC_INFO,
}


def measure_record(
    scorer: Scorer,
    record: EvalRecord,
    *,
    generation: bool = True,
    fluency: bool = False,
    seed: int = 42,
    index: int = 0,
) -> Measurement:
    """Raw measurements of one record on the model in its current state."""
    fact = record.fact
    out: Measurement = {}
    before = scorer.mismatches
    rewrite = scorer.teacher_forced(fact.prompt, fact.target)
    out.update(rewrite_acc=rewrite.accuracy, rewrite_nll=rewrite.nll)
    if record.kind == "hallucination":
        out["ppl"] = perplexity(rewrite.nll)
    if record.rephrase:
        rephrase = scorer.teacher_forced(record.rephrase, fact.target)
        out.update(rephrase_acc=rephrase.accuracy, rephrase_nll=rephrase.nll)
    if record.loc_prompt and record.loc_answer:
        loc = scorer.teacher_forced(record.loc_prompt, record.loc_answer, chat=False)
        out["locality_tokens"] = loc.pred
        out["loc_nll_true"] = loc.nll
    if record.kind == "counterfact" and record.true_target:
        out["rewrite_nll_true"] = scorer.teacher_forced(fact.prompt, record.true_target).nll
        if record.rephrase:
            out["rephrase_nll_true"] = scorer.teacher_forced(record.rephrase, record.true_target).nll
        if record.loc_prompt and record.loc_answer:
            out["loc_nll_new"] = scorer.teacher_forced(record.loc_prompt, fact.target, chat=False).nll
    out["tokenization_mismatches"] = scorer.mismatches - before
    if generation:
        out["gen_rewrite"] = scorer.answer(fact.prompt)
        out["gen_rewrite_success"] = contains_answer(out["gen_rewrite"], fact.target)
        if record.rephrase:
            out["gen_rephrase"] = scorer.answer(record.rephrase)
            out["gen_rephrase_success"] = contains_answer(out["gen_rephrase"], fact.target)
        if record.loc_prompt:
            out["gen_loc"] = scorer.answer(record.loc_prompt)
    if fluency:
        out.update(measure_fluency(scorer, [record], seed=seed * 1000 + index * 10)[0])
    return out


def measure_generation(scorer: Scorer, records: Sequence[EvalRecord], *, rows: int = 1) -> list[Measurement]:
    """Greedy generations of several records, ``rows`` prompts per ``generate`` call (same fields as
    :func:`measure_record`, plus ``gen_loc_fired``: whether the strategy stated/used a fact for the locality probe).

    Prompts are grouped per probe (edit prompts, paraphrases, locality prompts) and chunked in record order, so
    the same records and ``rows`` give the same batches before and after editing.
    """
    out: list[Measurement] = [{} for _ in records]
    probes = [("gen_rewrite", lambda r: r.fact.prompt), ("gen_rephrase", lambda r: r.rephrase),
              ("gen_loc", lambda r: r.loc_prompt)]
    for key, get in probes:
        owners = [k for k, r in enumerate(records) if get(r)]
        for lo in range(0, len(owners), rows):
            chunk = owners[lo : lo + rows]
            for k, (text, fired) in zip(chunk, scorer.answers([get(records[k]) for k in chunk])):
                out[k][key] = text
                if key == "gen_loc" and fired is not None:
                    out[k]["gen_loc_fired"] = fired
    for m, r in zip(out, records):
        if "gen_rewrite" in m:
            m["gen_rewrite_success"] = contains_answer(m["gen_rewrite"], r.fact.target)
        if "gen_rephrase" in m:
            m["gen_rephrase_success"] = contains_answer(m["gen_rephrase"], r.fact.target)
    return out


def measure_fluency(scorer: Scorer, records: Sequence[EvalRecord], *, seed: int, rows: int = 1) -> list[Measurement]:
    """Fluency samples of several records: ``fluency_texts`` and ``fluency`` per record.

    Generation prompts are the edit prompt and the paraphrase (2 per record; our CounterFact has no generation
    prompts, EVALUATION.md §6.3), so the metric is labelled ``fluency_ngram_entropy_2prompts``. Prompts are
    sampled ``rows`` at a time (one left-padded batch; chunk ``c`` is seeded with ``seed + c``), so the same
    records and ``rows`` reproduce the same texts.
    """
    prompts, owners = [], []
    for k, record in enumerate(records):
        for p in [record.fact.prompt] + ([record.rephrase] if record.rephrase else []):
            prompts.append(p)
            owners.append(k)
    texts: list[str] = []
    for c, lo in enumerate(range(0, len(prompts), rows)):
        texts += scorer.sample_texts(prompts[lo : lo + rows], seed=seed + c)
    out: list[Measurement] = [{"fluency_texts": []} for _ in records]
    for k, text in zip(owners, texts):
        out[k]["fluency_texts"].append(text)
    for m in out:
        m["fluency"] = sum(fluency_score(t) for t in m["fluency_texts"]) / len(m["fluency_texts"])
    return out


def compare_to_pre(post: Measurement, pre: Measurement) -> Measurement:
    """Add the values defined against the pre-edit model: token locality, generation locality, PPL change, and the
    same-subject / degeneration values of :func:`editmem.eval.user_probes.compare_probes`."""
    post = dict(post)
    if "locality_tokens" in post and "locality_tokens" in pre:
        post["locality_acc"] = token_agreement(pre["locality_tokens"], post["locality_tokens"])
    if "gen_loc" in post and "gen_loc" in pre:
        post["gen_loc_unchanged"] = generation_unchanged(pre["gen_loc"], post["gen_loc"])
    if "ppl" in post and "ppl" in pre:
        post["ppl_below_pre"] = post["ppl"] < pre["ppl"]
    return compare_probes(post, pre)


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def summarize(measurements: Sequence[Measurement], kind: str) -> dict[str, float]:
    """Average per-record values into the metric table (keys documented in :data:`METRIC_INFO`).

    EasyEdit-family values are fractions in [0, 1]; MEMIT-family values are percentages (as in the papers).
    ``reliability`` is the token accuracy, except on the hallucination set where it is the mean perplexity
    (the WISE/LLP tables' Rel.; lower is better) and the token accuracy is reported as ``reliability_token_acc``.
    """
    col = lambda key: [m.get(key) for m in measurements]  # noqa: E731
    metrics: dict[str, float | None] = {}
    if kind == "hallucination":
        metrics["reliability"] = mean(col("ppl"))
        metrics["reliability_ppl_median"] = median(col("ppl"))
        metrics["reliability_token_acc"] = mean(col("rewrite_acc"))
        metrics["ppl_below_pre"] = mean(col("ppl_below_pre"))
    else:
        metrics["reliability"] = mean(col("rewrite_acc"))
        metrics["generality"] = mean(col("rephrase_acc"))
    metrics["locality"] = mean(col("locality_acc"))
    if kind != "hallucination":
        parts = [metrics[k] for k in ("reliability", "generality", "locality") if metrics.get(k) is not None]
        metrics["avg"] = sum(parts) / len(parts) if len(parts) == 3 else None
    if kind == "counterfact":
        pairs = {
            "cf_efficacy": ("rewrite_nll", "rewrite_nll_true"),
            "cf_paraphrase": ("rephrase_nll", "rephrase_nll_true"),
            "cf_neighborhood": ("loc_nll_true", "loc_nll_new"),
        }
        for name, (preferred, other) in pairs.items():
            tests = [prob_comparison(m[preferred], m[other]) for m in measurements if preferred in m and other in m]
            metrics[name] = _pct(mean([ok for ok, _ in tests]))
            metrics[f"{name}_diff"] = _pct(mean([diff for _, diff in tests]))
        parts = [metrics[k] for k in pairs]
        metrics["cf_score"] = harmonic_mean(parts) if all(p is not None for p in parts) else None
    if any("fluency" in m for m in measurements):
        metrics["fluency_ngram_entropy_2prompts"] = _pct(mean(col("fluency")))
    if any("consistency_proxy" in m for m in measurements):
        metrics["consistency_proxy"] = _pct(mean(col("consistency_proxy")))
    metrics["gen_reliability"] = mean(col("gen_rewrite_success"))
    metrics["gen_generality"] = mean(col("gen_rephrase_success"))
    metrics["gen_locality"] = mean(col("gen_loc_unchanged"))
    metrics.update(summarize_probes(measurements))
    return {k: float(v) for k, v in metrics.items() if v is not None}
