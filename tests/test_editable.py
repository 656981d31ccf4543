"""EditableLLM on a tiny random model: edit, forget, supersede, reopen, bad input."""

import pytest

from editmem import EditableLLM, FactValidationError

FACT = {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"}


def open_llm(path, loaded, **config):
    return EditableLLM.open(path, model=loaded, strategy="context", **config)


def test_edit_states_the_fact_and_forget_removes_it(tmp_path, tiny_loaded):
    llm = open_llm(tmp_path / "s", tiny_loaded)
    report = llm.edit(FACT)
    assert len(report.added) == 1
    text, trace = llm.prepare_prompt("Who runs Intel as CEO?", chat=False)
    assert "Lip-Bu Tan" in text and trace.fact_ids == report.added
    unrelated, trace = llm.prepare_prompt("What is the boiling point of water?", chat=False)
    assert unrelated == "What is the boiling point of water?" and not trace.fired
    llm.forget(report.added)
    text, trace = llm.prepare_prompt("Who runs Intel as CEO?", chat=False)
    assert "Lip-Bu Tan" not in text and not trace.fired
    out = llm.generate("Who runs Intel as CEO?", max_new_tokens=3)
    assert out.trace is not None and not out.trace.fired


def test_supersede_replaces_the_answer(tmp_path, tiny_loaded):
    llm = open_llm(tmp_path / "s", tiny_loaded)
    llm.edit({**FACT, "target": "Pat Gelsinger"})
    report = llm.edit(FACT)
    assert len(report.superseded) == 1
    text, _ = llm.prepare_prompt("Who is the CEO of Intel?", chat=False)
    assert "Lip-Bu Tan" in text and "Gelsinger" not in text
    assert llm.strategy.applied_ids() == set(report.added)


def test_bad_record_raises_and_stores_nothing(tmp_path, tiny_loaded):
    llm = open_llm(tmp_path / "s", tiny_loaded)
    llm.edit(FACT)
    with pytest.raises(FactValidationError, match=r"fact\[1\].*'subject'"):
        llm.edit([{"subject": "Nike", "prompt": "Who is the CEO of Nike?", "target": "Elliott Hill"}, {"prompt": "x?", "target": "y"}])
    assert [s.fact.subject for s in llm.facts()] == ["Intel"]


def test_reopen_restores_edits_and_config(tmp_path, tiny_loaded):
    path = tmp_path / "s"
    llm = open_llm(path, tiny_loaded, top_k=1)
    ids = llm.edit(FACT).added
    llm.close()
    again = EditableLLM.open(path, model=tiny_loaded)
    assert again.strategy.name == "context" and again.strategy.config.top_k == 1
    assert again.strategy.applied_ids() == set(ids)
    assert "Lip-Bu Tan" in again.prepare_prompt("Who is the CEO of Intel?", chat=False)[0]


def test_new_store_without_a_strategy_uses_llp_and_keeps_it(tmp_path, tiny_loaded):
    path = tmp_path / "s"
    llm = EditableLLM.open(path, model=tiny_loaded, value_steps=2, key_steps=2)
    assert llm.strategy.name == "llp"
    ids = llm.edit(FACT).added
    assert llm.strategy.applied_ids() == set(ids)
    llm.close()
    again = EditableLLM.open(path, model=tiny_loaded)
    assert again.strategy.name == "llp" and again.strategy.config.value_steps == 2
    assert again.strategy.applied_ids() == set(ids)


def test_unknown_config_option_is_a_type_error(tmp_path, tiny_loaded):
    with pytest.raises(TypeError, match="unknown option"):
        open_llm(tmp_path / "s", tiny_loaded, nonsense=1)


def test_batched_generation_gives_each_row_its_own_trace(tmp_path, tiny_loaded):
    llm = open_llm(tmp_path / "s", tiny_loaded)
    llm.edit(FACT)
    outs = llm.generate(["Who is the CEO of Intel?", "What colour is the sky?"], max_new_tokens=2)
    assert [o.trace.fired for o in outs] == [True, False]


def test_deleted_artifacts_are_rebuilt_from_the_memory(tmp_path, tiny_loaded):
    import shutil

    path = tmp_path / "s"
    llm = open_llm(path, tiny_loaded)
    ids = llm.edit(FACT).added
    llm.close()
    shutil.rmtree(path / "artifacts")
    again = EditableLLM.open(path, model=tiny_loaded)
    assert again.strategy.applied_ids() == set(ids)
    assert (path / "artifacts" / "context" / "state.json").is_file()
