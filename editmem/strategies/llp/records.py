"""Records the ``llp`` strategy keeps (facts, entries, per-forward state, training buckets) and small helpers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from editmem.tokens import subject_last_token_index


@dataclasses.dataclass
class _FactRec:
    id: str
    prompt: str
    target: str
    #: the fact's validity window (ISO instants, None = open); an entry only holds facts of one window
    valid_from: str | None = None
    valid_to: str | None = None
    #: the subject as written in ``prompt`` when it is not the entry's subject verbatim (see :attr:`Fact.surface`)
    surface: str | None = None
    #: the fact's declared aliases of the subject (the query gate masks them)
    aliases: list[str] = dataclasses.field(default_factory=list)

    @property
    def window(self) -> tuple[str | None, str | None]:
        return self.valid_from, self.valid_to


@dataclasses.dataclass
class _ValueBucket:
    """Training rows of similar length, padded together: cached layer-``z`` inputs and the supervised positions."""

    owner: torch.Tensor  # [n] job of each row
    attn: torch.Tensor  # [n, T]
    h_z: torch.Tensor  # [n, T, d] input of layer z
    kwargs: dict[str, Any]  # layer kwargs captured at z (positions, mask, ...)
    sup_row: torch.Tensor  # supervised (row, position-in-b-extended-sequence, label) triples
    sup_pos: torch.Tensor
    sup_lbl: torch.Tensor
    ntok: torch.Tensor  # [n] supervised tokens per row


@dataclasses.dataclass
class _Entry:
    """One subject's key/value pair and the facts it encodes."""

    id: str
    subject: str
    facts: list[_FactRec]
    key: torch.Tensor  # [m, d]
    value: torch.Tensor  # [b, d]
    seed: int
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def fact_ids(self) -> list[str]:
        return [f.id for f in self.facts]


@dataclasses.dataclass
class _ForwardState:
    """Per-forward bookkeeping of the inference hooks (reset at every prefill)."""

    attn2d: torch.Tensor | None = None  # [B, past+q] of the current call
    q_len: int = 0
    prefill: bool = True
    query_mask: torch.Tensor | None = None  # [B, q] positions retrieval may look at
    scores: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)  # layer -> [B, N]
    hit_entries: list[int | None] = dataclasses.field(default_factory=list)  # decision per row (index into order)
    hit: torch.Tensor | None = None  # [B] bool
    values: torch.Tensor | None = None  # [B, b, d] (zeros for miss rows)
    injecting_now: bool = False  # this forward prepends b positions (prefill); drop them after the last layer
    layer_kwargs: dict[str, Any] | None = None  # extended kwargs for layers >= z in this forward
    input_ids: torch.Tensor | None = None  # [B, q] of the prefill (the query gate reads the user turn)
    targets: list[list[list[int]]] = dataclasses.field(default_factory=list)  # per row: token ids of the winner's targets
    generated: list[list[int]] = dataclasses.field(default_factory=list)  # per row: tokens fed back while decoding
    released: torch.Tensor | None = None  # [B] bool: the row has generated a target, its value is masked from now on


def _subject_index(tokenizer, text: str, subject: str, search_from: int) -> int:
    """Index of the last token of ``subject`` in ``tokenizer(text)``, the subject searched in ``text[search_from:]``
    (the prompt part; the random prefix may contain the subject's words too). Exact via character offsets."""
    pos = text.find(subject, search_from)
    if pos < 0:
        raise ValueError(f"llp: subject {subject!r} not found in the prompt part of {text!r}")
    if pos == text.find(subject):
        return subject_last_token_index(tokenizer, text, subject)
    end = pos + len(subject)
    enc = tokenizer(text, return_offsets_mapping=True)
    last = None
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and a < end and b > pos:
            last = i
    if last is None:
        raise ValueError(f"llp: cannot locate the tokens of subject {subject!r} in {text!r}")
    return last


def _find_last(seq: list[int], pattern: list[int]) -> int:
    n = len(pattern)
    for i in range(len(seq) - n, -1, -1):
        if seq[i : i + n] == pattern:
            return i
    return -1


def _index_kwargs(kwargs: dict[str, Any], rows: torch.Tensor, batch: int) -> dict[str, Any]:
    """Select batch rows of the per-row tensors in captured layer kwargs (position embeddings may be shared)."""
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch and batch > 1:
            out[key] = value[rows]
        elif isinstance(value, tuple) and value and all(isinstance(t, torch.Tensor) for t in value):
            out[key] = tuple(t[rows] if t.shape[0] == batch and batch > 1 else t for t in value)
        else:
            out[key] = value
    return out


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """Parameters do not require grad inside (backward computes input gradients only: no weight-gradient matmuls)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
