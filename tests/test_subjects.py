"""Facts whose subject is not verbatim in the prompt (issue #18, part 3): located, recorded, keyed on; what cannot
be located is rejected naming the record and the field, and nothing stored is lost."""

from __future__ import annotations

import pytest

from editmem.facts import Fact, FactValidationError, parse_fact
from editmem.subjects import acronym, locate_subject, mask_names

# (subject, prompt, surface the subject has in the prompt, step that finds it)
NATURAL = [
    ("European Central Bank", "Who is the ECB president?", "ECB", "acronym"),
    ("United Kingdom", "Who is the prime minister of the UK?", "UK", "acronym"),
    ("Meta Platforms", "Who runs Meta these days?", "Meta", "partial"),
    ("Kylian Mbappé", "Which club does kylian mbappe play for?", "kylian mbappe", "casefold"),
    ("nike", "Who is Nike's chief executive?", "Nike", "casefold"),
    ("The Walt Disney Company", "Who is the chief executive of Disney?", "Disney", "partial"),
    ("International Business Machines", "Who is the CEO of IBM?", "IBM", "acronym"),
    ("Twitter", "What is the bird app called now?", "the bird app", "alias"),
    ("Manchester United F.C.", "Who manages Manchester United?", "Manchester United", "partial"),
    ("World Health Organization", "Who is the director-general of the WHO?", "WHO", "acronym"),
]


@pytest.mark.parametrize("subject, prompt, surface, method", NATURAL)
def test_natural_phrasings_are_located(subject, prompt, surface, method):
    aliases = ["the bird app"] if subject == "Twitter" else []
    fact = parse_fact({"subject": subject, "prompt": prompt, "target": "T", "aliases": aliases}, locate_similar=False)
    assert fact.surface == surface and fact.subject_match == method
    assert fact.surface in fact.prompt
    assert fact.id == Fact(subject=subject, prompt=prompt, target="T", subject_in_prompt=surface).id  # id unchanged


def test_verbatim_subject_records_nothing_and_hash_is_stable():
    fact = Fact(subject="Nike", prompt="Who is the CEO of Nike?", target="Elliott Hill")
    assert fact.subject_in_prompt is None and fact.subject_match is None and fact.surface == "Nike"
    body = fact.model_dump(mode="json")
    assert Fact.model_validate(body) == fact  # the stored form round-trips
    assert "aliases" in body  # new fields are stored, but an unaliased fact hashes as before they existed
    import hashlib

    legacy = {k: v for k, v in body.items() if k not in {"provenance", "aliases", "subject_in_prompt", "subject_match"}}
    assert fact.content_hash() == hashlib.sha256(repr(sorted(legacy.items())).encode()).hexdigest()[:24]


def test_similar_named_span_is_the_last_step():
    fact = parse_fact({"subject": "United Kingdom", "prompt": "Who is Britain's prime minister?", "target": "Keir Starmer"})
    assert fact.subject_match == "similar" and fact.surface == "Britain"
    with pytest.raises(FactValidationError, match="field 'subject'"):  # a competitor is not an alias
        parse_fact({"subject": "Chile", "prompt": "Who rules Peru?", "target": "Y"})


def test_unlocatable_subject_names_record_and_field():
    with pytest.raises(FactValidationError) as info:
        parse_fact({"subject": "France", "prompt": "What is the boiling point of water?", "target": "100"}, record="feed.jsonl:3")
    err = info.value
    assert err.record == "feed.jsonl:3" and [f for f, _, _ in err.errors] == ["subject"]
    assert "France" in str(err) and "boiling point" in str(err)
    with pytest.raises(ValueError, match="does not occur"):
        Fact(subject="Nike", prompt="Who runs it?", target="x", subject_in_prompt="Nike Inc")


def test_acronym_and_masking_helpers():
    assert acronym("European Central Bank") == "ECB" and acronym("Alphabet Inc.") is None and acronym("Nike") is None
    assert locate_subject("Who is the prime minister?", "Canada") is None
    assert mask_names("Who leads the UK and the United Kingdom's army?", ["United Kingdom", "UK"]) == (
        "Who leads the X and the X's army?", True)
    assert mask_names("Who leads Ukraine?", ["UK"]) == ("Who leads Ukraine?", False)  # whole words only


def test_edit_rejects_unlocatable_fact_and_keeps_the_store(tmp_path, tokenizer):
    from tests.test_concurrency import open_tiny_llp

    llm = open_tiny_llp(tmp_path / "kb", tokenizer)
    try:
        llm.edit([{"subject": "European Central Bank", "prompt": "Who is the ECB president?", "target": "Christine Lagarde"}])
        with pytest.raises(FactValidationError) as info:
            llm.edit([{"subject": "Canada", "prompt": "Who is the prime minister?", "target": "Mark Carney"},
                      {"subject": "France", "prompt": "What is the boiling point of water?", "target": "100"}])
        assert info.value.record == "fact[1]" or info.value.record == "fact[0]"
        assert [f for f, _, _ in info.value.errors] == ["subject"]
        active = llm.memory.list()
        assert [s.fact.target for s in active] == ["Christine Lagarde"]  # nothing stored was lost, nothing half-added
        stored = active[0].fact
        assert stored.surface == "ECB" and stored.subject_match == "acronym"  # the span used is recorded
        assert llm.explain("Who is the ECB president?").trace.fact_ids == [active[0].id]  # keyed on "ECB"
    finally:
        llm.close()


@pytest.mark.embedded
def test_ten_natural_phrasings_edit_the_embedded_model(tmp_path):
    """Ten facts whose subject is not verbatim in the prompt are accepted and edit the embedded model."""
    from editmem import EditableLLM

    targets = ["Christine Lagarde", "Keir Starmer", "Javier Olivan", "Real Madrid", "Elliott Hill", "Josh D'Amaro",
               "Arvind Krishna", "X", "Ruben Amorim", "Tedros Adhanom"]
    facts = [{"subject": s, "prompt": p, "target": t, **({"aliases": ["the bird app"]} if s == "Twitter" else {})}
             for (s, p, _, _), t in zip(NATURAL, targets)]
    llm = EditableLLM.open(tmp_path / "kb", strategy="llp")
    try:
        llm.edit(facts)
        answers = llm.generate([f["prompt"] for f in facts], max_new_tokens=16)
        from editmem.textnorm import contains_answer

        hits = [contains_answer(a.text, f["target"]) for a, f in zip(answers, facts)]
        assert all(a.trace is not None and a.trace.fired for a in answers)
        assert sum(hits) >= 9, [(f["prompt"], a.text) for a, f in zip(answers, facts)]
    finally:
        llm.close()


def test_acronyms_are_names_only_in_capitals():
    assert mask_names("Tell us who the WHO chief is", ["World Health Organization", "WHO", "US"]) == (
        "Tell us who the X chief is", True)
    assert locate_subject("Who is the director-general of the who?", "World Health Organization") is None or \
        locate_subject("Who is the director-general of the who?", "World Health Organization").method != "acronym"
