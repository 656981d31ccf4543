"""Who decides, under ``tool_choice="auto"``, whether a reply is a tool call or text.

Measured on the embedded SmolLM2-135M-Instruct with the tools in its system prompt: the probability that it
opens a call is under 2% even for "What is the weather in San Francisco, CA?" with a ``get_weather`` tool, and
higher (7%) right after a tool result, so a model-decided ``auto`` almost never calls a tool and, when it does,
loops. The ``router`` policy (default) therefore decides outside the model, in the usual agent-loop shape:

* after a tool result (the last message is a ``ToolMessage``) the model answers in text;
* otherwise the latest user turn is embedded (the store's MiniLM encoder) against each tool's name and
  description; tools scoring at least ``threshold`` are offered and the model *must* call one of them
  (constrained), choosing which and its arguments; none above the threshold: a text answer.

The ``model`` policy leaves it to the model (the grammar allows a call or text). Either way the decision and
the scores go into ``response_metadata["tool_routing"]``.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from pydantic import BaseModel

from .tool_format import ToolBinding

Policy = Literal["router", "model"]


class Routing(BaseModel):
    """The decision for one ``auto`` call."""

    policy: Policy
    decision: Literal["call", "text", "model"]
    scores: dict[str, float] = {}


def _describe(name: str, description: str) -> str:
    return f"{name.replace('_', ' ')}: {description}"


def route(messages: list[BaseMessage], binding: ToolBinding, *, policy: Policy, threshold: float
          ) -> tuple[ToolBinding | None, Routing]:
    """The binding to generate with (``required`` over the offered tools, or None for text) and the decision."""
    if policy == "model":
        return binding, Routing(policy=policy, decision="model")
    if messages and isinstance(messages[-1], ToolMessage):
        return None, Routing(policy=policy, decision="text")
    query = next((m.text for m in reversed(messages) if isinstance(m, HumanMessage)), "")
    if not query.strip():
        return None, Routing(policy=policy, decision="text")
    from editmem.memory.embedding import embed_texts

    tools = binding.chosen()
    vectors = embed_texts([query] + [_describe(t.name, t.description) for t in tools])
    sims = vectors[1:] @ vectors[0]
    scores = {t.name: round(float(s), 4) for t, s in zip(tools, sims)}
    offered = [t for t in tools if scores[t.name] >= threshold]
    if not offered:
        return None, Routing(policy=policy, decision="text", scores=scores)
    return ToolBinding(tools=offered, choice="required"), Routing(policy=policy, decision="call", scores=scores)


def routing_metadata(routing: Routing | None) -> dict[str, Any]:
    return {} if routing is None else {"tool_routing": routing.model_dump()}
