"""Fact validation, ids and error messages."""

import pytest

from editmem.facts import Fact, FactValidationError, parse_fact


def test_id_is_a_content_hash_that_ignores_whitespace_and_provenance():
    a = Fact(subject="Intel", prompt="Who is the CEO of Intel?", target="Lip-Bu Tan")
    b = Fact(subject="Intel", prompt="Who is the  CEO of Intel?", target=" Lip-Bu Tan", provenance={"source": "feed", "author": "x"})
    c = Fact(subject="Intel", prompt="Who is the CEO of Intel?", target="Pat Gelsinger")
    assert a.id == b.id != c.id
    assert a.slot == c.slot  # same subject and prompt: c supersedes a
    assert b.target == "Lip-Bu Tan"


def test_validation_error_names_record_field_and_value():
    with pytest.raises(FactValidationError) as err:
        parse_fact({"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "   "}, record="feed.jsonl line 3")
    msg = str(err.value)
    assert "feed.jsonl line 3" in msg and "'target'" in msg and "'   '" in msg


def test_subject_must_be_named_in_prompt():
    with pytest.raises(FactValidationError, match="field 'subject'.*is not named in prompt"):
        parse_fact({"subject": "AMD", "prompt": "Who is the CEO of Intel?", "target": "x"})


def test_confidence_and_unknown_fields_are_rejected_by_name():
    with pytest.raises(FactValidationError, match="provenance.confidence"):
        parse_fact({"subject": "A", "prompt": "A?", "target": "b", "provenance": {"confidence": 2}})
    with pytest.raises(FactValidationError, match="'colour'"):
        parse_fact({"subject": "A", "prompt": "A?", "target": "b", "colour": "red"})


def test_valid_to_before_valid_from():
    with pytest.raises(FactValidationError, match="valid_to"):
        parse_fact({"subject": "A", "prompt": "A?", "target": "b", "valid_from": "2025-01-02", "valid_to": "2024-01-01"})
