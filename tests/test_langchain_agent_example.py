"""examples/agent_learns_fact.py on the embedded model: the fact comes from a tool result, is stored with the
agent's provenance, and a later conversation without it in context is answered by the edited model."""

from __future__ import annotations

import importlib.util

import pytest

from editmem import EditableLLM

from tests.conftest import REPO

pytestmark = pytest.mark.embedded


def _example():
    spec = importlib.util.spec_from_file_location("agent_learns_fact", REPO / "examples" / "agent_learns_fact.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agent_learns_a_fact_and_answers_it_later_from_the_edited_model(embedded, tmp_path):
    example = _example()
    llm = EditableLLM.open(tmp_path / "store", model=embedded, strategy="context")
    out = example.run(llm)
    assert "Lip-Bu" not in out["before"]  # the model did not know it
    assert [c["name"] for c in out["calls"]] == ["latest_news", "remember_fact"]
    assert out["calls"][1]["args"]["answer"] == "Lip-Bu Tan"  # read from the tool result by the model
    (stored,) = out["facts"]
    assert stored.fact.target == "Lip-Bu Tan" and stored.fact.subject == "Intel"
    assert stored.fact.provenance.author == example.AGENT and stored.fact.provenance.source == "agent"
    assert [e.actor for e in out["history"]] == [f"agent:{example.AGENT}"]
    assert "Lip-Bu Tan" in out["answer"] and out["trace"]["fact_ids"] == [stored.id]
