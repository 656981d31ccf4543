"""Dataset loaders: field mapping, name resolution, rejection of malformed records (EVALUATION.md §2)."""

from __future__ import annotations

import json

import pytest

from conftest import require_shared_data
from editmem.eval.datasets import data_dir, detect_kind, load_records, resolve_dataset
from editmem.facts import FactValidationError

ZSRE = [
    {"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?", "pred": "x",
     "rephrase": "What university did Watts Humphrey take part in?", "alt": "University of Michigan",
     "answers": ["Illinois Institute of Technology"], "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare",
     "cond": "x", "case_id": 7},
    {"subject": "Mount Rosa", "src": "Which country is Mount Rosa in?", "rephrase": "Where is Mount Rosa?",
     "alt": "Italy", "answers": ["Switzerland"], "loc": "nq question: capital of peru", "loc_ans": "Lima", "case_id": 8},
]
COUNTERFACT = [{"case_id": 0, "prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English",
                "subject": "Danielle Darrieux", "ground_truth": "French",
                "rephrase_prompt": "Where Danielle Darrieux is from, people speak",
                "locality_prompt": "Michel Rocard is a native speaker of", "locality_ground_truth": "French"}]
HALLU = [{"prompt": "This is a Wikipedia passage about carole gist. Carole Gist was born in 1969.",
          "target_new": "She was crowned Miss USA 1990.", "subject": "carole gist",
          "locality_prompt": "Description Map of South Ame", "locality_ground_truth": "rica. This map has a scratch."}]


def write(path, records):
    path.write_text(json.dumps(records))
    return path


def test_zsre_mapping(tmp_path):
    records = load_records(write(tmp_path / "z.json", ZSRE))
    first = records[0]
    assert first.kind == "zsre" and first.case_id == 7
    assert (first.fact.prompt, first.fact.target, first.fact.subject) == (ZSRE[0]["src"], "University of Michigan", "Watts Humphrey")
    assert first.rephrase == ZSRE[0]["rephrase"] and first.fact.rephrases == [ZSRE[0]["rephrase"]]
    assert (first.loc_prompt, first.loc_answer) == (ZSRE[0]["loc"], "Shakespeare")
    assert first.true_target == "Illinois Institute of Technology"
    assert first.fact.provenance.source == "eval" and first.fact.provenance.feed == "z.json"
    assert len(load_records(tmp_path / "z.json", n=1)) == 1


def test_counterfact_and_hallucination_mapping(tmp_path):
    cf = load_records(write(tmp_path / "cf.json", COUNTERFACT))[0]
    assert cf.kind == "counterfact" and cf.fact.target == "English" and cf.true_target == "French"
    assert cf.rephrase == COUNTERFACT[0]["rephrase_prompt"] and cf.loc_answer == "French"
    h = load_records(write(tmp_path / "h.json", HALLU))[0]
    assert h.kind == "hallucination" and h.rephrase is None and h.true_target is None and h.case_id == 0
    assert h.loc_answer == HALLU[0]["locality_ground_truth"]


def test_malformed_record_names_index_and_field(tmp_path):
    bad = [ZSRE[0], {k: v for k, v in ZSRE[1].items() if k != "alt"}]
    with pytest.raises(FactValidationError) as err:
        load_records(write(tmp_path / "bad.json", bad))
    assert "record 1" in str(err.value) and "'alt'" in str(err.value)
    assert err.value.errors[0][0] == "alt"
    # a subject that is not in the prompt is rejected by Fact validation, with the record index
    wrong = [ZSRE[0], {**ZSRE[1], "subject": "Mont Blanc"}]
    with pytest.raises(FactValidationError, match="record 1"):
        load_records(write(tmp_path / "wrong.json", wrong))
    # records beyond n are not read
    assert len(load_records(tmp_path / "bad.json", n=1)) == 1


def test_feed_jsonl(tmp_path):
    feed = tmp_path / "world.jsonl"
    feed.write_text(
        json.dumps({"subject": "Canada", "prompt": "Who is the prime minister of Canada?", "target": "Mark Carney",
                    "rephrases": ["Who leads Canada's government?"], "locality_prompts": ["What is the capital of Canada?"]})
        + "\n# comment\n"
        + json.dumps({"subject": "Peru", "prompt": "Who is the president of Peru?", "target": "X"}) + "\n"
    )
    records = load_records(feed)
    assert [r.kind for r in records] == ["feed", "feed"]
    assert records[0].rephrase == "Who leads Canada's government?" and records[0].loc_answer is None
    assert records[1].rephrase is None and records[1].loc_prompt is None
    assert records[0].fact.provenance.feed == "world.jsonl" and records[0].fact.provenance.source == "eval"
    feed.write_text(feed.read_text() + json.dumps({"subject": "Chile", "prompt": "Who rules Peru?", "target": "Y"}) + "\n")
    with pytest.raises(FactValidationError, match=r"record 2 \(line 4\)"):
        load_records(feed)


def test_names_resolve_in_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITMEM_DATA_DIR", str(tmp_path))
    write(tmp_path / "zsre_eval_1000.json", ZSRE)
    assert data_dir() == tmp_path
    assert resolve_dataset("zsre") == tmp_path / "zsre_eval_1000.json"
    assert load_records("zsre", n=2)[1].fact.target == "Italy"
    with pytest.raises(FileNotFoundError, match="counterfact"):
        resolve_dataset("counterfact")
    with pytest.raises(FileNotFoundError):
        resolve_dataset(tmp_path / "nope.json")


def test_default_data_dir_is_relative_to_the_package(monkeypatch):
    monkeypatch.delenv("EDITMEM_DATA_DIR", raising=False)
    import editmem

    assert data_dir() == (__import__("pathlib").Path(editmem.__file__).resolve().parents[1].parent / "shared" / "data").resolve()


@pytest.mark.data
@pytest.mark.parametrize(("name", "kind"), [("zsre", "zsre"), ("counterfact", "counterfact"), ("hallucination", "hallucination")])
def test_shared_datasets_load(name, kind, monkeypatch):
    folder = require_shared_data()
    monkeypatch.setenv("EDITMEM_DATA_DIR", str(folder))
    records = load_records(name, n=20)
    assert len(records) == 20 and {r.kind for r in records} == {kind}
    assert all(r.fact.subject in r.fact.prompt for r in records)
    assert all(r.loc_prompt and r.loc_answer for r in records)
    assert all((r.rephrase is None) == (kind == "hallucination") for r in records)
    assert detect_kind(json.loads((folder / resolve_dataset(name).name).read_text())[0]) == kind


def test_empty_locality_probe_drops_the_probe_not_the_record(tmp_path):
    import json

    from editmem.eval.datasets import load_records

    rows = [{"subject": "x", "prompt": "About x: a passage.", "target_new": "True sentence.",
             "locality_prompt": "Some text", "locality_ground_truth": ans} for ans in ("more text", "")]
    path = tmp_path / "hallu.json"
    path.write_text(json.dumps(rows))
    first, second = load_records(path)
    assert (first.loc_prompt, first.loc_answer) == ("Some text", "more text")
    assert second.loc_answer is None and second.fact.target == "True sentence."
