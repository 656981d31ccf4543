"""LangChain's standard conformance suites (langchain-tests, pinned) on the embedded model, tool calling on.

Configuration, and why:

* ``standard_chat_model_params`` drops ``api_key`` and ``max_retries``: a local model has no key and nothing to
  retry, and ``EditMemChatModel`` rejects unknown fields (``extra="forbid"``) instead of ignoring them.
* ``max_tokens=64`` and ``max_string_length=40``: room for a compact tool call or a short structured answer
  (strings capped so a repeating 135M model closes them); keeps the suite fast.
* The ``context`` strategy (no training) with one stored fact, so every answer goes through a real edit memory.

Declared on: tool calling with ``tool_choice``, structured output, JSON mode (``with_structured_output(...,
method="json_mode")``: llguidance-constrained to any JSON object, parsed with the schema) and Anthropic-format
inputs (``tool_use`` parts, ``cache_control`` keys, earlier ``thinking`` parts).

Skips are capabilities the model lacks, each named by the suite: image, audio and PDF inputs and tool messages (a
text-only model; such parts raise ``UnsupportedContentError``), model override (one ``EditableLLM`` serves one
model; another name raises), VCR HTTP recordings (there is no HTTP), serialisation (the model wraps a live
``EditableLLM``) and init-from-environment (no API key to read). docs/langchain.md lists them.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from editmem import EditableLLM
from editmem.integrations.langchain import EditMemChatModel

pytestmark = pytest.mark.embedded

FACT = {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"}


@pytest.fixture(scope="module")
def standard_llm(embedded, tmp_path_factory) -> EditableLLM:
    llm = EditableLLM.open(tmp_path_factory.mktemp("langchain-standard") / "store", model=embedded, strategy="context")
    llm.edit(FACT)
    return llm


class _Params:
    """Shared configuration of both suites."""

    _llm: EditableLLM | None = None

    @pytest.fixture(autouse=True)
    def _bind_llm(self, standard_llm: EditableLLM) -> None:
        type(self)._llm = standard_llm

    @property
    def chat_model_class(self) -> type[EditMemChatModel]:
        return EditMemChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"llm": self._llm}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = dict(super().standard_chat_model_params)  # type: ignore[misc]
        params.pop("api_key", None)
        params.pop("max_retries", None)
        params["max_tokens"] = 64
        params["max_string_length"] = 40
        return params

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_anthropic_inputs(self) -> bool:
        return True


class TestEditMemChatModelUnit(_Params, ChatModelUnitTests):
    pass


class TestEditMemChatModelIntegration(_Params, ChatModelIntegrationTests):
    pass


# The suites' async tests need pytest-asyncio (a langchain-tests dependency), which runs in strict mode here: mark
# exactly the coroutine tests (a module-wide mark would also land on the sync ones, with a warning each).
for _cls in (TestEditMemChatModelUnit, TestEditMemChatModelIntegration):
    for _name, _fn in inspect.getmembers(_cls, inspect.iscoroutinefunction):
        if _name.startswith("test_"):
            setattr(_cls, _name, pytest.mark.asyncio(_fn))
