"""Tool format, message rendering, constrained decoding, memory tools and the retriever (tiny model, no embedded)."""

from __future__ import annotations

import json

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from editmem import EditableLLM
from editmem.integrations.langchain import (
    EditMemRetriever,
    FactEditor,
    UnsupportedContentError,
    memory_tools,
    parse_reply,
    to_chat_messages,
)
from editmem.integrations.langchain.constrained import GrammarLogitsProcessor, cap_strings, tool_call_grammar
from editmem.integrations.langchain.structured import CompleteJsonOutputParser, CompletePydanticOutputParser
from editmem.integrations.langchain.tool_format import ToolBinding, to_spec

ADD = to_spec({"name": "add", "description": "Add a and b.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}})
BINDING = ToolBinding(tools=[ADD], choice="required")


def test_parse_reply_valid_call_gets_id_and_dict_args():
    parsed = parse_reply('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', BINDING, "stop")
    assert parsed.content == "" and parsed.invalid_tool_calls == [] and parsed.finish_reason == "tool_calls"
    (call,) = parsed.tool_calls
    assert call["name"] == "add" and call["args"] == {"a": 1, "b": 2} and call["id"].startswith("call_")


@pytest.mark.parametrize("text, finish, error", [
    ('<tool_call>{"name": "mul", "arguments": {}}</tool_call>', "stop", "unknown tool 'mul'"),
    ('<tool_call>{"name": "add", "arguments": {"a": 1,</tool_call>', "stop", "not JSON"),
    ('<tool_call>{"name": "add", "arguments": {"a": 1', "length", "cut off by max_tokens"),
    ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}', "stop", "missing </tool_call>"),
])
def test_parse_reply_keeps_unparseable_calls_as_invalid(text, finish, error):
    parsed = parse_reply(text, BINDING, finish)
    assert parsed.tool_calls == []
    (bad,) = parsed.invalid_tool_calls
    assert error in bad["error"] and bad["args"] and bad["id"]


def test_complete_call_cut_before_closing_tag_still_counts():
    parsed = parse_reply('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}', BINDING, "length")
    assert [c["args"] for c in parsed.tool_calls] == [{"a": 1, "b": 2}]


def test_history_renders_tool_calls_and_tool_call_ids():
    history = [
        SystemMessage("be brief"),
        HumanMessage("What is 1 + 2"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "abc123", "type": "tool_call"}]),
        ToolMessage(json.dumps({"result": 3}), name="add", tool_call_id="abc123", status="error"),
    ]
    rendered = to_chat_messages(history, ToolBinding(tools=[ADD]))
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "tool"]
    assert rendered[0]["content"].startswith("be brief") and '"name": "add"' in rendered[0]["content"]
    assert '"id": "abc123"' in rendered[2]["content"] and '"arguments": {"a": 1, "b": 2}' in rendered[2]["content"]
    assert rendered[3]["content"] == '<tool_response id="abc123" name="add" status="error">{"result": 3}</tool_response>'


def test_image_parts_raise_instead_of_vanishing():
    message = HumanMessage(content=[{"type": "text", "text": "describe"}, {"type": "image", "url": "http://x/y.png"}])
    with pytest.raises(UnsupportedContentError, match="'image' part"):
        to_chat_messages([message])


def test_earlier_reasoning_is_not_rendered_but_reasoning_outside_an_ai_message_raises():
    thought = {"type": "thinking", "thinking": "a greeting: answer warmly", "signature": "sig"}
    said = AIMessage(content=[thought, {"type": "text", "text": "Hello!", "cache_control": {"type": "ephemeral"}}])
    assert to_chat_messages([HumanMessage("hi"), said])[1] == {"role": "assistant", "content": "Hello!"}
    with pytest.raises(UnsupportedContentError, match="unsupported content part 'thinking'"):
        to_chat_messages([HumanMessage(content=[thought])])


def test_cap_strings_leaves_constrained_strings_alone():
    schema = {"type": "object", "properties": {"s": {"type": "string"}, "e": {"type": "string", "enum": ["a"]},
                                               "title": {"type": "string", "maxLength": 3}}}
    capped = cap_strings(schema, 10)["properties"]
    assert capped["s"]["maxLength"] == 10 and "maxLength" not in capped["e"] and capped["title"]["maxLength"] == 3


def test_structured_parsers_refuse_a_cut_off_reply_but_stream_its_prefix():
    from langchain_core.exceptions import OutputParserException
    from langchain_core.outputs import ChatGeneration
    from pydantic import BaseModel

    class Pair(BaseModel):
        a: str
        b: str = ""

    cut = [ChatGeneration(message=AIMessage('{"a": "x", "b": "lon', response_metadata={"finish_reason": "length"}))]
    for parser in (CompleteJsonOutputParser(), CompletePydanticOutputParser(pydantic_object=Pair)):
        with pytest.raises(OutputParserException, match="finish_reason='length'"):
            parser.parse_result(cut)
    assert CompleteJsonOutputParser().parse_result(cut, partial=True) == {"a": "x", "b": "lon"}
    whole = [ChatGeneration(message=AIMessage('{"a": "x", "b": "long"}'))]
    assert CompletePydanticOutputParser(pydantic_object=Pair).parse_result(whole) == Pair(a="x", b="long")


