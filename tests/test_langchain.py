"""LangChain integration on a tiny model: Runnable protocol, provenance metadata, fact editing runnable."""

import asyncio

from langchain_core.messages import HumanMessage, SystemMessage

from editmem import EditableLLM
from editmem.integrations.langchain import EditMemChatModel, FactEditor, to_chat_messages

FACT = {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"}


def test_chat_model_runnable_protocol_and_edit_trace(tmp_path, tiny_loaded):
    llm = EditableLLM.open(tmp_path / "s", model=tiny_loaded, strategy="context")
    report = FactEditor(llm=llm).invoke(FACT)
    assert len(report["added"]) == 1
    chat = EditMemChatModel(llm=llm, max_new_tokens=3)
    hit = chat.invoke("Who is the CEO of Intel?")
    assert hit.response_metadata["edit_trace"]["fact_ids"] == report["added"]
    miss, again = chat.batch(["What colour is the sky?", "Who is the CEO of Intel?"])
    assert miss.response_metadata["edit_trace"]["fact_ids"] == []
    assert again.content == hit.content  # greedy: same prompt, same answer
    assert "".join(c.content for c in chat.stream("Who is the CEO of Intel?")) == hit.content
    assert asyncio.run(chat.ainvoke("Who is the CEO of Intel?")).content == hit.content


def test_message_conversion():
    assert to_chat_messages([SystemMessage("be brief"), HumanMessage("hi")]) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
