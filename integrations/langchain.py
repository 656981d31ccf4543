"""LangChain integration: an editable chat model (a Runnable) and a Runnable that writes facts.

>>> from editmem import EditableLLM
>>> from editmem.integrations.langchain import EditMemChatModel, FactEditor
>>> llm = EditableLLM.open("./store")
>>> chat = EditMemChatModel(llm=llm, max_new_tokens=48)
>>> chat.invoke("Who is the CEO of Intel?").response_metadata["edit_trace"]   # which edits fired
>>> FactEditor(llm=llm).invoke({"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"})

Everything a langchain-core ``BaseChatModel`` gets for free works: ``invoke``/``batch``/``stream``/``ainvoke``,
``with_config``, ``with_retry``, callbacks and tracing. ``batch`` runs rows one after another on the one model
(retrieval-gated strategies decide per prompt).
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict, Field

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def to_chat_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages -> the ``[{"role", "content"}]`` list chat templates take."""
    out = []
    for message in messages:
        content = message.content if isinstance(message.content, str) else " ".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in message.content
        )
        out.append({"role": _ROLES.get(message.type, "user"), "content": content})
    return out


class EditMemChatModel(BaseChatModel):
    """A chat model backed by an :class:`~editmem.EditableLLM` (edited knowledge, provenance in the metadata).

    ``response_metadata["edit_trace"]`` lists the stored facts that fired, with scores.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Any = Field(exclude=True)
    """The :class:`~editmem.EditableLLM` to answer with."""
    max_new_tokens: int = 64
    """Tokens generated per answer."""
    do_sample: bool = False
    """Greedy decoding by default (deterministic answers)."""
    temperature: float | None = None

    @property
    def _llm_type(self) -> str:
        return "editmem"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.llm.loaded.name,
            "fingerprint": self.llm.loaded.fingerprint,
            "strategy": self.llm.strategy.name,
            "max_new_tokens": self.max_new_tokens,
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        gen_kwargs: dict[str, Any] = {"do_sample": self.do_sample}
        if self.do_sample and self.temperature is not None:
            gen_kwargs["temperature"] = self.temperature
        if stop:
            gen_kwargs["stop_strings"] = stop
            gen_kwargs["tokenizer"] = self.llm.tokenizer
        result = self.llm.generate(to_chat_messages(messages), max_new_tokens=kwargs.pop("max_new_tokens", self.max_new_tokens), **gen_kwargs)
        text = result.text
        for s in stop or []:
            text = text.split(s)[0]
        trace = result.trace.model_dump() if result.trace is not None else None
        message = AIMessage(content=text, response_metadata={"model_name": self.llm.loaded.name, "edit_trace": trace})
        return ChatResult(generations=[ChatGeneration(message=message)])


class FactEditor(RunnableSerializable[Any, dict]):
    """A Runnable that stores and applies facts: input is a fact dict, a :class:`~editmem.Fact`, or a list of them.

    Returns the :class:`~editmem.EditReport` as a dict (``added``, ``duplicates``, ``superseded``). Useful as the
    last step of an extraction chain (LLM -> structured facts -> ``FactEditor``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Any = Field(exclude=True)
    actor: str = "langchain"

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict:
        return self._call_with_config(lambda facts: self.llm.edit(facts, actor=self.actor).model_dump(), input, config)
