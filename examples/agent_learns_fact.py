"""An agent learns a fact from a tool result, stores it as an edit, and later answers from the edited model.

A LangGraph graph on the embedded SmolLM2-135M-Instruct (``context`` strategy by default):

1. ``research``: the model calls ``latest_news`` (constrained decoding makes the call well-formed);
2. the tool returns today's headline, which the model has never seen;
3. ``store``: the model calls ``remember_fact`` with the question and answer it read in the tool result; the fact
   is stored with provenance naming the agent (``source="agent"``, ``author="news-agent"``) and the model is edited;
4. a *new* conversation, with no history and no tools, asks the question: the answer comes from the edited model,
   and its ``edit_trace`` names the stored fact.

Each step is forced (``tool_choice`` names the tool) because a 135M model does not decide to call tools by itself;
the model still writes every argument. Run: ``python examples/agent_learns_fact.py [--store DIR]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from editmem import EditableLLM
from editmem.integrations.langchain import EditMemChatModel, memory_tools

AGENT = "news-agent"
QUESTION = "Who is the CEO of Intel?"
HEADLINE = {"company": "Intel", "question": QUESTION, "answer": "Lip-Bu Tan",
            "headline": "Intel names Lip-Bu Tan chief executive officer"}


@tool
def latest_news(company: str) -> str:
    """Look up today's news headline about a company."""
    return json.dumps(HEADLINE if company.casefold() == "intel" else {"company": company, "headline": "no news"})


def build_graph(chat: EditMemChatModel, remember: Any):
    """research -> news tool -> store -> memory tool -> end."""
    researcher = chat.bind_tools([latest_news], tool_choice="latest_news")
    archivist = chat.bind_tools([remember], tool_choice="remember_fact")

    def research(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [researcher.invoke(state["messages"])]}

    def store(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [archivist.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("research", research)
    graph.add_node("news", ToolNode([latest_news]))
    graph.add_node("store", store)
    graph.add_node("memory", ToolNode([remember]))
    graph.add_edge(START, "research")
    graph.add_edge("research", "news")
    graph.add_edge("news", "store")
    graph.add_edge("store", "memory")
    graph.add_edge("memory", END)
    return graph.compile()


def run(llm: EditableLLM) -> dict[str, Any]:
    """Run both conversations on ``llm``; returns what a reader (or a test) checks."""
    chat = EditMemChatModel(llm=llm, max_tokens=64, max_string_length=60)
    before = chat.invoke(QUESTION, max_tokens=16)
    tools = {t.name: t for t in memory_tools(llm, agent=AGENT, source_uri="tool:latest_news")}
    learned = build_graph(chat, tools["remember_fact"]).invoke(
        {"messages": [HumanMessage("Check the news about Intel and remember who its CEO is now.")]})
    calls = [c for m in learned["messages"] if isinstance(m, AIMessage) for c in m.tool_calls]
    stored = llm.facts()
    later = EditMemChatModel(llm=llm, max_tokens=24).invoke([HumanMessage(QUESTION)])  # a new conversation
    return {"before": before.content, "calls": calls, "facts": stored, "answer": later.content,
            "trace": later.response_metadata["edit_trace"], "history": llm.history(stored[0].fact.subject) if stored else []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="store folder (default: a temporary one)")
    args = parser.parse_args()
    store = args.store or tempfile.mkdtemp(prefix="editmem-agent-")
    with EditableLLM.open(store, strategy="context") as llm:
        out = run(llm)
    print("before the edit:", out["before"])
    for call in out["calls"]:
        print("tool call:", call["name"], call["args"])
    for stored in out["facts"]:
        prov = stored.fact.provenance
        print(f"stored {stored.id[:10]}: {stored.fact.prompt} -> {stored.fact.target} (by {prov.author}, {prov.source_uri})")
    print("new conversation:", out["answer"])
    print("edits that fired:", out["trace"]["fact_ids"])


if __name__ == "__main__":
    main()
