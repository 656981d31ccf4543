"""EditableLLM under concurrent callers (LangChain's ``batch`` and parallel graph branches use thread pools).

Every call must get exactly the answer and trace it gets alone: the routing decision of one forward may not leak
into another, and a write may not interleave with a forward's hooks.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from editmem import EditableLLM
from editmem.models import LoadedModel, model_fingerprint
from tests.test_llp import FACT_A, FACT_B, TINY, UNRELATED, _tiny_llama

PROMPTS = [FACT_A.prompt, UNRELATED, FACT_B.prompt, "Hello there, how"]  # mixed lengths, two of them edited


def open_tiny_llp(path, tokenizer) -> EditableLLM:
    """An llp store on a tiny random 4-layer Llama (the llp unit tests' model and config)."""
    import torch

    model = _tiny_llama(tokenizer)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, name="tiny-llama-4", fingerprint=model_fingerprint(model),
                         device=torch.device("cpu"))
    return EditableLLM.open(path, model=loaded, strategy="llp", chat=False, **TINY)


@pytest.fixture()
def llp_store(tmp_path, tokenizer):
    llm = open_tiny_llp(tmp_path / "kb", tokenizer)
    llm.edit([FACT_A.model_dump(include={"subject", "prompt", "target"}),
              FACT_B.model_dump(include={"subject", "prompt", "target"})])
    yield llm
    llm.close()


def _view(generation):
    trace = generation.trace
    return generation.text, None if trace is None else (trace.fact_ids, trace.details.get("entry"))


def test_generate_from_a_thread_pool_equals_sequential_calls(llp_store):
    llm = llp_store
    sequential = [_view(llm.generate(p, max_new_tokens=6)) for p in PROMPTS]
    assert [bool(v[1] and v[1][0]) for v in sequential] == [True, False, True, False]  # the edits fire where they should
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=4) as pool:
            threaded = list(pool.map(lambda p: _view(llm.generate(p, max_new_tokens=6)), PROMPTS))
        assert threaded == sequential
    batched = [_view(g) for g in llm.generate(PROMPTS, max_new_tokens=6)]
    assert batched == sequential  # llp decides per row: one batched forward gives each row its own answer


def test_writes_and_reads_from_threads_do_not_interleave(llp_store):
    """A forget running beside generations: each generation sees the memory before or after it, never half."""
    llm = llp_store
    before = _view(llm.generate(FACT_A.prompt, max_new_tokens=6))
    fact_a = next(s.id for s in llm.facts() if s.fact.subject == FACT_A.subject)
    with ThreadPoolExecutor(max_workers=4) as pool:
        reads = [pool.submit(lambda: _view(llm.generate(FACT_A.prompt, max_new_tokens=6))) for _ in range(4)]
        write = pool.submit(llm.forget, fact_a)
        reads += [pool.submit(lambda: _view(llm.generate(FACT_A.prompt, max_new_tokens=6))) for _ in range(4)]
        write.result()
        seen = [r.result() for r in reads]
    after = _view(llm.generate(FACT_A.prompt, max_new_tokens=6))
    assert before[1][0] and not (after[1] and after[1][0])
    assert all(v in (before, after) for v in seen)
