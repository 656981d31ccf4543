"""How tools are shown to a chat model whose template has no tool support, and how its replies are read back.

The format (documented in ``docs/langchain.md``):

* **Tools** go into the system message, one JSON object per line (``name``, ``description``, ``parameters`` as a
  JSON schema), followed by the calling convention.
* **A call** is the whole reply ``<tool_call>{"name": "NAME", "arguments": {...}}</tool_call>``; constrained decoding
  (:mod:`.constrained`) makes every generated call well-formed. Calls already in the history are rendered the same
  way with their ``id`` added.
* **A tool result** is a ``tool`` turn ``<tool_response id="ID" name="NAME">CONTENT</tool_response>`` (with
  ``status="error"`` when the tool failed), so the model sees which call it answers.

:func:`parse_reply` turns a reply into content, ``tool_calls`` (ids, dict args) and ``invalid_tool_calls``: text
that looks like a call but does not parse, names an unknown tool or was cut off by ``max_tokens`` is kept there with
the reason, never dropped.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ConfigDict

from .constrained import CALL_CLOSE, CALL_OPEN

ToolLike = dict[str, Any] | type | Callable[..., Any] | BaseTool


class ToolSpec(BaseModel):
    """One bound tool as the model sees it."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    parameters: dict[str, Any]


class ToolBinding(BaseModel):
    """What ``bind_tools`` passes to each call: the tools and the choice (``auto``, ``required``, ``none`` or a name)."""

    tools: list[ToolSpec]
    choice: str = "auto"

    def chosen(self) -> list[ToolSpec]:
        """The tools a call may name under this choice."""
        if self.choice in ("auto", "required", "none"):
            return self.tools
        return [t for t in self.tools if t.name == self.choice]


def _untitled(schema: Any) -> Any:
    """``schema`` without its ``title`` annotations (pydantic adds them; they cost prompt tokens and say nothing)."""
    if isinstance(schema, list):
        return [_untitled(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: _untitled(sub) for name, sub in value.items()}
        else:
            out[key] = _untitled(value)
    return out


def to_spec(tool: ToolLike) -> ToolSpec:
    """Any LangChain tool form (BaseTool, function, pydantic class, TypedDict, OpenAI/Anthropic dict) -> ToolSpec."""
    function = convert_to_openai_tool(tool)["function"]
    parameters = _untitled(function.get("parameters") or {"type": "object", "properties": {}})
    return ToolSpec(name=function["name"], description=function.get("description", ""), parameters=parameters)


def normalise_choice(tool_choice: Any, names: Sequence[str]) -> str:
    """LangChain's tool_choice spellings -> ``auto`` | ``required`` | ``none`` | a tool name (unknown names raise)."""
    if tool_choice is None or tool_choice == "auto":
        return "auto"
    if tool_choice is True or tool_choice in ("any", "required"):
        return "required"
    if tool_choice is False or tool_choice == "none":
        return "none"
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if not name:
            raise ValueError(f"tool_choice dict names no tool: {tool_choice!r}")
        tool_choice = name
    if isinstance(tool_choice, str):
        if tool_choice not in names:
            raise ValueError(f"tool_choice={tool_choice!r} is not a bound tool (bound: {', '.join(names)})")
        return tool_choice
    raise TypeError(f"unsupported tool_choice {tool_choice!r}")


def system_prompt(binding: ToolBinding) -> str:
    """The tool section appended to the system message."""
    lines = ["You can call tools. Each line below is one tool: its name, description and JSON-schema parameters."]
    for tool in binding.chosen():
        lines.append(json.dumps({"name": tool.name, "description": tool.description, "parameters": tool.parameters},
                                ensure_ascii=False))
    lines.append(f'To call a tool, reply with only {CALL_OPEN}{{"name": "TOOL_NAME", "arguments": {{...}}}}{CALL_CLOSE}.')
    lines.append("A tool's result comes back as <tool_response>. Use it to answer the user.")
    if binding.choice == "required" or binding.choice not in ("auto", "none"):
        lines.append("You must call a tool now.")
    else:
        lines.append("If no tool is needed, answer in plain text.")
    return "\n".join(lines)


def render_call(call: ToolCall | dict[str, Any]) -> str:
    """A call already in the history, in the model's own format (with its id)."""
    body = {"name": call["name"], "arguments": call.get("args") or {}}
    if call.get("id"):
        body["id"] = call["id"]
    return CALL_OPEN + json.dumps(body, ensure_ascii=False) + CALL_CLOSE


def render_response(content: str, *, tool_call_id: str, name: str | None, status: str = "success") -> str:
    """A tool result, naming the call it answers."""
    attrs = f'id="{tool_call_id}"' + (f' name="{name}"' if name else "") + (' status="error"' if status == "error" else "")
    return f"<tool_response {attrs}>{content}</tool_response>"


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


_CALL_RE = re.compile(re.escape(CALL_OPEN) + r"(.*?)(" + re.escape(CALL_CLOSE) + r"|$)", re.S)


class ParsedReply(BaseModel):
    """A reply split into what LangChain's ``AIMessage`` carries."""

    content: str
    tool_calls: list[dict[str, Any]]
    invalid_tool_calls: list[dict[str, Any]]
    finish_reason: Literal["stop", "length", "tool_calls"]


def parse_reply(text: str, binding: ToolBinding | None, finish_reason: Literal["stop", "length"]) -> ParsedReply:
    """Split ``text`` into content and tool calls; anything call-like that does not parse is an invalid call."""
    if binding is None or CALL_OPEN not in text:
        return ParsedReply(content=text, tool_calls=[], invalid_tool_calls=[], finish_reason=finish_reason)
    names = {t.name for t in binding.chosen()}
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    for match in _CALL_RE.finditer(text):
        raw, closed = match.group(1), bool(match.group(2))
        call_id = new_call_id()
        error = None
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            body, error = None, ("cut off by max_tokens" if not closed and finish_reason == "length" else f"not JSON: {exc}")
        if body is not None:
            if not isinstance(body, dict) or not isinstance(body.get("arguments", {}), dict):
                error = "a call must be {\"name\": str, \"arguments\": object}"
            elif body.get("name") not in names:
                error = f"unknown tool {body.get('name')!r} (bound: {', '.join(sorted(names))})"
            elif not closed and finish_reason != "length":
                error = f"missing {CALL_CLOSE}"
            # a complete JSON call cut by max_tokens before its closing tag is still a whole call
        if error is None:
            calls.append(ToolCall(name=body["name"], args=body.get("arguments") or {}, id=call_id, type="tool_call"))
        else:
            name = body.get("name") if isinstance(body, dict) and isinstance(body.get("name"), str) else None
            invalid.append(InvalidToolCall(name=name, args=raw, id=call_id, error=error, type="invalid_tool_call"))
    content = _CALL_RE.sub("", text).strip()
    return ParsedReply(content=content, tool_calls=calls, invalid_tool_calls=invalid,
                       finish_reason="tool_calls" if calls else finish_reason)
