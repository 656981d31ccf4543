"""Model-free checks of the user-facing metrics: degeneration, same-subject comparison, template probes, aliases."""

from __future__ import annotations

import json

import pytest

from editmem.eval.datasets import load_records
from editmem.eval.metrics import answer_entropy, is_degenerate, repeated_run
from editmem.eval.probes import TEMPLATE_BANK, alias_rephrases, derive_aliases, subject_kind, template_probes
from editmem.eval.user_probes import compare_probes, summarize_probes


@pytest.mark.parametrize("text", ["Sato, Sato, Sato", "Elliott Hill Elliott Hill Elliott Hill", "the CEO of the CEO of Nike",
                                  "I am I am I am here"])
def test_looping_answers_are_degenerate(text):
    assert is_degenerate(text)


@pytest.mark.parametrize("text", ["Nike's famous slogan is \"Just Do It\", created in 1988 by the agency Wieden+Kennedy.",
                                  "New York, New York is a song by Frank Sinatra.", "Elliott Hill", "", "very very good"])
def test_ordinary_answers_are_not_degenerate(text):
    assert not is_degenerate(text)


def test_repeated_run_counts_back_to_back_ngrams():
    words = "a b a b a b c".split()
    assert repeated_run(words, 2) == 3
    assert repeated_run(words, 1) == 1
    assert repeated_run([], 1) == 0
    with pytest.raises(ValueError):
        repeated_run(words, 0)


def test_answer_entropy_is_lower_for_repetitive_text():
    loop = answer_entropy("Sato Sato Sato Sato Sato Sato")
    varied = answer_entropy("The chief executive of Nike is Elliott Hill, appointed in October 2024.")
    assert loop == 0.0 and varied > 2.0
    assert answer_entropy("Elliott Hill") is None  # under three words: no trigram


def test_same_subject_scoring_compares_with_the_pre_edit_answers():
    pre = {"gen_same": ["Just Do It", "Beaverton, Oregon"], "same_has_target": [False, False],
           "same_tokens": [[1, 2, 3], [4, 5]]}
    post = {"gen_same": ["Elliott Hill", "Beaverton, Oregon"], "same_has_target": [True, False],
            "same_tokens": [[9, 2, 3], [4, 5]]}
    out = compare_probes(dict(post), pre)
    assert out["same_unchanged"] == [False, True]
    assert out["same_target_leak"] == [True, False]
    assert out["same_agreement"] == [pytest.approx(2 / 3), 1.0]
    # against itself every probe is unchanged: the pre-edit row of the report is 1.0 by construction
    assert compare_probes(dict(pre), pre)["same_unchanged"] == [True, True]


def test_degeneration_is_flagged_per_answer_group():
    m = compare_probes({"gen_rewrite": "Sato, Sato, Sato", "gen_rephrase": "Hiroshi Sato", "gen_alias": ["Sato"],
                        "gen_same": ["Tokyo", "Sato Sato Sato"], "gen_loc": "Jane Austen"}, {})
    assert m["degenerate_edit"] == [True, False, False]
    assert m["degenerate_probe"] == [False, True, False]
    metrics = summarize_probes([m])
    assert metrics["degenerate_edit"] == pytest.approx(1 / 3)
    assert metrics["degenerate_probes"] == pytest.approx(1 / 3)


def test_summaries_pool_every_answer():
    a = {"same_unchanged": [True, True, True], "gen_alias_success": [True]}
    b = {"same_unchanged": [False, False, True], "gen_alias_success": [False]}
    metrics = summarize_probes([a, b])
    assert metrics["gen_same_subject_unchanged"] == pytest.approx(4 / 6)
    assert metrics["gen_alias_generality"] == 0.5
    assert "same_subject_agreement" not in metrics  # nothing measured, nothing reported


@pytest.mark.parametrize("prompt, kind, relation", [
    ("Where was Danielle Darrieux born?", "person", "birthplace"),
    ("The mother tongue of Danielle Darrieux is", "person", "language"),
    ("Where is the headquarters of Nokia?", "organisation", "headquarters"),
    ("What is the twin city of Lyon? It is", "place", "location"),
    ("The original network of Friends is", "creative_work", "network"),
    ("Quintus Sosius Senecio speaks", "person", "language"),
    ("What university did Watts Humphrey attend?", "person", "education"),
    ("Which family does Ramalinaceae belong to?", "generic", None),
])
def test_subject_kind_from_the_edit_prompt(prompt, kind, relation):
    assert subject_kind(prompt) == (kind, relation)


def test_subject_kind_ignores_the_subject_name():
    assert subject_kind("Born Free was written by", "Born Free") == ("creative_work", "creator")
    prompt = "Autonomous University of Madrid, which is located in"
    assert subject_kind(prompt, "Autonomous University of Madrid") == ("place", "location")
    assert subject_kind(prompt)[0] == "person"  # without the subject, "University" reads as education


def test_template_probes_skip_the_edited_relation_and_are_stable():
    probes = template_probes("Danielle Darrieux", "person", "birthplace", k=3)
    assert len(probes) == 3 and all("Danielle Darrieux" in p for p in probes)
    assert not any("born" in p and "Where" in p for p in probes)
    assert probes == template_probes("Danielle Darrieux", "person", "birthplace", k=3)
    assert len(template_probes("X", "person", None, k=99)) == len(TEMPLATE_BANK["person"])
    with pytest.raises(KeyError):
        template_probes("X", "planet", None)


def test_mechanical_aliases():
    assert derive_aliases("Danielle Darrieux", "person") == ["Darrieux"]
    assert derive_aliases("Nokia Corporation", "organisation") == ["Nokia"]
    assert derive_aliases("The Beatles", "organisation") == ["Beatles"]
    assert derive_aliases("Madonna", "person") == []
    assert alias_rephrases("Danielle Darrieux", ["What was Danielle Darrieux's mother tongue?"], ["Darrieux"]) == [
        "What was Darrieux's mother tongue?"]
    assert alias_rephrases("Ann", ["Where does Anna live?"], ["A"]) == []  # whole words only


def test_benchmark_formats_get_template_probes(tmp_path):
    path = tmp_path / "tiny_zsre.json"
    path.write_text(json.dumps([{"subject": "Danielle Darrieux", "src": "Where was Danielle Darrieux born?",
                                 "rephrase": "What is the birthplace of Danielle Darrieux?", "alt": "Paris",
                                 "answers": ["Bordeaux"], "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare"}]))
    record = load_records(path)[0]
    assert record.probe_source == "template" and record.subject_kind == "person"
    assert len(record.same_subject_probes) == 3
    assert record.alias_rephrases == ["What is the birthplace of Darrieux?"]


def test_bars_section_reports_which_bars_are_met():
    from editmem.eval.report import bars_section

    lines = bars_section({"gen_reliability": 0.95, "gen_same_subject_unchanged": 0.35, "degenerate_edit": 0.01})
    rows = {line.split("`")[1]: line for line in lines if "`" in line}
    assert rows["gen_reliability"].endswith("| yes |")
    assert rows["gen_same_subject_unchanged"].endswith("| no |")
    assert rows["degenerate_edit"].endswith("| yes |")  # lower is better for degeneration
    assert "gen_locality" not in rows and bars_section({}) == []
