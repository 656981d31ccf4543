"""LangChain messages -> the ``[{"role", "content"}]`` list a chat template takes, losing nothing silently.

Text parts are joined; tool calls on an ``AIMessage`` and ``ToolMessage`` results are rendered in the format of
:mod:`.tool_format` (ids kept); parts a text-only model cannot read (images, audio, video, files) raise
:class:`UnsupportedContentError` instead of vanishing. Provider keys on a part (Anthropic's ``cache_control``) are
ignored. Reasoning parts of an earlier ``AIMessage`` (``thinking``, ``redacted_thinking``, ``reasoning``: another
model's private reasoning, which this model never writes) are not rendered, as reasoning models' own chat templates
and Anthropic's API drop earlier turns' reasoning; on any other message they raise.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from .tool_format import ToolBinding, render_call, render_response, system_prompt

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "chat": "user"}
#: content parts that stand for a tool call already carried by ``AIMessage.tool_calls``
_CALL_PARTS = {"tool_use", "tool_call", "function_call"}
_MEDIA_PARTS = {"image", "image_url", "audio", "input_audio", "video", "file", "document"}
#: an earlier assistant turn's reasoning: not shown to the model again
_REASONING_PARTS = {"thinking", "redacted_thinking", "reasoning"}


class UnsupportedContentError(ValueError):
    """A message part this text-only model cannot read (named, with its message index)."""


def _text(message: BaseMessage, index: int) -> str:
    if isinstance(message.content, str):
        return message.content
    pieces = []
    for part in message.content:
        if isinstance(part, str):
            pieces.append(part)
            continue
        kind = part.get("type")
        if kind == "text":
            pieces.append(part.get("text", ""))
        elif kind in _CALL_PARTS and isinstance(message, AIMessage):
            continue  # rendered from message.tool_calls
        elif kind in _REASONING_PARTS and isinstance(message, AIMessage):
            continue
        elif kind in _MEDIA_PARTS:
            raise UnsupportedContentError(
                f"message {index} ({message.type}) has a {kind!r} part: the model is text-only and cannot read it")
        else:
            raise UnsupportedContentError(f"message {index} ({message.type}) has an unsupported content part {kind!r}")
    return "\n".join(p for p in pieces if p)


def to_chat_messages(messages: list[BaseMessage], tools: ToolBinding | None = None) -> list[dict[str, str]]:
    """Render ``messages`` (and the tool section, when tools are bound) for the chat template."""
    out: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        role = _ROLES.get(message.type)
        if role is None:
            raise UnsupportedContentError(f"message {index} has unsupported type {message.type!r}")
        content = _text(message, index)
        if isinstance(message, AIMessage) and message.tool_calls:
            content = "\n".join([content] * bool(content) + [render_call(c) for c in message.tool_calls])
        if isinstance(message, ToolMessage):
            content = render_response(content, tool_call_id=message.tool_call_id, name=message.name, status=message.status)
        out.append({"role": role, "content": content})
    if tools is not None and tools.choice != "none":
        section = system_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + section}
        else:
            out.insert(0, {"role": "system", "content": section})
    return out


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The latest user turn (what retrieval-gated strategies route on)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
