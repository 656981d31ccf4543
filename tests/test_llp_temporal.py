"""Temporal validity on the subject-keyed ``llp`` strategy: an expired fact stops firing, a future one starts."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tests.test_concurrency import open_tiny_llp
from tests.test_llp import FACT_A, FACT_B


@pytest.fixture()
def llm(tmp_path, tokenizer):
    llm = open_tiny_llp(tmp_path / "kb", tokenizer)
    yield llm
    llm.close()


def _fired(generation) -> list[str]:
    return generation.trace.fact_ids if generation.trace is not None else []


def test_expired_and_future_facts_do_not_fire_and_as_of_moves_the_window(llm):
    expired = {"subject": FACT_A.subject, "prompt": FACT_A.prompt, "target": FACT_A.target,
               "valid_from": "2019-01-01", "valid_to": "2020-01-01"}
    future = {"subject": FACT_B.subject, "prompt": FACT_B.prompt, "target": FACT_B.target, "valid_from": "2099-01-01"}
    report = llm.edit([expired, future])
    expired_id, future_id = report.added
    assert not _fired(llm.generate(FACT_A.prompt, max_new_tokens=3))
    assert not _fired(llm.generate(FACT_B.prompt, max_new_tokens=3))
    then = llm.generate(FACT_A.prompt, max_new_tokens=3, as_of=datetime(2019, 6, 1, tzinfo=timezone.utc))
    assert _fired(then) == [expired_id] and then.trace.details["as_of"].startswith("2019-06-01")
    later = llm.generate([FACT_A.prompt, FACT_B.prompt], max_new_tokens=3, as_of=datetime(2100, 1, 1, tzinfo=timezone.utc))
    assert [_fired(g) for g in later] == [[], [future_id]]


def test_a_subjects_facts_with_different_windows_get_separate_entries(llm):
    llm.edit([{"subject": FACT_A.subject, "prompt": FACT_A.prompt, "target": FACT_A.target, "valid_to": "2020-01-01"},
              {"subject": FACT_A.subject, "prompt": f"Where did {FACT_A.subject} study?", "target": "Ann Arbor"}])
    entries = llm.strategy.entries()
    assert len(entries) == 2 and all(len(e["facts"]) == 1 for e in entries)
