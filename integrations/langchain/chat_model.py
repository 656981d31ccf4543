"""``EditMemChatModel``: a LangChain chat model backed by an :class:`~editmem.EditableLLM`.

| override | why |
| --- | --- |
| ``_generate`` / ``_stream`` / ``_astream`` | one path (``EditableLLM.stream``): invoke and stream give the same answer |
| ``bind_tools`` / ``with_structured_output`` | tools in the system prompt, calls made well-formed by llguidance |
| ``batch`` / ``abatch`` | one batched ``EditableLLM.generate`` call when the options allow (see :mod:`.batching`) |
| ``_get_llm_string`` | the cache key carries the store's edit state: no cache serves a pre-edit answer |
| ``_get_ls_params`` | ``ls_model_name`` and the standard parameters for tracing |

Options are honoured or rejected: ``max_tokens``, ``temperature``, ``stop`` and ``timeout`` reach generation, and
any other call option raises ``TypeError`` naming it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, ConfigDict, Field, field_validator

from editmem.streaming import StreamResult

from .constrained import GrammarLogitsProcessor, json_grammar, tool_call_grammar
from .messages import to_chat_messages
from .routing import Policy, Routing, route, routing_metadata
from .tool_format import ParsedReply, ToolBinding, ToolLike, ToolSpec, normalise_choice, parse_reply, to_spec

#: call options ``_generate`` understands; anything else is rejected
_OPTIONS = {"tools", "tool_choice", "response_format", "max_tokens", "temperature", "timeout", "model"}


class CallOptions(BaseModel):
    """The options of one call after merging the model's fields with per-call overrides."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    max_tokens: int
    temperature: float | None
    stop: list[str]
    timeout: float | None
    tools: ToolBinding | None = None
    response_format: dict[str, Any] | None = None
    """``{"type": "json_schema", "schema": {...}}`` or ``{"type": "json_object"}`` (structured output)."""
    calls: ToolBinding | None = None
    """The tools generation may call after routing (None: a text answer); ``tools`` is what the prompt shows."""
    routing: Routing | None = None


