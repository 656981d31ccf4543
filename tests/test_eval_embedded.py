"""The harness on the embedded SmolLM2 model and the shared ZsRE file (EVALUATION.md §3 pitfall 3, §1)."""

from __future__ import annotations

import pytest

from conftest import require_shared_data
from editmem import EditableLLM
from editmem.eval.datasets import load_records
from editmem.eval.runner import run_eval
from editmem.tokens import encode_prompt_target

pytestmark = [pytest.mark.embedded, pytest.mark.data]


@pytest.fixture()
def zsre(monkeypatch):
    monkeypatch.setenv("EDITMEM_DATA_DIR", str(require_shared_data()))
    return load_records("zsre", n=2)


def test_answer_boundary_indexes_the_first_target_token_before_and_after_editing(zsre, embedded, tmp_path):
    tok = embedded.tokenizer
    record = zsre[0]
    llm = EditableLLM.open(tmp_path / "store", model=embedded, strategy="context")
    prompts = {"pre": llm.prepare_prompt(record.fact.prompt, chat=False)[0]}
    llm.edit(record.fact, actor="eval")
    prompts["post"] = llm.prepare_prompt(record.fact.prompt, chat=False)[0]
    assert prompts["post"] != prompts["pre"]  # the context strategy stated the fact
    for text in prompts.values():
        enc = encode_prompt_target(tok, text, record.fact.target)
        assert not enc.mismatch
        assert tok.decode(enc.input_ids[: enc.start]) == text
        assert tok.decode(enc.input_ids[enc.start :]) == " " + record.fact.target


def test_run_eval_context_on_zsre(zsre, embedded, tmp_path):
    result = run_eval("context", "zsre", n=2, model=embedded, max_new_tokens=6, gen_batch_size=2,
                      out_dir=tmp_path / "out")
    assert result.kind == "zsre" and result.n == 2 and result.counters["added"] == 2
    assert result.generation == {"enabled": True, "chat": True, "max_new_tokens": 6, "decoding": "greedy", "batch": 2}
    # stating the fact in the prompt makes the target more likely on the edited records
    assert result.metrics["reliability"] > result.pre_metrics["reliability"]
    assert all(o.post["rewrite_nll"] < o.pre["rewrite_nll"] for o in result.per_record)
    assert result.pre_metrics["locality"] == 1.0 and 0.0 <= result.metrics["locality"] <= 1.0
    assert (tmp_path / "out" / "report.md").read_text().startswith("# editmem eval: context on zsre (T=2)")
