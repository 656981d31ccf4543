"""Integration: the `context` strategy on the embedded SmolLM2 model."""

import pytest

from editmem import EditableLLM

pytestmark = pytest.mark.embedded

FACT = {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"}


def test_context_edit_changes_the_answer_and_leaves_unrelated_prompts_alone(tmp_path, embedded):
    llm = EditableLLM.open(tmp_path / "store", model=embedded, strategy="context")
    question, unrelated = "Who is the CEO of Intel?", "What is the capital of France?"
    before = llm.generate([question, unrelated], max_new_tokens=16)
    assert "Lip-Bu Tan" not in before[0].text
    llm.edit(FACT)
    after = llm.generate([question, unrelated], max_new_tokens=16)
    assert "Lip-Bu Tan" in after[0].text and after[0].trace.fired
    assert after[1].text == before[1].text and not after[1].trace.fired
    llm.forget(llm.facts()[0].id)
    assert "Lip-Bu Tan" not in llm.generate(question, max_new_tokens=16).text
