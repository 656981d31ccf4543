"""Metric arithmetic on hand-made inputs whose answer is known (EVALUATION.md §3-§6)."""

from __future__ import annotations

import math

import pytest
import torch

from editmem.eval.measure import compare_to_pre, summarize
from editmem.eval.metrics import (
    contains_answer,
    fluency_score,
    harmonic_mean,
    ngram_entropy,
    perplexity,
    prob_comparison,
    score_logits,
    token_accuracy,
    token_agreement,
)


def one_hot_logits(argmaxes: list[int], vocab: int = 10) -> torch.Tensor:
    logits = torch.zeros(len(argmaxes), vocab)
    for row, token in enumerate(argmaxes):
        logits[row, token] = 5.0
    return logits


def test_teacher_forced_accuracy_is_exactly_two_thirds():
    # ids: prompt [1, 2], answer [3, 4, 5] -> start = 2; logits[t] predicts ids[t + 1]
    ids = [1, 2, 3, 4, 5]
    # position 1 -> predicts 3 (right), position 2 -> 9 (wrong), position 3 -> 5 (right); position 0/4 ignored
    logits = one_hot_logits([7, 3, 9, 5, 0])
    scored = score_logits(logits, ids, start=2)
    assert scored.target == [3, 4, 5]
    assert scored.pred == [3, 9, 5]
    assert scored.accuracy == pytest.approx(2 / 3, abs=0)


def test_boundary_off_by_one_would_change_the_score():
    """Pitfall 3: scoring one position too early counts the last prompt token as part of the answer."""
    ids = [1, 2, 3, 4, 5]
    logits = one_hot_logits([2, 3, 9, 5, 0])  # the model "knows" the prompt token 2 perfectly
    assert score_logits(logits, ids, start=2).accuracy == pytest.approx(2 / 3)
    assert score_logits(logits, ids, start=1).accuracy == pytest.approx(3 / 4)


def test_perplexity_matches_a_hand_computation():
    # vocab of 4 with probabilities 1/2, 1/4, 1/8, 1/8 at every position
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    logits = probs.log().repeat(3, 1)
    ids = [3, 0, 1]  # prompt [3]; answer tokens 0 (p=1/2) and 1 (p=1/4)
    scored = score_logits(logits, ids, start=1)
    # nll = (ln 2 + ln 4) / 2 = 1.5 ln 2  ->  PPL = 2 ** 1.5
    assert scored.nll == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert scored.ppl == pytest.approx(2**1.5, rel=1e-6)
    assert perplexity(1e6) == math.inf


def test_score_logits_rejects_bad_boundaries():
    logits = one_hot_logits([1, 2, 3])
    with pytest.raises(ValueError):
        score_logits(logits, [1, 2, 3], start=3)  # no answer tokens
    with pytest.raises(ValueError):
        score_logits(logits, [1, 2, 3], start=0)  # nothing predicts the first token
    with pytest.raises(ValueError):
        score_logits(logits[:2], [1, 2, 3], start=1)


def test_token_accuracy_and_agreement():
    assert token_accuracy([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5
    assert token_agreement([5, 6, 7], [5, 6, 7]) == 1.0
    assert token_agreement([5, 6, 7], [5, 0, 7]) == pytest.approx(2 / 3)
    assert token_agreement([5, 6], [5, 6, 7, 8]) == 0.5  # a length change counts as disagreement


@pytest.mark.parametrize(
    ("generated", "target", "expected"),
    [
        ("The University of Michigan!", "university of michigan", True),
        ("He studied in Zürich, Switzerland.", "Zurich", True),  # accents stripped
        ("It is the Eiffel Tower.", "Eiffel  tower", True),  # case, article, whitespace
        ("Michiganders love lakes", "Michigan", False),  # whole words only
        ("Paris", "", False),
    ],
)
def test_containment_after_normalisation(generated, target, expected):
    assert contains_answer(generated, target) is expected


def test_probability_comparison_and_harmonic_mean():
    ok, diff = prob_comparison(math.log(2), math.log(4))  # P(new)=1/2 > P(true)=1/4
    assert ok and diff == pytest.approx(0.25)
    assert prob_comparison(1.0, 1.0)[0] is False  # ties fail
    assert harmonic_mean([50.0, 100.0]) == pytest.approx(200 / 3)
    assert harmonic_mean([0.0, 100.0]) == 0.0


def test_ngram_entropy_and_fluency_by_hand():
    # bigrams of a b a b: (a,b) x2, (b,a) x1 -> H2 = -(2/3 log2 2/3 + 1/3 log2 1/3)
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy(["a", "b", "a", "b"], 2) == pytest.approx(h2)
    assert ngram_entropy(["a"], 2) == 0.0
    # "x y z w": 3 distinct bigrams (log2 3), 2 distinct trigrams (1 bit) -> mean(2/3 log2 3, 4/3 * 1)
    assert fluency_score("x y z w") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3) / 2)


def test_locality_is_agreement_with_pre_edit_tokens():
    pre = {"locality_tokens": [1, 2, 3], "gen_loc": "Paris is the capital."}
    post = {"locality_tokens": [1, 9, 3], "gen_loc": "Paris is the capital!"}
    scored = compare_to_pre(post, pre)
    assert scored["locality_acc"] == pytest.approx(2 / 3)
    assert scored["gen_loc_unchanged"] is False
    assert compare_to_pre(pre, pre)["locality_acc"] == 1.0


def test_summarize_counterfact_and_hallucination():
    ln = math.log
    cf = [
        {"rewrite_acc": 1.0, "rephrase_acc": 0.5, "locality_acc": 1.0, "rewrite_nll": ln(2), "rewrite_nll_true": ln(4),
         "rephrase_nll": ln(4), "rephrase_nll_true": ln(2), "loc_nll_true": ln(2), "loc_nll_new": ln(4)},
        {"rewrite_acc": 0.0, "rephrase_acc": 0.5, "locality_acc": 0.5, "rewrite_nll": ln(4), "rewrite_nll_true": ln(2),
         "rephrase_nll": ln(4), "rephrase_nll_true": ln(2), "loc_nll_true": ln(2), "loc_nll_new": ln(4)},
    ]
    m = summarize(cf, "counterfact")
    assert m["reliability"] == 0.5 and m["generality"] == 0.5 and m["locality"] == 0.75
    assert m["avg"] == pytest.approx((0.5 + 0.5 + 0.75) / 3)
    assert m["cf_efficacy"] == 50.0 and m["cf_paraphrase"] == 0.0 and m["cf_neighborhood"] == 100.0
    assert m["cf_score"] == 0.0
    assert "gen_reliability" not in m  # no generation measured -> no generation metric

    hallu = [{"ppl": 2.0, "rewrite_acc": 1.0, "ppl_below_pre": True, "locality_acc": 1.0},
             {"ppl": 1000.0, "rewrite_acc": 0.0, "ppl_below_pre": False, "locality_acc": 1.0},
             {"ppl": 4.0, "rewrite_acc": 0.5, "ppl_below_pre": True, "locality_acc": 1.0}]
    m = summarize(hallu, "hallucination")
    assert m["reliability"] == pytest.approx(1006 / 3)  # mean PPL (WISE/LLP Rel.)
    assert m["reliability_ppl_median"] == 4.0
    assert m["ppl_below_pre"] == pytest.approx(2 / 3)
    assert "generality" not in m and "avg" not in m
