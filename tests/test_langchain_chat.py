"""EditMemChatModel on the embedded model (context strategy): cache vs edits, batching, options, streaming."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.globals import get_llm_cache, set_llm_cache

from editmem import EditableLLM
from editmem.integrations.langchain import EditMemChatModel

pytestmark = pytest.mark.embedded

QUESTION = "Who is the CEO of Intel?"
FACT = {"subject": "Intel", "prompt": QUESTION, "target": "Lip-Bu Tan"}
PROMPTS = ["Hi", QUESTION, "Name one colour of the sky on a clear summer day, in a single word please.",
           "Who is the chief executive officer of the company Intel today?"]


@pytest.fixture()
def llm(embedded, tmp_path) -> EditableLLM:
    return EditableLLM.open(tmp_path / "store", model=embedded, strategy="context")


@pytest.fixture()
def global_cache():
    previous = get_llm_cache()
    cache = InMemoryCache()
    set_llm_cache(cache)
    yield cache
    set_llm_cache(previous)


def test_cached_answer_is_not_served_after_an_edit_or_a_forget(llm, global_cache):
    chat = EditMemChatModel(llm=llm, max_tokens=16)
    before = chat.invoke(QUESTION)
    assert "Lip-Bu" not in before.content
    assert chat.invoke(QUESTION).content == before.content and len(global_cache._cache) == 1  # a cache hit
    (fact_id,) = llm.edit(FACT).added
    after = chat.invoke(QUESTION)
    assert "Lip-Bu Tan" in after.content and after.response_metadata["edit_trace"]["fact_ids"] == [fact_id]
    llm.forget(fact_id)
    assert "Lip-Bu" not in chat.invoke(QUESTION).content
    assert len(global_cache._cache) == 3  # one entry per edit state


def test_batch_and_abatch_match_sequential_calls_in_one_generate_call(llm, monkeypatch):
    llm.edit(FACT)
    chat = EditMemChatModel(llm=llm, max_tokens=8)
    sequential = [chat.invoke(p) for p in PROMPTS]
    calls: list[Any] = []
    real = llm.generate
    monkeypatch.setattr(llm, "generate", lambda prompt, **kw: calls.append(prompt) or real(prompt, **kw))
    batched = chat.batch(PROMPTS)
    abatched = asyncio.run(chat.abatch(PROMPTS))
    assert len(calls) == 2 and all(len(c) == len(PROMPTS) for c in calls)  # one batched call each
    for got in (batched, abatched):
        assert [m.content for m in got] == [m.content for m in sequential]
        assert [_timeless(m.response_metadata["edit_trace"]) for m in got] == [_timeless(m.response_metadata["edit_trace"]) for m in sequential]
        assert [m.usage_metadata["input_tokens"] for m in got] == [m.usage_metadata["input_tokens"] for m in sequential]
    assert sequential[1].response_metadata["edit_trace"]["fact_ids"] and "Lip-Bu" in sequential[1].content  # 8 tokens


def test_batch_with_stop_falls_back_to_per_row_calls_that_honour_it(llm):
    chat = EditMemChatModel(llm=llm, max_tokens=24, stop=["!"])
    rows = chat.batch(["Hello", "Hey"])
    assert all("!" not in m.content for m in rows) and all(m.content for m in rows)


def test_options_are_honoured(llm):
    chat = EditMemChatModel(llm=llm, max_tokens=24)
    short = chat.invoke("Write me 2 haikus.", max_tokens=5)
    assert short.usage_metadata["output_tokens"] == 5 and short.response_metadata["finish_reason"] == "length"
    full = chat.invoke("Count from 1 to 10, separated by commas.")
    cut = chat.invoke("Count from 1 to 10, separated by commas.", stop=["5"])
    assert "5" in full.content and "5" not in cut.content and full.content.startswith(cut.content)
    sampled = {chat.invoke("Say a random word.", temperature=1.5, max_tokens=8).content for _ in range(3)}
    assert len(sampled) > 1  # temperature > 0 samples (greedy would give one answer)
    with pytest.raises(TimeoutError):
        chat.invoke("Write a long story.", timeout=1e-4, max_tokens=64)


def test_unknown_options_and_fields_are_rejected(llm):
    chat = EditMemChatModel(llm=llm)
    with pytest.raises(TypeError, match="top_k"):
        chat.invoke("hi", top_k=3)
    with pytest.raises(ValueError, match="serves only"):
        chat.invoke("hi", model="gpt-4o")
    with pytest.raises(Exception, match="api_key"):
        EditMemChatModel(llm=llm, api_key="x")
    with pytest.raises(Exception, match="temperature"):
        EditMemChatModel(llm=llm, temperature=-1)


class _Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_stream_yields_tokens_with_callbacks_and_a_last_chunk(llm):
    llm.edit(FACT)
    chat = EditMemChatModel(llm=llm, max_tokens=24)
    handler = _Tokens()
    chunks = list(chat.stream(QUESTION, config={"callbacks": [handler]}))
    text = "".join(c.content for c in chunks)
    assert len(chunks) > 3 and text == chat.invoke(QUESTION).content
    assert [t for t in handler.tokens if t] == [c.content for c in chunks if c.content]
    last = chunks[-1]
    assert last.chunk_position == "last" and last.usage_metadata["output_tokens"] > 0
    assert last.response_metadata["finish_reason"] == "stop" and last.response_metadata["edit_trace"]["fact_ids"]
    assert sum(bool(c.usage_metadata) for c in chunks) == 1


def test_auto_tools_router_calls_relevant_tools_and_answers_after_results(llm):
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(location: str) -> str:
        """Get the weather at a location."""
        return "It's sunny."

    chat = EditMemChatModel(llm=llm, max_tokens=40).bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    call = chat.invoke([question])
    assert [c["name"] for c in call.tool_calls] == ["get_weather"] and "Paris" in call.tool_calls[0]["args"]["location"]
    assert call.response_metadata["tool_routing"]["decision"] == "call"
    answer = chat.invoke([question, call, get_weather.invoke(call.tool_calls[0])])
    assert answer.tool_calls == [] and answer.content and answer.response_metadata["tool_routing"]["decision"] == "text"
    assert chat.invoke("Hello!").tool_calls == []  # nothing relevant: a text answer


def _timeless(trace: dict | None) -> dict | None:
    """A trace without its ``as_of`` instant (each call is scoped to its own "now")."""
    if trace is None:
        return None
    return {**trace, "details": {k: v for k, v in trace.get("details", {}).items() if k != "as_of"}}


def test_json_mode_replies_with_one_json_object_and_a_cut_off_reply_fails_to_parse(llm):
    import json

    from langchain_core.exceptions import OutputParserException

    chat = EditMemChatModel(llm=llm, max_tokens=32, max_string_length=8)  # the cap is for schemas, not JSON mode
    out = chat.with_structured_output(None, method="json_mode", include_raw=True).invoke(
        "What is the capital of France? Return JSON with a 'capital' key.")
    assert out["parsing_error"] is None and out["raw"].response_metadata["finish_reason"] == "stop"
    assert out["parsed"] == json.loads(out["raw"].content) and set(out["parsed"]) == {"capital"}

    short = EditMemChatModel(llm=llm, max_tokens=6).with_structured_output(None, method="json_mode")
    story = "Write a long story as JSON."
    with pytest.raises(OutputParserException, match="not one complete JSON value .finish_reason='length'"):
        short.invoke(story)  # not closed by LangChain's partial-JSON repair
    partial = list(short.stream(story))
    assert partial and all(isinstance(p, dict) for p in partial)  # a stream still yields what parsed so far
