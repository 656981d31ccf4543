"""``EditMemChatModel.batch`` as one batched ``EditableLLM.generate`` call (issue #17).

LangChain's default ``batch`` runs ``invoke`` from a thread pool: on one shared model that is several generations
at once, which retrieval strategies with per-call routing state cannot take, and it is slower than one padded
batch. So when every row can be served by plain greedy generation (no tools, no structured output, no stop
sequences, no timeout, no sampling, no cache to consult), the rows go to ``EditableLLM.generate`` as one list;
otherwise ``batch`` falls back to LangChain's (each row then takes the streaming path, stop and timeout included).

Each row still gets its own callbacks run (``on_chat_model_start`` / ``on_llm_end`` / ``on_llm_error``) from its
own config. Token counts in this path are counted from the prompt text and the decoded answer (``generate``
returns text, not ids), so ``output_tokens`` excludes the end-of-sequence token; ``finish_reason`` is ``length``
when the answer used the whole budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.caches import BaseCache
from langchain_core.callbacks import CallbackManager
from langchain_core.globals import get_llm_cache
from langchain_core.messages import AIMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list

from .messages import to_chat_messages

if TYPE_CHECKING:
    from .chat_model import EditMemChatModel


def can_batch(model: "EditMemChatModel", kwargs: dict[str, Any]) -> bool:
    """True when one batched greedy ``generate`` call gives exactly what per-row ``invoke`` would."""
    if kwargs or model.stop or model.timeout or model.temperature or model.streaming or model.rate_limiter:
        return False
    uses_cache = isinstance(model.cache, BaseCache) or model.cache is True or (
        model.cache is None and get_llm_cache() is not None)
    return not uses_cache


def batched(model: "EditMemChatModel", inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None,
            *, return_exceptions: bool) -> list[AIMessage | Exception]:
    """Run ``inputs`` as one ``EditableLLM.generate`` call, with a callbacks run per row."""
    configs = get_config_list(config, len(inputs))
    message_lists = [model._convert_input(row).to_messages() for row in inputs]
    params = model._get_invocation_params(stop=None)
    managers = []
    for messages, cfg in zip(message_lists, configs):
        callback_manager = CallbackManager.configure(
            cfg.get("callbacks"), model.callbacks, model.verbose, cfg.get("tags"), model.tags,
            {**(cfg.get("metadata") or {}), **model._get_ls_params_with_defaults()}, model.metadata)
        managers.append(callback_manager.on_chat_model_start(
            model._serialized, [messages], invocation_params=params, options={"stop": None},
            name=cfg.get("run_name"), run_id=cfg.get("run_id"), batch_size=len(inputs))[0])
    try:
        prompts = [to_chat_messages(m) for m in message_lists]
        generations = model.llm.generate(prompts, max_new_tokens=model.max_tokens)
    except Exception as exc:
        for manager in managers:
            manager.on_llm_error(exc)
        if return_exceptions:
            return [exc for _ in inputs]
        raise
    tokenizer = model.llm.tokenizer
    special = not model.llm.chat
    out: list[AIMessage | Exception] = []
    state = model.edit_state()
    for manager, generation in zip(managers, generations):
        n_in = len(tokenizer(generation.prompt, add_special_tokens=special)["input_ids"])
        n_out = len(tokenizer(generation.text, add_special_tokens=False)["input_ids"])
        message = AIMessage(
            content=generation.text,
            usage_metadata=UsageMetadata(input_tokens=n_in, output_tokens=n_out, total_tokens=n_in + n_out),
            response_metadata={
                "model_name": model.model_name,
                "model_provider": "editmem",
                "finish_reason": "length" if n_out >= model.max_tokens else "stop",
                "edit_trace": generation.trace.model_dump() if generation.trace is not None else None,
                "edit_state": state,
            },
        )
        manager.on_llm_end(LLMResult(generations=[[ChatGeneration(message=message)]]))
        out.append(message)
    return out
