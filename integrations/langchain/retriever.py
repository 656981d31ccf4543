"""A LangChain retriever over the edit memory: stored facts as ``Document``s, for chains that want them as context."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field


class EditMemRetriever(BaseRetriever):
    """Semantic search over the active facts of an :class:`~editmem.EditableLLM`'s store.

    Each document's text is ``"<prompt> <target>"``; its metadata has the fact ``id``, ``subject``, ``target``,
    the similarity ``score`` and the provenance (``source``, ``source_uri``, ``feed``, ``author``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Any = Field(exclude=True)
    """The :class:`~editmem.EditableLLM` whose memory is searched."""
    k: int = Field(default=4, ge=1)
    """Documents returned at most."""
    namespace: str | None = None
    """Only facts of this namespace (None: all)."""
    min_score: float = 0.0
    """Drop facts whose cosine similarity to the query is below this."""

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.llm.memory.search(query, k=self.k, namespace=self.namespace)
        docs = []
        for stored, score in hits:
            if score < self.min_score:
                continue
            fact, prov = stored.fact, stored.fact.provenance
            docs.append(Document(
                page_content=f"{fact.prompt} {fact.target}", id=stored.id,
                metadata={"id": stored.id, "subject": fact.subject, "target": fact.target, "score": score,
                          "namespace": fact.namespace, "source": prov.source, "source_uri": prov.source_uri,
                          "feed": prov.feed, "author": prov.author}))
        return docs
