"""Where a store's Chroma collection lives: a local ``PersistentClient`` folder or a Chroma server.

Local (default): ``<store>/chroma``. The database is created under the writer lock (two processes creating
it at once once crashed with ``table collections already exists``).

Server: ``chroma_url="http://127.0.0.1:8000"`` (or ``EDITMEM_CHROMA_URL``, or ``chroma_url`` in store.json). The
collection is named after the store's id, so one server can hold many stores. See docs/deployment.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

COLLECTION = "facts"


def chroma_url_from_env() -> str | None:
    return os.environ.get("EDITMEM_CHROMA_URL") or None


def collection_name(store_id: str | None, server: bool) -> str:
    """``facts`` in a local database; ``editmem-<store id>`` on a shared server."""
    return f"editmem-{store_id}" if server and store_id else COLLECTION


def open_collection(*, folder: Path, url: str | None, name: str, create: bool):
    """The facts collection, created when ``create`` (None when it does not exist and ``create`` is False)."""
    import chromadb
    from chromadb.config import Settings

    from editmem.memory.embedding import LocalMiniLMEmbedding

    settings = Settings(anonymized_telemetry=False, allow_reset=False)
    if url:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        client = chromadb.HttpClient(host=parsed.hostname or "127.0.0.1", port=parsed.port or 8000,
                                     ssl=parsed.scheme == "https", settings=settings)
    else:
        if not create and not (folder / "chroma.sqlite3").is_file():
            return None
        client = chromadb.PersistentClient(path=str(folder), settings=settings)
    kwargs = {"embedding_function": LocalMiniLMEmbedding()}
    if create:
        return client.get_or_create_collection(name, configuration={"hnsw": {"space": "cosine"}}, **kwargs)
    try:
        return client.get_collection(name, **kwargs)
    except Exception:  # chromadb raises NotFoundError / ValueError depending on the version
        return None
