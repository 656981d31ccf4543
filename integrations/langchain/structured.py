"""``with_structured_output`` for :class:`EditMemChatModel`: the same constrained decoding as tool calls.

Each method binds what generation needs and picks LangChain's matching parser:

* ``function_calling``: ``bind_tools([schema], tool_choice=<its name>)``; the tool-call parser reads the arguments.
* ``json_schema``: ``response_format={"type": "json_schema", "schema": ...}``; the reply is JSON text.
* ``json_mode``: ``response_format={"type": "json_object"}``; any JSON object (the schema is not enforced, and not
  shown to the model: say in the prompt which keys you want), parsed as ``schema`` if it is a class.

The JSON parsers are strict on the final answer: a reply that is not one complete JSON value (cut off by
``max_tokens``) raises ``OutputParserException`` (``parsing_error`` with ``include_raw=True``) instead of being
closed by LangChain's partial-JSON repair into an object with a truncated string. Streams still yield the partial
objects parsed so far.

``ls_structured_output_format`` is bound too, so tracing callbacks see the schema as for any chat model.
"""

from __future__ import annotations

import json
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from langchain_core.exceptions import OutputParserException
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

if TYPE_CHECKING:
    from .chat_model import EditMemChatModel

METHODS = ("function_calling", "json_schema", "json_mode")


class _Complete:
    """Mixin for LangChain's JSON parsers: the final (non-partial) parse needs one complete JSON value."""

    def parse_result(self, result: list[Any], *, partial: bool = False) -> Any:
        if not partial:
            text = result[0].text.strip()
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                message = getattr(result[0], "message", None)
                finish = (message.response_metadata.get("finish_reason") if message is not None else None)
                raise OutputParserException(f"the reply is not one complete JSON value (finish_reason={finish!r}): "
                                            f"{exc}", llm_output=text) from exc
        return super().parse_result(result, partial=partial)  # type: ignore[misc]


class CompleteJsonOutputParser(_Complete, JsonOutputParser):
    """``JsonOutputParser`` that refuses a cut-off reply on the final parse."""


class CompletePydanticOutputParser(_Complete, PydanticOutputParser):
    """``PydanticOutputParser`` that refuses a cut-off reply on the final parse."""


def structured_runnable(model: "EditMemChatModel", schema: Any, *, method: str, include_raw: bool,
                        strict: bool | None) -> Runnable:
    """The runnable ``model.with_structured_output(schema, method=...)`` returns."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {', '.join(METHODS)}")
    if schema is None and method != "json_mode":
        raise ValueError(f"method={method!r} needs a schema")
    is_class = isinstance(schema, type) and is_basemodel_subclass(schema)
    trace = {"ls_structured_output_format": {"kwargs": {"method": method, "strict": strict}, "schema": schema}}
    if method == "function_calling":
        name = convert_to_openai_tool(schema)["function"]["name"]
        llm = model.bind_tools([schema], tool_choice=name, **trace)
        parser: Runnable = (PydanticToolsParser(tools=[schema], first_tool_only=True) if is_class
                            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
    else:
        if method == "json_schema":
            response_format = {"type": "json_schema", "schema": convert_to_json_schema(schema)}
        else:
            response_format = {"type": "json_object"}
        llm = model.bind(response_format=response_format, **trace)
        parser = CompletePydanticOutputParser(pydantic_object=schema) if is_class else CompleteJsonOutputParser()
    if not include_raw:
        return llm | parser
    parse = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    fallback = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parse.with_fallbacks([fallback], exception_key="parsing_error")