class EditMemChatModel(BaseChatModel):
    """A chat model whose knowledge is the edited model's (provenance of every answer in its metadata).

    ``response_metadata`` has ``model_name``, ``finish_reason``, ``edit_trace`` (the stored facts that fired, with
    scores) and ``edit_state`` (the store's ledger sequence when answering); ``usage_metadata`` counts tokens.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, extra="forbid")

    llm: Any = Field(exclude=True)
    """The :class:`~editmem.EditableLLM` to answer with."""
    max_tokens: int = Field(default=64, alias="max_new_tokens", ge=1)
    """Most tokens generated per answer (``max_new_tokens`` is accepted as an alias)."""
    temperature: float | None = Field(default=None, ge=0)
    """None or 0: greedy, deterministic answers; > 0: sampling at that temperature."""
    stop: list[str] | None = None
    """Stop sequences: the answer ends before the first one (never included)."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds one generation may take; past it the call raises ``TimeoutError``."""
    streaming: bool = False
    """Route ``invoke`` through token streaming (callbacks get ``on_llm_new_token``)."""
    auto_tools: Policy = "router"
    """Who decides call-or-text under ``tool_choice="auto"``: ``router`` (embedding relevance of the user turn to
    each tool, text after a tool result; see :mod:`.routing`) or ``model`` (the model alone)."""
    router_threshold: float = Field(default=0.3, ge=-1, le=1)
    """Cosine similarity a tool needs to the user turn for the router to offer it."""
    max_string_length: int | None = Field(default=None, ge=1)
    """Cap (characters) on free JSON strings in tool arguments and structured output (None: no cap). A small
    model can repeat itself inside a string until ``max_tokens`` runs out; a cap ends the string instead. Not
    applied in JSON mode (no schema: see :func:`.constrained.json_grammar`)."""

    @field_validator("llm")
    @classmethod
    def _is_editable(cls, value: Any) -> Any:
        if not (hasattr(value, "stream") and hasattr(value, "generate") and hasattr(value, "memory")):
            raise TypeError(f"llm must be an editmem.EditableLLM, got {type(value).__name__}")
        return value

    # -- identity --------------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "editmem"

    @property
    def model_name(self) -> str:
        """The wrapped model's name (``ls_model_name`` and ``response_metadata['model_name']``)."""
        return self.llm.loaded.name

    def edit_state(self) -> int:
        """The store's ledger sequence: it grows with every add, supersede and retract."""
        return len(self.llm.memory.ledger)

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "fingerprint": self.llm.loaded.fingerprint,
            "strategy": self.llm.strategy.name,
            "store": str(self.llm.memory.path),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def _get_llm_string(self, stop: list[str] | None = None, **kwargs: Any) -> str:
        """The cache key: LangChain's, plus the edit state, so an edit or a forget invalidates cached answers."""
        return super()._get_llm_string(stop=stop, **kwargs) + f"---edit_state={self.edit_state()}"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="editmem", ls_model_name=kwargs.get("model") or self.model_name,
                                 ls_model_type="chat", ls_max_tokens=kwargs.get("max_tokens", self.max_tokens))
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # -- options -----------------------------------------------------------------------------------
    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> CallOptions:
        unknown = sorted(set(kwargs) - _OPTIONS)
        if unknown:
            raise TypeError(f"EditMemChatModel does not support the option(s) {', '.join(unknown)} "
                            f"(supported: {', '.join(sorted(_OPTIONS))})")
        if kwargs.get("model") not in (None, self.model_name):
            raise ValueError(f"model={kwargs['model']!r}: this chat model serves only {self.model_name!r}")
        tools = None
        if kwargs.get("tools"):
            specs = [ToolSpec(**t) for t in kwargs["tools"]]
            tools = ToolBinding(tools=specs, choice=normalise_choice(kwargs.get("tool_choice"), [t.name for t in specs]))
        elif kwargs.get("tool_choice") not in (None, "auto", "none"):
            raise ValueError("tool_choice given but no tools are bound (use bind_tools)")
        return CallOptions(
            max_tokens=kwargs.get("max_tokens", self.max_tokens),
            temperature=kwargs.get("temperature", self.temperature),
            stop=list(stop if stop is not None else self.stop or []),
            timeout=kwargs.get("timeout", self.timeout),
            tools=tools,
            response_format=kwargs.get("response_format"),
        )

    def _prompt(self, messages: list[BaseMessage], opts: CallOptions) -> list[dict[str, str]]:
        chat = to_chat_messages(messages, opts.tools)
        if opts.response_format is not None:
            schema = opts.response_format.get("schema")
            note = ("Reply with one JSON object matching this JSON schema:\n" + json.dumps(schema, ensure_ascii=False)
                    if schema else "Reply with one JSON object.")
            if chat and chat[0]["role"] == "system":
                chat[0] = {"role": "system", "content": chat[0]["content"] + "\n\n" + note}
            else:
                chat.insert(0, {"role": "system", "content": note})
        return chat

    def _processor(self, opts: CallOptions) -> GrammarLogitsProcessor | None:
        tokenizer = self.llm.tokenizer
        if opts.response_format is not None:
            return GrammarLogitsProcessor(tokenizer, json_grammar(opts.response_format.get("schema"), self.max_string_length))
        if opts.calls is not None:
            chosen = [t.model_dump() for t in opts.calls.chosen()]
            grammar = tool_call_grammar(chosen, required=opts.calls.choice != "auto", max_string_length=self.max_string_length)
            return GrammarLogitsProcessor(tokenizer, grammar)
        return None

    def _pieces(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]):
        """(options, the iterator of ``EditableLLM.stream``) for one call."""
        from transformers import LogitsProcessorList

        opts = self._options(stop, kwargs)
        if opts.tools is not None and opts.tools.choice == "auto":
            opts.calls, opts.routing = route(messages, opts.tools, policy=self.auto_tools, threshold=self.router_threshold)
        elif opts.tools is not None and opts.tools.choice != "none":
            opts.calls = opts.tools
        extra: dict[str, Any] = {}
        processor = self._processor(opts)
        if processor is not None:
            extra["logits_processor"] = LogitsProcessorList([processor])
        it = self.llm.stream(self._prompt(messages, opts), max_new_tokens=opts.max_tokens, temperature=opts.temperature,
                             stop=opts.stop, timeout=opts.timeout, **extra)
        return opts, it

    def _metadata(self, result: StreamResult, parsed: ParsedReply, opts: CallOptions) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_provider": "editmem",
            "finish_reason": parsed.finish_reason,
            "edit_trace": result.trace.model_dump() if result.trace is not None else None,
            "edit_state": self.edit_state(),
            **routing_metadata(opts.routing),
        }

    @staticmethod
    def _usage(result: StreamResult) -> UsageMetadata:
        return UsageMetadata(input_tokens=result.input_tokens, output_tokens=result.output_tokens,
                             total_tokens=result.input_tokens + result.output_tokens)

    # -- generation --------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        opts, it = self._pieces(messages, stop, kwargs)
        result = next(item for item in it if isinstance(item, StreamResult))
        parsed = parse_reply(result.text, opts.calls or opts.tools, result.finish_reason)
        message = AIMessage(content=parsed.content, tool_calls=parsed.tool_calls,
                            invalid_tool_calls=parsed.invalid_tool_calls, usage_metadata=self._usage(result),
                            response_metadata=self._metadata(result, parsed, opts))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Text streams token by token; a tool call is held back and arrives whole in the last chunk."""
        opts, it = self._pieces(messages, stop, kwargs)
        holding = False  # a tool call is being generated (with tools bound, text cannot start with "<")
        result: StreamResult | None = None
        for item in it:
            if isinstance(item, StreamResult):
                result = item
                break
            if opts.calls is not None and not holding and item.lstrip().startswith("<"):
                holding = True
            if holding:
                continue
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=item))
            if run_manager:
                run_manager.on_llm_new_token(item, chunk=chunk)
            yield chunk
        assert result is not None  # EditableLLM.stream always ends with its StreamResult
        yield self._last_chunk(result, opts, holding)

    def _last_chunk(self, result: StreamResult, opts: CallOptions, held: bool) -> ChatGenerationChunk:
        parsed = parse_reply(result.text, opts.calls or opts.tools, result.finish_reason)
        chunks = [{"name": c["name"], "args": json.dumps(c["args"], ensure_ascii=False), "id": c["id"], "index": i,
                   "type": "tool_call_chunk"} for i, c in enumerate(parsed.tool_calls)]
        # an invalid call's raw text is JSON-quoted so LangChain's partial-JSON parser cannot mistake it for args
        chunks += [{"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": len(chunks) + i,
                    "type": "tool_call_chunk"} for i, c in enumerate(parsed.invalid_tool_calls)]
        metadata = self._metadata(result, parsed, opts)
        if parsed.invalid_tool_calls:
            metadata["invalid_tool_call_errors"] = {c["id"]: c["error"] for c in parsed.invalid_tool_calls}
        message = AIMessageChunk(content=parsed.content if held else "", tool_call_chunks=chunks,
                                 usage_metadata=self._usage(result), response_metadata=metadata, chunk_position="last")
        return ChatGenerationChunk(message=message)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """The sync stream, each step awaited in a worker thread so the event loop stays free."""
        iterator = self._stream(messages, stop, None, **kwargs)
        done = object()
        loop = asyncio.get_running_loop()
        while (chunk := await loop.run_in_executor(None, next, iterator, done)) is not done:
            if run_manager and chunk.message.content:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    # -- tools and structured output ---------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[ToolLike],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (any LangChain form). ``tool_choice``: None/``auto`` (the model decides), ``any``/``required``
        (it must call one), a tool name (it must call that one), ``none`` (tools hidden)."""
        specs: list[ToolSpec] = []
        for spec in map(to_spec, tools):
            same = [s for s in specs if s.name == spec.name]
            if same and same[0] != spec:
                raise ValueError(f"two different tools are named {spec.name!r}")
            if not same:  # the same tool given twice (e.g. a pydantic class and its JSON schema) is bound once
                specs.append(spec)
        names = [s.name for s in specs]
        choice = normalise_choice(tool_choice, names)
        return self.bind(tools=[s.model_dump() for s in specs], tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | BaseModel]:
        """Answers as ``schema`` (pydantic class, TypedDict or JSON schema), constrained so they always parse.

        ``function_calling``: a forced call of a tool shaped like the schema; ``json_schema``: the reply is one JSON
        object matching it; ``json_mode``: any JSON object (the schema only picks the parser). Decoding is always
        constrained, so ``strict`` changes nothing and is accepted for compatibility.
        """
        from .structured import structured_runnable

        if kwargs:
            raise TypeError(f"unsupported arguments: {', '.join(sorted(kwargs))}")
        return structured_runnable(self, schema, method=method, include_raw=include_raw, strict=strict)

    # -- batching ----------------------------------------------------------------------------------
    def batch(self, inputs: list[LanguageModelInput], config: RunnableConfig | list[RunnableConfig] | None = None,
              *, return_exceptions: bool = False, **kwargs: Any) -> list[AIMessage]:
        """One batched ``EditableLLM.generate`` call when the options allow it, else LangChain's thread pool."""
        from .batching import batched, can_batch

        if not inputs:
            return []
        if can_batch(self, kwargs):
            return batched(self, inputs, config, return_exceptions=return_exceptions)
        return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(self, inputs: list[LanguageModelInput], config: RunnableConfig | list[RunnableConfig] | None = None,
                     *, return_exceptions: bool = False, **kwargs: Any) -> list[AIMessage]:
        """:meth:`batch` in a worker thread (one batched call), or LangChain's ``abatch``."""
        from .batching import can_batch

        if inputs and can_batch(self, kwargs):
            return await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.batch(inputs, config, return_exceptions=return_exceptions, **kwargs))
        return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
