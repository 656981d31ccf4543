"""Validator of the realistic benchmark (editmem/eval/data/realistic.jsonl) and of its schema."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from editmem.eval.datasets import load_records, resolve_dataset
from editmem.eval.realistic import REALISTIC_FILE, RealisticRecord, iter_realistic, load_realistic

MIN_RECORDS = 200


@pytest.fixture(scope="module")
def records() -> list[RealisticRecord]:
    return load_realistic()


def test_the_benchmark_is_large_and_valid(records):
    assert len(records) >= MIN_RECORDS
    ids = [r.id for r in records]
    assert len(set(ids)) == len(ids)
    raw_keys = {tuple(sorted(raw)) for _, raw in iter_realistic()}
    assert raw_keys == {tuple(sorted(RealisticRecord.model_fields))}  # every line carries every field


def test_every_record_has_the_probes_the_metrics_need(records):
    for r in records:
        assert len(r.paraphrases) >= 1 and len(r.alias_paraphrases) >= 1 and len(r.same_subject_probes) >= 3
        assert r.subject in r.prompt
        assert all(r.subject.casefold() not in p.casefold() for p in r.alias_paraphrases)
        assert r.unrelated_probe and r.unrelated_answer and r.source
        assert r.changed_on[:4] in {"2023", "2024", "2025"}


def test_the_benchmark_varies_kinds_and_relations(records):
    kinds = Counter(r.subject_kind for r in records)
    assert set(kinds) == {"person", "organisation", "place", "creative_work", "event"}
    assert min(kinds.values()) >= 10
    assert len({r.relation for r in records}) >= 20
    # the file interleaves kinds, so the first 100 records (a documented subset) mix all of them
    assert len({r.subject_kind for r in records[:100]}) == 5
    no_verbatim = sum(1 for r in records for p in r.alias_paraphrases + r.same_subject_probes if r.subject not in p)
    assert no_verbatim >= len(records)


def test_named_dataset_loads_as_eval_records(records):
    assert resolve_dataset("realistic") == REALISTIC_FILE
    loaded = load_records("realistic", n=5)
    assert [e.case_id for e in loaded] == [r.id for r in records[:5]]
    first = loaded[0]
    assert first.kind == "realistic" and first.probe_source == "record"
    assert first.same_subject_probes == records[0].same_subject_probes
    assert first.alias_rephrases == records[0].alias_paraphrases
    assert first.loc_prompt == records[0].unrelated_probe and first.fact.rephrases == []


def _good() -> dict:
    return json.loads(REALISTIC_FILE.read_text(encoding="utf-8").splitlines()[0])


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(alias_paraphrases=[d["prompt"]]), "verbatim"),
    (lambda d: d.update(changed_on="2019-05-01"), "2023"),
    (lambda d: d.update(previous=d["target"]), "did not change"),
    (lambda d: d.update(same_subject_probes=d["same_subject_probes"][:2]), "at least 3"),
    (lambda d: d.update(unrelated_probe=f"Who founded {d['subject']}?"), "unrelated"),
    (lambda d: d.update(same_subject_probes=d["same_subject_probes"][:2] + [f"Is {d['target']} popular?"]), "new answer"),
])
def test_the_schema_rejects_broken_records(change, message):
    raw = _good()
    change(raw)
    with pytest.raises(ValueError, match=message):
        RealisticRecord.model_validate(raw)


def test_duplicate_ids_are_rejected(tmp_path):
    line = json.dumps(_good())
    path = tmp_path / "dup.jsonl"
    path.write_text(line + "\n" + line + "\n")
    with pytest.raises(ValueError, match="duplicate id"):
        load_realistic(path)


def test_realistic_with_declared_aliases():
    """``realistic+aliases`` edits the same records with each fact's aliases declared; the plain name does not."""
    from editmem.eval.datasets import load_records

    declared, plain = load_records("realistic+aliases", 5), load_records("realistic", 5)
    assert [r.fact.id for r in declared] == [r.fact.id for r in plain]
    assert all(r.fact.aliases for r in declared) and not any(r.fact.aliases for r in plain)
    assert all(any(a in p for a in r.fact.aliases) for r in declared for p in r.alias_rephrases)
