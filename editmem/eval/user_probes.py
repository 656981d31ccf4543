"""Measurements of what users see: same-subject specificity, alias generality, degeneration.

Three per-record measurements, for every strategy and dataset (probes from :attr:`EvalRecord.same_subject_probes`
and :attr:`EvalRecord.alias_rephrases`):

* :func:`generate_probes`: greedy answers (``llm.generate``, as a user asks) to the alias paraphrases and the
  same-subject probes, with whether the strategy reported firing on each probe;
* :func:`teacher_force_probes`: the target's teacher-forced token accuracy on the alias paraphrases, and the
  argmax predictions over the **pre-edit** greedy answer of each same-subject probe (so post-edit predictions can
  be compared with pre-edit ones position by position);
* :func:`compare_probes`: the values defined against the pre-edit model (answer unchanged, token agreement, the
  new target leaking into an answer that did not have it) and the degeneration flags of every greedy answer.

The arithmetic lives in :mod:`editmem.eval.metrics`; :func:`summarize_probes` pools the per-answer values into the
metric table (keys in :data:`USER_METRIC_INFO`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from editmem.eval.datasets import EvalRecord
from editmem.eval.metrics import answer_entropy, contains_answer, is_degenerate, mean, token_agreement
from editmem.eval.scoring import Scorer

Measurement = dict[str, Any]

#: metric key -> (family, direction, definition); merged into ``measure.METRIC_INFO``
USER_METRIC_INFO: dict[str, tuple[str, str, str]] = {
    "gen_alias_generality": ("user", "higher", "greedy answer to the alias paraphrase contains the target"),
    "alias_generality": ("user", "higher", "teacher-forced token accuracy of the target on the alias paraphrase"),
    "gen_same_subject_unchanged": ("user", "higher",
                                   "greedy answer to a same-subject probe (other relation) equals the pre-edit one"),
    "same_subject_agreement": ("user", "higher",
                               "teacher-forced argmax agreement with the pre-edit model over its same-subject answers"),
    "gen_same_subject_target_leak": ("user", "lower",
                                     "same-subject answers that newly contain the edit's target"),
    "same_subject_fired": ("user", "lower", "same-subject probes on which the strategy reported an edit firing"),
    "degenerate_edit": ("user", "lower",
                        "greedy answers to edit prompts and paraphrases with a repeated n-gram loop"),
    "degenerate_probes": ("user", "lower", "greedy answers to same-subject and unrelated probes with a loop"),
    "ngram_entropy_edit": ("user", "higher", "mean n-gram entropy (bits) of edit-prompt and paraphrase answers"),
    "ngram_entropy_probes": ("user", "higher", "mean n-gram entropy (bits) of same-subject and unrelated answers"),
}

#: greedy-answer fields of one measurement, by the degeneration group they count in
EDIT_ANSWERS = ("gen_rewrite", "gen_rephrase", "gen_alias")
PROBE_ANSWERS = ("gen_same", "gen_loc")


def generate_probes(scorer: Scorer, records: Sequence[EvalRecord], *, rows: int = 1) -> list[Measurement]:
    """Greedy answers to each record's alias paraphrases and same-subject probes, ``rows`` prompts a call.

    Fields per record: ``gen_alias`` / ``gen_alias_success`` (target contained), ``gen_same`` /
    ``same_has_target`` / ``same_fired`` (None when the strategy keeps no trace). Prompts are chunked in record
    order, so the same records and ``rows`` give the same batches before and after editing.
    """
    jobs: list[tuple[int, str, str]] = []
    for k, record in enumerate(records):
        jobs += [(k, "gen_alias", p) for p in record.alias_rephrases]
        jobs += [(k, "gen_same", p) for p in record.same_subject_probes]
    out: list[Measurement] = [{"gen_alias": [], "gen_same": [], "same_fired": []} for _ in records]
    for lo in range(0, len(jobs), rows):
        chunk = jobs[lo : lo + rows]
        for (k, key, _), (text, fired) in zip(chunk, scorer.answers([p for _, _, p in chunk])):
            out[k][key].append(text)
            if key == "gen_same":
                out[k]["same_fired"].append(fired)
    for m, record in zip(out, records):
        target = record.fact.target
        m["gen_alias_success"] = [contains_answer(t, target) for t in m["gen_alias"]]
        m["same_has_target"] = [contains_answer(t, target) for t in m["gen_same"]]
    return out


def teacher_force_probes(scorer: Scorer, record: EvalRecord, answers: Sequence[str]) -> Measurement:
    """``alias_acc`` (target token accuracy per alias paraphrase) and ``same_tokens`` (argmax predictions over
    ``answers``, the pre-edit greedy answers of the same-subject probes; None where an answer is empty)."""
    out: Measurement = {"alias_acc": [scorer.teacher_forced(p, record.fact.target).accuracy
                                      for p in record.alias_rephrases]}
    passes = [scorer.answer_pass(p, a) for p, a in zip(record.same_subject_probes, answers)]
    out["same_tokens"] = [None if tf is None else tf.pred for tf in passes]
    return out


def compare_probes(post: Measurement, pre: Measurement) -> Measurement:
    """Add the values defined against the pre-edit measurement ``pre`` and the degeneration flags (in place)."""
    if "gen_same" in post and "gen_same" in pre:
        post["same_unchanged"] = [a == b for a, b in zip(pre["gen_same"], post["gen_same"])]
        post["same_target_leak"] = [now and not before
                                    for before, now in zip(pre["same_has_target"], post["same_has_target"])]
    if "same_tokens" in post and "same_tokens" in pre:
        post["same_agreement"] = [None if a is None or b is None else token_agreement(a, b)
                                  for a, b in zip(pre["same_tokens"], post["same_tokens"])]
    for group, keys in (("edit", EDIT_ANSWERS), ("probe", PROBE_ANSWERS)):
        texts = answer_texts(post, keys)
        if texts:
            post[f"degenerate_{group}"] = [is_degenerate(t) for t in texts]
            post[f"entropy_{group}"] = [answer_entropy(t) for t in texts]
    return post


def answer_texts(m: Measurement, keys: Sequence[str]) -> list[str]:
    """The greedy answers stored under ``keys`` (single strings or lists of them), in key order."""
    texts: list[str] = []
    for key in keys:
        value = m.get(key)
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts += [v for v in value if isinstance(v, str)]
    return texts


def _pooled(measurements: Sequence[Measurement], key: str) -> list[Any]:
    return [v for m in measurements for v in (m.get(key) or [])]


def summarize_probes(measurements: Sequence[Measurement]) -> dict[str, float]:
    """Pool per-answer values over records (every answer weighs the same) into the ``user`` metric family."""
    pooled = {
        "gen_alias_generality": _pooled(measurements, "gen_alias_success"),
        "alias_generality": _pooled(measurements, "alias_acc"),
        "gen_same_subject_unchanged": _pooled(measurements, "same_unchanged"),
        "same_subject_agreement": _pooled(measurements, "same_agreement"),
        "gen_same_subject_target_leak": _pooled(measurements, "same_target_leak"),
        "same_subject_fired": _pooled(measurements, "same_fired"),
        "degenerate_edit": _pooled(measurements, "degenerate_edit"),
        "degenerate_probes": _pooled(measurements, "degenerate_probe"),
        "ngram_entropy_edit": _pooled(measurements, "entropy_edit"),
        "ngram_entropy_probes": _pooled(measurements, "entropy_probe"),
    }
    out = {key: mean(values) for key, values in pooled.items()}
    return {k: float(v) for k, v in out.items() if v is not None}


__all__ = [
    "USER_METRIC_INFO",
    "answer_texts",
    "compare_probes",
    "generate_probes",
    "summarize_probes",
    "teacher_force_probes",
]