def test_grammar_processor_only_allows_a_well_formed_call(tokenizer):
    """Random logits through the processor still spell a valid call: the mask, not the model, makes it well-formed."""
    processor = GrammarLogitsProcessor(tokenizer, tool_call_grammar([ADD.model_dump()], required=True, max_string_length=8))
    torch.manual_seed(0)
    ids = torch.tensor([[1]])
    out: list[int] = []
    for _ in range(60):
        scores = processor(ids, torch.randn(1, len(tokenizer)))
        token = int(scores.argmax())
        if token == tokenizer.eos_token_id:
            break
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    parsed = parse_reply(tokenizer.decode(out), BINDING, "stop")
    assert len(parsed.tool_calls) == 1 and set(parsed.tool_calls[0]["args"]) == {"a", "b"}
    assert all(isinstance(v, int) for v in parsed.tool_calls[0]["args"].values())


@pytest.fixture()
def tiny_llm(tmp_path, tiny_loaded) -> EditableLLM:
    return EditableLLM.open(tmp_path / "store", model=tiny_loaded, strategy="context")


def test_memory_tools_write_with_agent_provenance_and_typed_schemas(tiny_llm):
    tools = {t.name: t for t in memory_tools(tiny_llm, agent="scout", source_uri="tool:news")}
    assert set(tools) == {"remember_fact", "forget_fact", "search_facts", "explain_answer"}
    assert list(tools["remember_fact"].args) == ["question", "answer"]
    assert tools["search_facts"].args["k"]["type"] == "integer"
    report = tools["remember_fact"].invoke({"question": "Who is the CEO of Intel?", "answer": "Lip-Bu Tan"})
    assert report["subject"] == "Intel"
    (fact_id,) = report["added"]
    stored = tiny_llm.memory.get(fact_id)
    assert stored.fact.provenance.source == "agent" and stored.fact.provenance.author == "scout"
    assert stored.fact.provenance.source_uri == "tool:news"
    assert [e.actor for e in tiny_llm.history("Intel")] == ["agent:scout"]
    hits = tools["search_facts"].invoke({"query": "Intel CEO", "k": 3})
    assert hits[0]["id"] == fact_id and hits[0]["author"] == "scout"
    explained = tools["explain_answer"].invoke({"question": "Who is the CEO of Intel?"})
    assert [f["id"] for f in explained["facts"]] == [fact_id]
    retracted = tools["forget_fact"].invoke({"fact_id": fact_id[:10], "reason": "test"})
    assert retracted[0]["status"] == "retracted" and tiny_llm.facts() == []
    with pytest.raises(Exception, match="answer"):
        tools["remember_fact"].invoke({"question": "Who is the CEO of Intel?"})  # typed schema: answer is required


@pytest.mark.parametrize("question, answer, subject", [
    ("Who is the CEO of Intel?", "Lip-Bu Tan", "Intel"),
    ("Who owns Twitter?", "X Corp.", "Twitter"),
    ("What is the capital of the United Kingdom?", "London", "United Kingdom"),
    ("Which club does Lionel Messi play for?", "Inter Miami", "Lionel Messi"),
])
def test_guess_subject(question, answer, subject):
    from editmem.integrations.langchain.tools import guess_subject

    assert guess_subject(question, answer) == subject


def test_guess_subject_refuses_when_nothing_is_named():
    from editmem.integrations.langchain.tools import guess_subject

    with pytest.raises(ValueError, match="cannot tell"):
        guess_subject("what is it?", "a thing")


def test_fact_editor_as_tool_has_typed_arguments(tiny_llm):
    tool = FactEditor(llm=tiny_llm, actor="chain").as_tool(name="store_fact", description="Store a fact.")
    assert {"subject", "prompt", "target"} <= set(tool.args)
    report = tool.invoke({"subject": "Twitter", "prompt": "Twitter is owned by", "target": "X Corp."})
    assert len(report["added"]) == 1 and tiny_llm.history("Twitter")[0].actor == "chain"


def test_retriever_returns_facts_as_documents(tiny_llm):
    tiny_llm.edit([{"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"},
                   {"subject": "Paris", "prompt": "Paris is the capital of", "target": "France"}])
    docs = EditMemRetriever(llm=tiny_llm, k=1).invoke("the chief executive of Intel")
    assert len(docs) == 1 and docs[0].page_content == "Who is the CEO of Intel? Lip-Bu Tan"
    assert docs[0].metadata["subject"] == "Intel" and 0 < docs[0].metadata["score"] <= 1
    assert EditMemRetriever(llm=tiny_llm, k=2, min_score=0.99).invoke("unrelated words") == []
