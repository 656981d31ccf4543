"""LangChain integration: an editable chat model, tools for agents, a Runnable that writes facts, a retriever.

>>> from editmem import EditableLLM
>>> from editmem.integrations.langchain import EditMemChatModel, FactEditor, memory_tools
>>> llm = EditableLLM.open("./store")
>>> chat = EditMemChatModel(llm=llm, max_tokens=48)
>>> chat.invoke("Who is the CEO of Intel?").response_metadata["edit_trace"]   # which edits fired
>>> FactEditor(llm=llm).invoke({"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"})
>>> chat.bind_tools(memory_tools(llm, agent="helper"))                        # remember / forget / search / explain

Modules: :mod:`.chat_model` (the chat model), :mod:`.messages` (message rendering), :mod:`.tool_format` (the tool
prompt format and reply parsing), :mod:`.constrained` (llguidance decoding), :mod:`.structured`
(``with_structured_output``), :mod:`.batching` (batched ``batch``), :mod:`.tools` and :mod:`.retriever`.
"""

from .chat_model import EditMemChatModel
from .constrained import ConstrainedDecodingError
from .messages import UnsupportedContentError, to_chat_messages
from .retriever import EditMemRetriever
from .tool_format import parse_reply
from .tools import FactEditor, FactInput, memory_tools

__all__ = [
    "ConstrainedDecodingError",
    "EditMemChatModel",
    "EditMemRetriever",
    "FactEditor",
    "FactInput",
    "UnsupportedContentError",
    "memory_tools",
    "parse_reply",
    "to_chat_messages",
]
