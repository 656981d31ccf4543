"""editmem: keep an LLM's knowledge current by editing the model.

>>> from editmem import EditableLLM
>>> llm = EditableLLM.open("./store")                     # embedded SmolLM2-135M-Instruct, `context` strategy
>>> llm.edit({"subject": "Twitter", "prompt": "Twitter is owned by", "target": "X Corp."})
>>> llm.generate("Who owns Twitter?").text
"""

from editmem.editable import EditableLLM, EditReport, Explanation, Generation
from editmem.facts import Fact, FactStatus, FactValidationError, Provenance, StoredFact
from editmem.memory import EditMemory, FactNotFoundError, StoreMismatchError
from editmem.models import DEFAULT_MODEL, ModelNotAvailableError, load_model
from editmem.strategies import available_strategies, get_strategy, register_strategy

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "EditMemory",
    "EditReport",
    "EditableLLM",
    "Explanation",
    "Fact",
    "FactNotFoundError",
    "FactStatus",
    "FactValidationError",
    "Generation",
    "ModelNotAvailableError",
    "Provenance",
    "StoreMismatchError",
    "StoredFact",
    "available_strategies",
    "get_strategy",
    "load_model",
    "register_strategy",
]
