"""Agent tools over the edit memory, and ``FactEditor`` (a Runnable that writes facts).

:func:`memory_tools` gives an agent four typed tools: ``remember_fact`` (store and apply a fact, with provenance
naming the agent), ``forget_fact`` (retract one), ``search_facts`` (semantic search over stored facts) and
``explain_answer`` (the answer with and without edits, and the facts behind it). Every write is recorded in the
ledger with the actor ``agent:<name>``, and the fact's provenance says ``source="agent"``, ``author=<name>``.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from editmem.facts import Fact, Provenance


class FactInput(BaseModel):
    """One fact to store: the question (or cloze sentence) about ``subject`` and its current answer."""

    subject: str = Field(description="The entity the fact is about, exactly as it appears in the prompt.")
    prompt: str = Field(description="A question or sentence about the subject that the target answers.")
    target: str = Field(description="The current, correct answer.")
    source_uri: str | None = Field(default=None, description="Where the fact was learned (URL, document, tool name).")


class RememberInput(BaseModel):
    """A fact for an agent to store: a question and its current answer (the subject is found in the question).

    No subject argument: measured on SmolLM2-135M, asked for one in any position it named the answer or the whole
    sentence; :func:`guess_subject` takes it from the question instead.
    """

    question: str = Field(description="The question this fact answers.")
    answer: str = Field(description="The current, correct answer to the question.")


class ForgetInput(BaseModel):
    """Which fact to retract, and why."""

    fact_id: str = Field(description="The id of a stored fact (as search_facts returns it; a unique prefix works).")
    reason: str | None = Field(default=None, description="Why the fact is retracted.")


class SearchInput(BaseModel):
    """A semantic search over the stored facts."""

    query: str = Field(description="What to look for, e.g. 'CEO of Intel'.")
    k: int = Field(default=5, ge=1, le=50, description="How many facts to return at most.")


class ExplainInput(BaseModel):
    """A question to answer with and without the edits."""

    question: str = Field(description="The question to explain, e.g. 'Who is the CEO of Intel?'.")


def guess_subject(question: str, answer: str) -> str:
    """The entity a question asks about: its last run of capitalised words (not the first word, not in the answer).

    "Who is the CEO of Intel?" -> "Intel"; "Who owns Twitter?" -> "Twitter". Raises ``ValueError`` when there is none.
    """
    words = re.findall(r"[\w][\w.&'-]*", question)
    runs: list[list[str]] = []
    for i, word in enumerate(words):
        capital = word[0].isupper() and i > 0 and word not in answer and not word.isupper()
        if capital and runs and runs[-1] and words[i - 1] == runs[-1][-1]:
            runs[-1].append(word)
        elif capital:
            runs.append([word])
    if not runs:
        raise ValueError(f"cannot tell what {question!r} is about: store it with FactEditor and an explicit subject")
    return " ".join(runs[-1])


def _fact(args: FactInput, agent: str) -> Fact:
    provenance = Provenance(source="agent", author=agent, source_uri=args.source_uri)
    return Fact(subject=args.subject, prompt=args.prompt, target=args.target, provenance=provenance)


def _stored(stored: Any, score: float | None = None) -> dict[str, Any]:
    fact = stored.fact
    out = {"id": stored.id, "subject": fact.subject, "prompt": fact.prompt, "target": fact.target,
           "status": stored.status.value, "source": fact.provenance.source, "author": fact.provenance.author,
           "source_uri": fact.provenance.source_uri}
    if score is not None:
        out["score"] = round(score, 4)
    return out


def memory_tools(llm: Any, *, agent: str = "agent", source_uri: str | None = None) -> list[BaseTool]:
    """The four memory tools for an agent named ``agent`` (provenance and ledger actor name it; ``source_uri``, when
    given, is recorded on every fact the agent stores, e.g. the conversation or the feed it works from)."""
    actor = f"agent:{agent}"

    def remember_fact(question: str, answer: str) -> dict[str, Any]:
        subject = guess_subject(question, answer)
        fact = _fact(FactInput(subject=subject, prompt=question, target=answer, source_uri=source_uri), agent)
        return {**llm.edit(fact, actor=actor).model_dump(), "subject": subject}

    def forget_fact(fact_id: str, reason: str | None = None) -> list[dict[str, Any]]:
        return [_stored(s) for s in llm.forget(fact_id, actor=actor, reason=reason)]

    def search_facts(query: str, k: int = 5) -> list[dict[str, Any]]:
        return [_stored(s, score) for s, score in llm.memory.search(query, k=k)]

    def explain_answer(question: str) -> dict[str, Any]:
        explanation = llm.explain(question)
        return {"answer": explanation.answer, "base_answer": explanation.base_answer, "facts": explanation.facts}

    specs = [
        (remember_fact, RememberInput, "Store a new or corrected fact in the model's memory and edit the model with it."),
        (forget_fact, ForgetInput, "Retract a stored fact: the model stops using it (the ledger keeps its history)."),
        (search_facts, SearchInput, "Find stored facts related to a query, with their ids, answers and sources."),
        (explain_answer, ExplainInput, "Answer a question with and without the stored facts, and list the facts used."),
    ]
    return [StructuredTool.from_function(func=f, name=f.__name__, description=d, args_schema=s) for f, s, d in specs]


class FactEditor(RunnableSerializable[Any, dict]):
    """A Runnable that stores and applies facts: input is a fact dict, a :class:`~editmem.Fact`, or a list of them.

    Returns the :class:`~editmem.EditReport` as a dict (``added``, ``duplicates``, ``superseded``). Its input schema
    is :class:`FactInput`, so ``FactEditor(llm=llm).as_tool()`` is a tool with typed arguments; dict input may also
    carry any other :class:`~editmem.Fact` field.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Any = Field(exclude=True)
    actor: str = "langchain"
    """The ledger actor of every write."""

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return FactInput

    @property
    def InputType(self) -> type:  # noqa: N802 (LangChain's name)
        return FactInput

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict:
        def write(facts: Any) -> dict:
            if isinstance(facts, FactInput):
                facts = facts.model_dump(exclude_none=True)
            if isinstance(facts, dict) and "source_uri" in facts:
                facts = dict(facts)
                uri = facts.pop("source_uri")
                if uri is not None:
                    facts["provenance"] = {**(facts.get("provenance") or {}), "source_uri": uri}
            return self.llm.edit(facts, actor=self.actor).model_dump()

        return self._call_with_config(write, input, config)
