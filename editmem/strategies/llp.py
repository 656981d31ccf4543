"""``llp``: Layer-Level Prompting ("Think and Recall", Wang et al.), a retrieval-gated key/value edit memory.

An *entry* (one per subject) is a key and a value:

* **key** ``[m, d]``: for each retrieval layer ``r`` in ``R``, a vector resembling the output of layer ``r`` at
  the last subject token. Initialised as the mean of that state over random context prefixes, then refined by
  InfoNCE against the keys already stored (negatives capped), optionally with hinge terms against a pool of
  generic token states sampled from the model itself (the measured fix for "hub" keys on small models,
  ``docs/strategies/llp.md``).
* **value** ``[b, d]``: ``b`` continuous vectors prepended to the hidden sequence entering layer ``z``, trained
  with the edit loss through layers ``z..L-1`` only (the frozen bottom is computed once per edit).

At inference the outputs of the retrieval layers are compared (cosine) with that layer's keys; every layer votes
for its top-k entries above ``t_layer``; the entry with the most votes is injected at the input of layer ``z``
iff it has at least ``t_vote`` votes. The decision is made once, on the prompt (prefill), and holds for every
generated token: the value's key/value states stay in the KV cache of layers ``>= z``, so the injected prefix is
computed once per generation. With no hit, no tensor of the forward pass is touched (bit-identical to the base
model).

Layout. Real tokens keep positions ``0..n-1`` in every layer and the value vectors get positions ``-b..-1`` in
layers ``>= z``; with rotary embeddings this is the paper's layout (value at ``0..b-1``, tokens shifted by ``b``
from layer ``z`` on) up to a common shift, which attention does not see. It lets layers below and above ``z``
share the model's own position embeddings and KV-cache bookkeeping. Layers ``>= z`` get an attention mask with
``b`` extra key columns (allowed for rows that hit, masked for rows that miss in a mixed batch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from editmem.adapters import compat
from editmem.facts import StoredFact
from editmem.optim import MaskedAdam
from editmem.prefixes import sample_continuations
from editmem.interventions import HookSet, StopForward, hidden_of, read_layers, replace_hidden
from editmem.strategies.base import EditTrace, Strategy, StrategyConfig, register_strategy
from editmem.shadow import resolve_dtype, shadow_blocks
from editmem.tokens import encode_chat_answer, encode_prompt_target, length_buckets, pad_batch, subject_last_token_index

logger = logging.getLogger(__name__)

PRESETS = ("default", "paper")

#: Values of the two presets for the fields left as ``None`` (see :class:`LLPConfig` for the reasoning).
_PRESET_VALUES: dict[str, dict[str, Any]] = {
    # Published recipe (reference code, Mistral-7B / 32-layer config; PAPER B.3).
    "paper": dict(
        value_lr=5e-2,
        value_weight_decay=0.1,
        value_bare_context=False,
        value_chat_context=False,
        value_chat_end_turn=False,
        key_lr=5e-3,
        key_objective="infonce",
        key_init="last",
        key_separator="",
        t_layer=0.7,
        vote_fraction=0.5,
        retrieval_start_fraction=0.0,
        injection_fraction=10 / 32,
        n_prefixes=3,
        value_stop_loss=0.05,
        partial_subject_weight=0.0,
        tie_break="first",
        key_prefixes=3,
        key_bare_context=False,
    ),
    # Measured on SmolLM2-135M-Instruct (docs/strategies/llp.md, spec LLP.md §6.2/§7.4).
    "default": dict(
        value_lr=4.0,
        value_weight_decay=0.5,
        value_bare_context=True,
        value_chat_context=True,
        value_chat_end_turn=True,
        key_lr=0.2,
        key_objective="infonce+generic_hinge",
        key_init="mean",
        key_separator=" ",
        t_layer=0.85,
        vote_fraction=0.75,
        retrieval_start_fraction=0.2,
        injection_fraction=2 / 3,
        n_prefixes=1,
        value_stop_loss=0.1,
        partial_subject_weight=10.0,
        tie_break="score",
        key_prefixes=6,
        key_bare_context=True,
    ),
}


@dataclasses.dataclass
class LLPConfig(StrategyConfig):
    """Config of the ``llp`` strategy.

    Fields left as ``None`` are filled from ``preset`` and, for layers, from the model's layer count ``L`` when the
    strategy is built (:meth:`resolve`).

    Args:
        preset: ``"default"`` (measured on the embedded SmolLM2-135M) or ``"paper"`` (the published recipe:
            InfoNCE keys with lr 5e-3, values with lr 5e-2, ``t_layer`` 0.7, no bare-prompt context).
        retrieval_layers: ``R``, layers whose *outputs* are compared with the keys: ``m = round(L/4)`` consecutive
            layers (the paper's 8 of 32; 8 of 30 for SmolLM2). ``paper`` preset ``0..m-1``; default preset from
            ``round(L/5)`` (6-13 for SmolLM2): the lowest layers are close to token identity, so a subject's last
            word matches itself in any context there (at N = 1000, 6-13 fire on 2.0 % of ZsRE locality probes
            against 6.4 % for 0-7, with Rel. / Gen. retrieval 0.995 / 0.926 vs 0.991 / 0.935).
        injection_layer: ``z``, the value is prepended to the *input* of this layer. ``paper`` preset
            ``ceil(10 L / 32)`` (the paper's 10 of 32; 10 of 30 for SmolLM2); default preset ``round(2 L / 3)`` (20 of
            30): a value trained through 10 instead of 16 layers needs about half the Adam steps at 0.6x the cost per
            step, at the same ZsRE T=100 quality (measured: z=20 Rel/Gen/Loc 1.000 / 0.970 / 0.994, z=14
            1.000 / 0.956 / 0.994). Must satisfy ``max(R) < z < L``.
        n_value_tokens: ``b``, vectors per value (REF: 1).
        value_lr: Adam learning rate of the value. Default preset 4.0: the reference's 5e-2 does not converge in
            64 steps on SmolLM2, whose mid-layer states have per-coordinate RMS ~6 (REF's own GPT-J setting is 0.5);
            at z=20, 2.0 reaches NLL < 0.1 in a median 8-13 steps vs 11-29 for 1.0 (8 ZsRE edits), and once the
            end-of-turn token is supervised 4.0 needs a median 9.5 steps where 2.0 needs 13 (20 ZsRE facts), at the
            same quality (ZsRE T=100 1.000 / 0.937 / 1.000 with one prefix; T=1000 0.996 / 0.930 / 0.987).
        value_steps: maximum Adam steps per value.
        value_weight_decay: ``lambda`` of the reference regulariser ``lambda * ||v|| / ||v0||^2``.
        value_stop_loss: early stop when the mean target NLL (regulariser excluded) is below this.
        value_bare_context: also train on the bare ``prompt target`` string (besides the prefixed ones). Without
            it an edit can fit the prefixed strings and still miss the bare prompt (measured).
        value_chat_context: also train on the chat-templated prompt followed by the target (when the tokenizer has
            a chat template): a chat application sees the question inside the template and the answer after the
            assistant header, a context the raw strings never show (spec pitfall 14).
        value_chat_end_turn: in that chat context, also train the template's end-of-turn token after the target
            (:func:`~editmem.tokens.encode_chat_answer`). The value stays injected for every generated token, and
            without an end it can keep pushing the target's tokens: at ZsRE T=100, 8 of the 16 paraphrases whose
            greedy chat answer missed the target had it glued to a run-on repetition ("Lamiinaeinae ..."); with it
            the harness's generation metric went from 0.92 / 0.84 to 0.97 / 0.92 (prompt / paraphrase), for a median
            4 more Adam steps per value (9 -> 13 on 20 ZsRE facts).
        train_dtype: precision of the frozen blocks ``z..L-1`` while a value trains (:mod:`editmem.shadow`); the value,
            Adam and the loss stay fp32, and inference always runs the model's own weights. ``bfloat16`` (default)
            runs the training steps ~1.9x faster on the 2-core CPU at the same ZsRE quality (measured,
            docs/strategies/llp.md); ``float32`` reproduces the earlier fp32 training. A model loaded in a lower
            precision is used as is.
        key_lr: Adam learning rate of the keys. Default preset 0.2 (scaled to SmolLM2's early-layer states, norm
            60-125): with the reference's 5e-3 keys move by ~5 % and stay the raw subject states.
        key_steps: maximum Adam steps per key layer.
        key_temperature: InfoNCE temperature ``tau``.
        key_negatives: at most this many stored keys are sampled as negatives per step.
        key_stop_loss: per-layer early stop threshold of the key loss.
        key_objective: ``"infonce"`` (reference) or ``"infonce+generic_hinge"`` (adds hard negatives from
            self-generated generic text, so keys on digits/punctuation do not fire on unrelated prompts).
        key_init: ``"mean"`` of the prefixed subject states (PAPER Eq. 8) or ``"last"`` sample (REF).
        key_separator: string joining prefix and prompt in key queries (REF: none; values always use a space).
        hinge_alpha / hinge_mu_neg / hinge_mu_pos: weight and margins of the generic hinge.
        key_prefixes: random prefixes per key (the key's positives; an independent draw from the value's). Default
            preset 6 (REF: the value's 3): the mean of 2 prefixed states fitted those two contexts and missed the bare
            question once refined (measured, docs/strategies/llp.md).
        key_bare_context: also use the bare prompt as a key positive (and, for the partial-subject hinge, the prompt
            with the subject shortened as a negative), as ``value_bare_context`` does for values.
        partial_subject_weight / partial_subject_mu: weight and margin of a hinge ``w·relu(cos(k, s) − mu)`` over the
            states ``s`` of the subject's partial forms (leading words dropped: ``Kelly`` for ``Gerald Kelly``) after
            the key prefixes and inside the entry's own prompts, so that a key stops firing on its subject's last
            word elsewhere. Default preset 10 / 0.85 (``paper``: 0 = off): at T = 1000 keys without it fired on 19 %
            of ZsRE locality probes, almost all partial-subject matches (docs/strategies/llp.md).
        generic_samples / generic_tokens / generic_top_k: size and sampling of the self-generated generic pool.
        generic_number_samples: extra pool samples that start with a digit (number tokens are the main hubs).
        t_layer: cosine threshold for a layer's vote. Default preset 0.85: 0.7 retrieves some entry for almost any
            unrelated prompt on a small, anisotropic model (measured).
        top_k: entries each layer may vote for.
        t_vote: votes needed to inject (absolute count; ``paper`` preset ``ceil(m/2)`` = 4 of 8, default preset
            ``ceil(0.75 m)`` = 6 of 8: on layers 6-13 at N = 1000, 5 votes fire on 3.0 % of locality probes, 6 on 2.0 %,
            for -0.9 points of Gen. retrieval).
        tie_break: which of the entries with the most votes wins: ``"first"`` voted (REF: decided by the lowest
            layer, the one closest to token identity) or the highest ``"score"`` summed over its votes (default
            preset; at N = 1000, +2.1 / +1.6 points of Rel. / Gen. retrieval on layers 0-7, +0.2 / +0.1 on 6-13).
        n_prefixes: random prefixes per value (keys draw ``key_prefixes`` independently). Default preset 1 (REF: 3):
            the bare and chat contexts already anchor the value, and with one prefixed string an Adam step costs
            0.26 s instead of 0.37 s at the same ZsRE quality; with ``value_lr`` 4.0 it brings the median edit from
            4.06 s to 2.83 s (two threads, 1,000 entries in memory; docs/strategies/llp.md).
        prefix_tokens / prefix_top_k: length and sampling of a prefix.
        prefix_bank: prefixes sampled once per model (seeded); each value and key draws its prefixes from it.
        max_facts_per_entry: facts sharing one subject entry; further facts about that subject open a new entry.
        query_span: ``"user"`` restricts retrieval to the last user turn when the input is chat-templated (the
            template's fixed tokens are exactly the generic-token triggers); ``"all"`` uses every real token.
        seed: base seed of prefixes and negative sampling (each entry stores its own derived seed).
    """

    runtime_fields: ClassVar[frozenset[str]] = frozenset({"batch_size", "t_layer", "top_k", "t_vote", "tie_break", "query_span"})

    preset: str = dataclasses.field(default="default", metadata={"help": "default | paper"})
    retrieval_layers: list[int] | None = dataclasses.field(default=None, metadata={"help": "R (layer outputs)"})
    injection_layer: int | None = dataclasses.field(default=None, metadata={"help": "z (layer input)"})
    n_value_tokens: int = dataclasses.field(default=1, metadata={"help": "b"})
    value_lr: float | None = None
    value_steps: int = 64
    value_weight_decay: float | None = None
    value_stop_loss: float | None = None
    value_bare_context: bool | None = None
    value_chat_context: bool | None = None
    value_chat_end_turn: bool | None = None
    train_dtype: str = dataclasses.field(default="bfloat16", metadata={"help": "float32 | bfloat16 (upper blocks while training values)"})
    key_lr: float | None = None
    key_steps: int = 32
    key_temperature: float = 0.2
    key_negatives: int = 1000
    key_stop_loss: float = 0.05
    key_objective: str | None = None
    key_init: str | None = None
    key_separator: str | None = None
    key_prefixes: int | None = None
    key_bare_context: bool | None = None
    hinge_alpha: float = 10.0
    hinge_mu_neg: float = 0.5
    hinge_mu_pos: float = 0.9
    partial_subject_weight: float | None = None
    partial_subject_mu: float = 0.85
    generic_samples: int = 48
    generic_number_samples: int = 16
    generic_tokens: int = 24
    generic_top_k: int = 20
    t_layer: float | None = None
    top_k: int = 3
    t_vote: int | None = None
    tie_break: str | None = None
    n_prefixes: int | None = None
    prefix_tokens: int = 10
    prefix_top_k: int = 5
    prefix_bank: int = 12
    max_facts_per_entry: int = 8
    query_span: str = "user"
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ValueError(f"LLPConfig.preset must be one of {PRESETS}, got {self.preset!r}")
        if self.retrieval_layers is not None:
            self.retrieval_layers = [int(r) for r in self.retrieval_layers]
            if not self.retrieval_layers or min(self.retrieval_layers) < 0:
                raise ValueError(f"LLPConfig.retrieval_layers must be non-empty layer indices >= 0, got {self.retrieval_layers}")
            if len(set(self.retrieval_layers)) != len(self.retrieval_layers):
                raise ValueError(f"LLPConfig.retrieval_layers has duplicates: {self.retrieval_layers}")
        if self.retrieval_layers is not None and self.injection_layer is not None and max(self.retrieval_layers) >= self.injection_layer:
            raise ValueError(
                f"LLPConfig: max(retrieval_layers)={max(self.retrieval_layers)} must be < injection_layer={self.injection_layer} "
                "(retrieval at or above z would see the injected prompt)"
            )
        for name in ("n_value_tokens", "value_steps", "key_negatives", "top_k", "n_prefixes", "key_prefixes", "prefix_tokens", "prefix_top_k",
                     "prefix_bank", "max_facts_per_entry", "generic_samples", "generic_top_k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"LLPConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.generic_number_samples < 0:
            raise ValueError(f"LLPConfig.generic_number_samples must be >= 0, got {self.generic_number_samples}")
        if self.key_steps < 0:
            raise ValueError(f"LLPConfig.key_steps must be >= 0, got {self.key_steps}")
        if self.generic_tokens < 3:
            raise ValueError(f"LLPConfig.generic_tokens must be >= 3, got {self.generic_tokens}")
        for name in ("n_prefixes", "key_prefixes"):
            if getattr(self, name) is not None and self.prefix_bank < getattr(self, name):
                raise ValueError(f"LLPConfig.prefix_bank ({self.prefix_bank}) must be >= {name} ({getattr(self, name)})")
        if self.t_layer is not None and not -1.0 <= self.t_layer <= 1.0:
            raise ValueError(f"LLPConfig.t_layer must be in [-1, 1], got {self.t_layer}")
        if self.t_vote is not None:
            m = len(self.retrieval_layers) if self.retrieval_layers is not None else None
            if self.t_vote < 1 or (m is not None and self.t_vote > m):
                raise ValueError(f"LLPConfig.t_vote must be in [1, m={m}], got {self.t_vote}")
        if self.key_objective not in (None, "infonce", "infonce+generic_hinge"):
            raise ValueError(f"LLPConfig.key_objective must be 'infonce' or 'infonce+generic_hinge', got {self.key_objective!r}")
        if self.key_init not in (None, "mean", "last"):
            raise ValueError(f"LLPConfig.key_init must be 'mean' or 'last', got {self.key_init!r}")
        resolve_dtype(self.train_dtype, field="LLPConfig.train_dtype")
        if self.tie_break not in (None, "first", "score"):
            raise ValueError(f"LLPConfig.tie_break must be 'first' or 'score', got {self.tie_break!r}")
        if self.partial_subject_weight is not None and self.partial_subject_weight < 0:
            raise ValueError(f"LLPConfig.partial_subject_weight must be >= 0, got {self.partial_subject_weight}")
        if self.query_span not in ("user", "all"):
            raise ValueError(f"LLPConfig.query_span must be 'user' or 'all', got {self.query_span!r}")
        for name in ("value_lr", "key_lr", "key_temperature"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"LLPConfig.{name} must be > 0, got {value}")

    @classmethod
    def paper(cls, **overrides: Any) -> "LLPConfig":
        """The published configuration (reference code), with optional overrides."""
        return cls(preset="paper", **overrides)

    def resolve(self, num_layers: int) -> "ResolvedLLP":
        """Concrete hyperparameters for a model with ``num_layers`` decoder layers."""
        preset = _PRESET_VALUES[self.preset]
        m = max(1, round(num_layers / 4))
        start = round(preset["retrieval_start_fraction"] * num_layers)
        retrieval = list(self.retrieval_layers) if self.retrieval_layers is not None else list(range(start, start + m))
        frac = preset["injection_fraction"]
        z = self.injection_layer if self.injection_layer is not None else max(max(retrieval) + 1, min(num_layers - 1, round(frac * num_layers + 1e-9) if self.preset == "default" else math.ceil(frac * num_layers)))
        if not max(retrieval) < z < num_layers:
            raise ValueError(f"llp: need max(R)={max(retrieval)} < z={z} < L={num_layers}")
        t_vote = self.t_vote if self.t_vote is not None else math.ceil(preset["vote_fraction"] * len(retrieval) - 1e-9)
        if not 1 <= t_vote <= len(retrieval):
            raise ValueError(f"llp: t_vote={t_vote} must be in [1, {len(retrieval)}]")

        def pick(name: str) -> Any:
            value = getattr(self, name)
            return preset[name] if value is None else value

        return ResolvedLLP(
            retrieval_layers=retrieval,
            injection_layer=z,
            b=self.n_value_tokens,
            value_lr=pick("value_lr"),
            value_weight_decay=pick("value_weight_decay"),
            value_bare_context=pick("value_bare_context"),
            value_chat_context=pick("value_chat_context"),
            value_chat_end_turn=pick("value_chat_end_turn"),
            key_lr=pick("key_lr"),
            key_objective=pick("key_objective"),
            key_init=pick("key_init"),
            key_separator=pick("key_separator"),
            t_layer=pick("t_layer"),
            t_vote=t_vote,
            n_prefixes=pick("n_prefixes"),
            value_stop_loss=pick("value_stop_loss"),
            partial_subject_weight=pick("partial_subject_weight"),
            tie_break=pick("tie_break"),
            key_prefixes=pick("key_prefixes"),
            key_bare_context=pick("key_bare_context"),
        )


@dataclasses.dataclass(frozen=True)
class ResolvedLLP:
    """The config's ``None`` fields filled in for one model."""

    retrieval_layers: list[int]
    injection_layer: int
    b: int
    value_lr: float
    value_weight_decay: float
    value_bare_context: bool
    value_chat_context: bool
    value_chat_end_turn: bool
    key_lr: float
    key_objective: str
    key_init: str
    key_separator: str
    t_layer: float
    t_vote: int
    n_prefixes: int
    value_stop_loss: float
    partial_subject_weight: float
    tie_break: str
    key_prefixes: int
    key_bare_context: bool


@dataclasses.dataclass
class _FactRec:
    id: str
    prompt: str
    target: str


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


class LLPStrategy(Strategy):
    """Layer-Level Prompting: retrieval-gated layer-level prompts (see the module docstring)."""

    batch_safe = True  # retrieval, vote and injection are decided per row (tests/test_llp.py: mixed batches)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cfg: ResolvedLLP = self.config.resolve(self.adapter.num_layers)
        self._entries: dict[str, _Entry] = {}
        self._order: list[str] = []  # entry ids in insertion order (row index of the retrieval matrices)
        self._matrices: tuple[torch.Tensor, torch.Tensor] | None = None  # normalised keys [m, N, d], values [N, b, d]
        self._hooks = HookSet("llp")
        self._state = _ForwardState()
        self._dry_run = False  # hooks passive (internal forwards of the write path)
        self._explain_only = False  # retrieve and report, do not inject
        self._query_lengths: list[int] | None = None
        self._prefix_bank: list[str] | None = None
        self._generic_pool: torch.Tensor | None = None  # [m, S, d] normalised
        self._value_pe: tuple[torch.Tensor, torch.Tensor] | None = None
        self._chat_markers: tuple[list[int], list[int]] | None | bool = False
        self._special_ids = torch.tensor(sorted(set(getattr(self.tokenizer, "all_special_ids", []) or [])), dtype=torch.long)
        self._fingerprint: str | None = None
        try:
            self._bool_mask = self.adapter.boolean_masks
        except ValueError as exc:
            raise ValueError(f"llp: {exc}") from None
        #: per-edit training log (last apply call), for benchmarks
        self.last_edit_stats: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ bookkeeping
    @property
    def layout(self) -> dict[str, Any]:
        return {"R": list(self.cfg.retrieval_layers), "z": self.cfg.injection_layer, "b": self.cfg.b,
                "d": self.adapter.hidden_size, "L": self.adapter.num_layers}

    def model_fingerprint(self) -> str:
        if self._fingerprint is None:
            from editmem.models import model_fingerprint

            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def applied_ids(self) -> set[str]:
        return {f.id for e in self._entries.values() for f in e.facts}

    def entries(self) -> list[dict[str, Any]]:
        """Summary of the stored entries (subject, fact ids, training stats)."""
        return [{"id": e.id, "subject": e.subject, "facts": e.fact_ids, **e.stats} for e in (self._entries[i] for i in self._order)]

    def _invalidate(self) -> None:
        self._matrices = None

    def _get_matrices(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self._order:
            return None
        if self._matrices is None:
            keys = torch.stack([self._entries[i].key for i in self._order], dim=1)  # [m, N, d]
            values = torch.stack([self._entries[i].value for i in self._order], dim=0)  # [N, b, d]
            self._matrices = (F.normalize(keys.float(), dim=-1).to(self.device), values.to(self.device))
        return self._matrices

    # ------------------------------------------------------------------ model pieces
    def _layers(self) -> torch.nn.ModuleList:
        return self.adapter.layers

    def _value_position_embeddings(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos/sin of the value positions ``-b..-1`` (input-independent, computed once)."""
        if self._value_pe is None:
            pos = torch.arange(-self.cfg.b, 0, device=like.device).unsqueeze(0)
            self._value_pe = self.adapter.rotary_cos_sin(pos, like)
        return self._value_pe

    def _extend_layer_kwargs(self, kwargs: dict[str, Any], attn2d: torch.Tensor, q_len: int, hit: torch.Tensor,
                             value_queries: bool, hidden: torch.Tensor) -> dict[str, Any]:
        """Layer kwargs for layers ``>= z`` with ``b`` value positions in front (mask, position embeddings)."""
        b = self.cfg.b
        out = dict(kwargs)
        mask = self._extended_mask(attn2d, q_len, hit, value_queries)
        out["attention_mask"] = compat.layer_mask(mask, boolean=self._bool_mask, dtype=hidden.dtype)
        if value_queries:
            pe = kwargs.get("position_embeddings")
            if pe is not None:
                vcos, vsin = self._value_position_embeddings(hidden)
                cos, sin = pe
                batch = cos.shape[0]
                out["position_embeddings"] = (
                    torch.cat([vcos.to(cos.dtype).expand(batch, -1, -1), cos], dim=1),
                    torch.cat([vsin.to(sin.dtype).expand(batch, -1, -1), sin], dim=1),
                )
            pid = kwargs.get("position_ids")
            if isinstance(pid, torch.Tensor):
                vpos = torch.arange(-b, 0, device=pid.device, dtype=pid.dtype).unsqueeze(0).expand(pid.shape[0], -1)
                out["position_ids"] = torch.cat([vpos, pid], dim=1)
            if "cache_position" in kwargs and isinstance(kwargs["cache_position"], torch.Tensor):
                cp = kwargs["cache_position"]
                out["cache_position"] = torch.cat([torch.arange(-b, 0, device=cp.device, dtype=cp.dtype), cp])
        return out

    def _extended_mask(self, attn2d: torch.Tensor, q_len: int, hit: torch.Tensor, value_queries: bool) -> torch.Tensor:
        """Boolean attention mask ``[B, 1, (b+)q, b+kv]`` (True = attend) for layers ``>= z``."""
        b = self.cfg.b
        batch, kv = attn2d.shape
        past = kv - q_len
        device = attn2d.device
        keys_ok = attn2d.bool()[:, None, None, :]
        qpos = torch.arange(past, kv, device=device)[:, None]
        causal = torch.arange(kv, device=device)[None, :] <= qpos
        real = keys_ok & causal[None, None]  # [B,1,q,kv]
        # a padded query that sees nothing may attend to itself (avoids NaN rows; its output is never used)
        empty = ~real.any(-1, keepdim=True)
        if bool(empty.any()):
            own = torch.zeros(q_len, kv, dtype=torch.bool, device=device)
            own[torch.arange(q_len), torch.arange(past, kv)] = True
            real = real | (empty & own[None, None])
        vcols = hit.to(device)[:, None, None, None].expand(batch, 1, q_len, b)
        rows = torch.cat([vcols, real], dim=-1)
        if value_queries:
            vq = torch.zeros(batch, 1, b, b + kv, dtype=torch.bool, device=device)
            vq[..., :b] = torch.ones(b, b, dtype=torch.bool, device=device).tril()
            rows = torch.cat([vq, rows], dim=2)
        return rows

    @torch.no_grad()
    def _bottom(self, input_ids: torch.Tensor, attn2d: torch.Tensor, layers: Sequence[int], *, stop_at_z: bool) -> dict[str, Any]:
        """Outputs of ``layers`` (by index) and, with ``stop_at_z``, the input hidden states (``"h"``) and kwargs of
        layer ``z``, from one frozen forward that stops as early as it can (:func:`~editmem.interventions.read_layers`;
        ``_dry_run`` keeps the strategy's own hooks passive)."""
        was, self._dry_run = self._dry_run, True
        try:
            seen = read_layers(self.model, self.adapter, input_ids.to(self.device), attn2d.to(self.device), outputs=layers,
                               input_of=self.cfg.injection_layer if stop_at_z else None)
        finally:
            self._dry_run = was
        out: dict[Any, Any] = dict(seen["outputs"])
        if stop_at_z:
            out["h"], out["kwargs"] = seen["hidden"], seen["kwargs"]
        return out

    # ------------------------------------------------------------------ shared write-path resources
    def _prefixes(self) -> list[str]:
        if self._prefix_bank is None:
            from editmem.prefixes import sample_prefixes

            was = self.attached
            if was:
                self.detach()
            try:
                self._prefix_bank = sample_prefixes(self.model, self.tokenizer, n=self.config.prefix_bank,
                                                    max_new_tokens=self.config.prefix_tokens, top_k=self.config.prefix_top_k,
                                                    seed=self.config.seed)
            finally:
                if was:
                    self.attach()
        return self._prefix_bank

    def _start_token_id(self) -> int:
        """Token that starts self-generated text: the document separator ``<|endoftext|>`` when the vocabulary has one
        (REF's sampler start), else BOS, else EOS."""
        tok = self.tokenizer
        vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
        if "<|endoftext|>" in vocab:
            return int(vocab["<|endoftext|>"])
        return int(tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id)

    @torch.no_grad()
    def _generic(self) -> torch.Tensor:
        """Normalised layer-``R`` states of self-generated generic text, ``[m, S, d]`` (computed once, seeded).

        ``generic_samples`` texts start from the start token; ``generic_number_samples`` more start with a digit, the
        commonest hub trigger on tokenizers that split numbers into digits (SmolLM2, Llama-3 splits into 3-digit
        groups): dates and quantities are frequent in unrelated prompts and answers.
        """
        if self._generic_pool is None:
            cfg = self.config
            tok = self.tokenizer
            gen = torch.Generator().manual_seed(cfg.seed + 7919)
            starts = [[self._start_token_id()] for _ in range(cfg.generic_samples)]
            for i in range(cfg.generic_number_samples):
                starts.append([self._start_token_id()] + tok(str(1 + i % 9), add_special_tokens=False)["input_ids"][:1])
            width = max(len(x) for x in starts)
            starts = [x + x[-1:] * (width - len(x)) for x in starts]  # all starts have the same length (1 or 2)
            was = self.attached
            if was:
                self.detach()
            try:
                ids = sample_continuations(self.model, torch.tensor(starts, dtype=torch.long), top_k=cfg.generic_top_k,
                                           new_tokens=cfg.generic_tokens - len(starts[0]), generator=gen)
                seen = self._bottom(ids, torch.ones_like(ids), self.cfg.retrieval_layers, stop_at_z=False)
            finally:
                if was:
                    self.attach()
            pool = torch.stack([seen[r][:, 2:].reshape(-1, seen[r].shape[-1]) for r in self.cfg.retrieval_layers])
            self._generic_pool = F.normalize(pool.float(), dim=-1)
        return self._generic_pool

    def _entry_prefixes(self, seed: int, stage: str) -> list[str]:
        bank = self._prefixes()
        gen = torch.Generator().manual_seed(seed * 2 + (0 if stage == "value" else 1))
        count = self.cfg.n_prefixes if stage == "value" else self.cfg.key_prefixes
        picks = torch.randperm(len(bank), generator=gen)[:count].tolist()
        return [bank[i] for i in picks]

    # ------------------------------------------------------------------ value training
    def _value_contexts(self, entry_facts: list[_FactRec], seed: int) -> list[tuple[list[int], int, bool]]:
        """``(ids, start, bare)`` of every training string: the bare ``prompt + " " + target`` (flagged: the value
        is initialised from its states), prefix + " " + prompt + " " + target, the chat-templated answer."""
        contexts = []
        prefixes = self._entry_prefixes(seed, "value")
        for fact in entry_facts:
            if self.cfg.value_bare_context:
                pt = encode_prompt_target(self.tokenizer, fact.prompt, fact.target)
                contexts.append((pt.input_ids, pt.start, True))
            for p in prefixes:
                pt = encode_prompt_target(self.tokenizer, f"{p} {fact.prompt}", fact.target)
                contexts.append((pt.input_ids, pt.start, False))
            if self.cfg.value_chat_context and getattr(self.tokenizer, "chat_template", None):
                pt = encode_chat_answer(self.tokenizer, fact.prompt, fact.target, end_turn=self.cfg.value_chat_end_turn)
                contexts.append((pt.input_ids, pt.start, False))
        return contexts

    @torch.no_grad()
    def _value_init(self, entry_facts: list[_FactRec]) -> torch.Tensor:
        """Mean over facts of the last ``b`` token states of ``prompt + " " + target`` entering layer ``z`` (its own
        forward pass; training reads the bare strings' states from its cached rows instead)."""
        seqs = [encode_prompt_target(self.tokenizer, f.prompt, f.target).input_ids for f in entry_facts]
        ids, mask = pad_batch(seqs, self.tokenizer.pad_token_id or 0, side="right")
        h = self._bottom(ids, mask, [], stop_at_z=True)["h"]
        return self._init_from([h[i, : len(seq)] for i, seq in enumerate(seqs)])

    def _init_from(self, states: list[torch.Tensor]) -> torch.Tensor:
        """The value initialisation from the layer-``z`` input states ``[n, d]`` of each fact's bare string: the mean
        over facts of their last ``b`` states (the first state repeated when a string is shorter than ``b``)."""
        b = self.cfg.b
        rows = []
        for h in states:
            chunk = h[max(0, h.shape[0] - b) :]
            if chunk.shape[0] < b:
                chunk = torch.cat([chunk[:1].expand(b - chunk.shape[0], -1), chunk])
            rows.append(chunk)
        return torch.stack(rows).mean(0).float()

    def _train_values(self, jobs: list[tuple[list[_FactRec], int]]) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """Train one value per job ``(facts, seed)``, all jobs in one batch (each has its own vector and early stop).

        Layers below ``z`` run once (no grad); every step runs layers ``z..L-1`` on the cached states and projects only
        the supervised positions through the LM head. Rows are grouped into length buckets padded separately
        (:func:`~editmem.tokens.length_buckets`): the chat-templated context is twice as long as the others, and
        padding every row to it wasted ~40 % of each step. The upper blocks run as ``train_dtype`` shadows
        (:mod:`editmem.shadow`) with their attention in fp32 (~8 % faster per step on CPU: the bf16 attention kernel's
        fixed cost); the value, its optimiser and the loss stay fp32.
        """
        t0 = time.perf_counter()
        rows: list[tuple[list[int], int]] = []
        owner: list[int] = []
        bare: list[list[int]] = []  # per job, its bare strings' row indices
        for j, (facts, seed) in enumerate(jobs):
            ctx = self._value_contexts(facts, seed)
            bare.append([len(rows) + i for i, c in enumerate(ctx) if c[2]])
            rows.extend((ids, start) for ids, start, _ in ctx)
            owner.extend([j] * len(ctx))
        groups = length_buckets([len(r[0]) for r in rows])
        buckets = [self._value_bucket([rows[i] for i in idx], [owner[i] for i in idx]) for idx in groups]
        where = {i: (k, pos) for k, idx in enumerate(groups) for pos, i in enumerate(idx)}
        inits = [self._init_from([buckets[where[i][0]].h_z[where[i][1], : len(rows[i][0])] for i in rows_j])
                 if rows_j else self._value_init(facts) for rows_j, (facts, _) in zip(bare, jobs)]
        nctx = torch.zeros(len(jobs), device=self.device).index_add_(
            0, torch.tensor(owner, device=self.device), torch.ones(len(rows), device=self.device))
        v0 = torch.stack(inits).to(self.device)  # [J, b, d]
        dtype = resolve_dtype(self.config.train_dtype)
        blocks = shadow_blocks(list(self._layers())[self.cfg.injection_layer:], dtype)
        head = shadow_blocks([self.adapter.final_norm, self.adapter.lm_head], dtype)
        with _frozen(self.model):
            return self._value_loop(len(jobs), buckets, nctx, v0, t0, blocks, head)

    def _value_bucket(self, rows: list[tuple[list[int], int]], owner: list[int]) -> "_ValueBucket":
        """Cached layer-``z`` inputs and supervision of one length bucket of training rows."""
        b = self.cfg.b
        ids, attn = pad_batch([r[0] for r in rows], self.tokenizer.pad_token_id or 0, side="right")
        cap = self._bottom(ids, attn, [], stop_at_z=True)
        kwargs = cap["kwargs"]
        sup_row, sup_pos, sup_lbl = [], [], []  # supervised positions (in the b-extended sequence) and labels
        for i, (seq, start) in enumerate(rows):
            for t in range(start, len(seq)):
                sup_row.append(i)
                sup_pos.append(b + t - 1)
                sup_lbl.append(seq[t])
        dev = self.device
        sup_row_t = torch.tensor(sup_row, device=dev)
        return _ValueBucket(
            owner=torch.tensor(owner, device=dev), attn=attn.to(dev), h_z=cap["h"], kwargs=kwargs, sup_row=sup_row_t,
            sup_pos=torch.tensor(sup_pos, device=dev), sup_lbl=torch.tensor(sup_lbl, device=dev),
            ntok=torch.zeros(len(rows), device=dev).index_add_(0, sup_row_t, torch.ones(len(sup_row), device=dev)),
        )

    def _bucket_top(self, bucket: "_ValueBucket", v: torch.Tensor, active: torch.Tensor, blocks: list[torch.nn.Module]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Run the bucket's rows of active jobs through ``blocks`` with their values in front; return the last hidden
        state at their supervised positions, the labels and each position's row index in the bucket."""
        n_rows = bucket.owner.shape[0]
        sel = active[bucket.owner].nonzero().squeeze(1)
        if sel.numel() == 0:
            return None
        hit = torch.ones(sel.numel(), dtype=torch.bool, device=self.device)
        kw = self._extend_layer_kwargs(_index_kwargs(bucket.kwargs, sel, n_rows), bucket.attn[sel], bucket.attn.shape[1],
                                       hit, True, bucket.h_z)
        hidden = torch.cat([v[bucket.owner[sel]], bucket.h_z[sel]], dim=1)
        for block in blocks:
            hidden = hidden_of(block(hidden, **kw))
        pos_of_row = torch.full((n_rows,), -1, dtype=torch.long, device=self.device)
        pos_of_row[sel] = torch.arange(sel.numel(), device=self.device)
        keep = pos_of_row[bucket.sup_row] >= 0
        return hidden[pos_of_row[bucket.sup_row[keep]], bucket.sup_pos[keep]], bucket.sup_lbl[keep], bucket.sup_row[keep]

    def _values_nll(self, buckets: list["_ValueBucket"], v: torch.Tensor, active: torch.Tensor,
                    blocks: list[torch.nn.Module], head: list[torch.nn.Module], nctx: torch.Tensor) -> torch.Tensor:
        """Each job's target NLL ``[J]``: mean over its contexts of the per-context mean token NLL. The LM head runs
        once per step on the supervised positions of every bucket (it reads the whole vocabulary matrix: on CPU it
        is memory-bound, so one call for all rows costs about what one call for a few rows does)."""
        parts = [(bk, out) for bk in buckets if (out := self._bucket_top(bk, v, active, blocks)) is not None]
        states = torch.cat([out[0] for _, out in parts])
        logits = head[1](head[0](states)).float()
        nll_tok = F.cross_entropy(logits, torch.cat([out[1] for _, out in parts]), reduction="none")
        nll_job = torch.zeros(v.shape[0], device=self.device)
        offset = 0
        for bk, (_, _, rows) in parts:
            tok = nll_tok[offset : offset + rows.numel()]
            offset += rows.numel()
            nll_row = torch.zeros(bk.owner.shape[0], device=self.device).index_add(0, rows, tok) / bk.ntok.clamp_min(1)
            nll_job = nll_job.index_add(0, bk.owner, nll_row)
        return nll_job / nctx

    def _value_loop(self, n_jobs: int, buckets: list["_ValueBucket"], nctx: torch.Tensor, v0: torch.Tensor, t0: float,
                    blocks: list[torch.nn.Module], head: list[torch.nn.Module]) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        cfg = self.cfg
        v = v0.clone().requires_grad_(True)
        v0_norm = v0.flatten(1).norm(dim=1).clamp_min(1e-6)
        adam = MaskedAdam(v, lr=cfg.value_lr)
        active = torch.ones(n_jobs, dtype=torch.bool, device=self.device)
        final_nll = torch.full((n_jobs,), float("nan"))
        steps_used = torch.zeros(n_jobs, dtype=torch.long)
        for step in range(self.config.value_steps):
            nll_job = self._values_nll(buckets, v, active, blocks, head, nctx)
            reg = cfg.value_weight_decay * v.flatten(1).norm(dim=1) / v0_norm**2
            loss = (nll_job + reg)[active].sum()
            with torch.no_grad():
                for j in active.nonzero().squeeze(1).tolist():
                    final_nll[j] = float(nll_job[j])
                    steps_used[j] = step
            adam.zero_grad()
            loss.backward()
            adam.step(active.view(-1, 1, 1))
            # REF: stop once the loss computed before this step is small (here: the NLL part, §8 of the spec)
            with torch.no_grad():
                active &= ~(nll_job.detach() < self.cfg.value_stop_loss)
            if not bool(active.any()):
                break
        elapsed = time.perf_counter() - t0
        results = []
        for j in range(n_jobs):
            stats = {"value_steps": int(steps_used[j]) + 1, "value_nll": round(float(final_nll[j]), 4),
                     "value_seconds": round(elapsed / n_jobs, 3)}
            results.append((v[j].detach().clone(), stats))
        return results

    # ------------------------------------------------------------------ key training
    def _key_texts(self, subject: str, entry_facts: list[_FactRec], seed: int) -> list[tuple[str, str, int]]:
        """The key's positive contexts ``(text, subject, where the prompt starts)``: every prefixed prompt and, with
        ``key_bare_context``, the bare prompt."""
        sep = self.cfg.key_separator
        prefixes = self._entry_prefixes(seed, "key")
        texts: list[tuple[str, str, int]] = []
        for fact in entry_facts:
            if self.cfg.key_bare_context:
                texts.append((fact.prompt, subject, 0))
            texts.extend((f"{p}{sep}{fact.prompt}", subject, len(p) + len(sep)) for p in prefixes)
        return texts

    def _partial_texts(self, subject: str, entry_facts: list[_FactRec], seed: int) -> list[tuple[str, str, int]]:
        """Contexts of the subject's partial forms (leading words dropped: ``Kelly`` for ``Gerald Kelly``): each alone
        after the entry's key prefixes and, with ``key_bare_context``, inside the entry's own prompts in place of the
        subject. Empty for a one-word subject."""
        words = subject.split()
        sep = self.cfg.key_separator
        prefixes = self._entry_prefixes(seed, "key")
        texts: list[tuple[str, str, int]] = []
        for part in (" ".join(words[i:]) for i in range(1, len(words))):
            texts.extend((f"{p}{sep}{part}", part, len(p) + len(sep)) for p in prefixes)
            if self.cfg.key_bare_context:
                for fact in entry_facts:
                    at = fact.prompt.find(subject)
                    if at >= 0:
                        texts.append((fact.prompt[:at] + part + fact.prompt[at + len(subject):], part, at))
        return texts

    @torch.no_grad()
    def _subject_states(self, *groups: list[tuple[str, str, int]]) -> tuple[torch.Tensor, ...]:
        """States ``[m, P, d]`` of each ``(text, subject, search_from)``'s last subject token at every retrieval layer,
        one tensor per group, all groups in one forward pass of the layers below the last retrieval layer. A subject
        ending on the first token is dropped (that position is the attention sink, whose state says nothing about the
        subject); prefixed texts never do. Each text runs only up to its subject's last token: with causal attention
        the tokens after it do not change that state."""
        kept = [[(t, i) for t, subj, start in group if (i := _subject_index(self.tokenizer, t, subj, start)) > 0]
                for group in groups]
        flat = [pair for group in kept for pair in group]
        seqs = [self.tokenizer(t)["input_ids"][: i + 1] for t, i in flat]
        ids, attn = pad_batch(seqs, self.tokenizer.pad_token_id or 0, side="right")
        seen = self._bottom(ids, attn, self.cfg.retrieval_layers, stop_at_z=False)
        rows = torch.arange(len(flat))
        idx = torch.tensor([i for _, i in flat])
        states = torch.stack([seen[r][rows, idx].float() for r in self.cfg.retrieval_layers])  # [m, sum P, d]
        return tuple(states.split([len(group) for group in kept], dim=1))

    def _key_queries(self, subject: str, entry_facts: list[_FactRec], seed: int) -> torch.Tensor:
        """Subject-token states ``[m, P, d]`` of the key's positive contexts (:meth:`_key_texts`)."""
        return self._subject_states(self._key_texts(subject, entry_facts, seed))[0]

    def _partial_queries(self, subject: str, entry_facts: list[_FactRec], seed: int) -> torch.Tensor | None:
        """States ``[m, P', d]`` of the subject's partial forms (:meth:`_partial_texts`); None for a one-word subject."""
        texts = self._partial_texts(subject, entry_facts, seed)
        return self._subject_states(texts)[0] if texts else None

    def _refine_key(self, subject: str, entry_facts: list[_FactRec], seed: int, negatives: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The write path's key stage: prefix-averaged subject states refined against ``negatives`` (normalised keys
        ``[m, N, d]``; default: the stored keys). Positives and partial-subject negatives share one forward pass."""
        positive = self._key_texts(subject, entry_facts, seed)
        negative = self._partial_texts(subject, entry_facts, seed) if self.cfg.partial_subject_weight > 0 else []
        queries, partial = self._subject_states(positive, negative)
        negatives = self._stored_negatives() if negatives is None else negatives
        return self._train_key(queries, negatives, seed, partial=partial if partial.shape[1] else None)

    def _stored_negatives(self) -> torch.Tensor:
        """The stored keys, normalised, on the CPU: ``[m, N, d]`` (``N`` = 0 for an empty memory)."""
        mats = self._get_matrices()
        if mats is None:
            return torch.zeros(len(self.cfg.retrieval_layers), 0, self.adapter.hidden_size)
        return mats[0].cpu()

    def _refine_keys(self, jobs: list[tuple[str, str, list[_FactRec], int, torch.Tensor | None]]
                     ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """Keys of a write's entries in order, each refined against the stored keys and the ones before it (a kept
        key, on a value retrain, is reused as is)."""
        negatives = self._stored_negatives()
        out = []
        for _, subject, facts, seed, kept_key in jobs:
            t0 = time.perf_counter()
            if kept_key is not None:
                key, stats = kept_key, {"key_kept": True}
            else:
                key, stats = self._refine_key(subject, facts, seed, negatives)
            stats["key_seconds"] = round(time.perf_counter() - t0, 3)
            negatives = torch.cat([negatives, F.normalize(key.float().cpu(), dim=-1).unsqueeze(1)], dim=1)
            out.append((key, stats))
        return out

    def _train_key(self, queries: torch.Tensor, negatives: torch.Tensor | None, seed: int,
                   partial: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """InfoNCE (+ generic hinge, + partial-subject hinge) refinement of one key, all layers at once with
        per-layer Adam and early stop.

        ``queries`` ``[m, P, d]``; ``negatives`` normalised stored keys ``[m, N, d]`` (None when the memory is empty);
        ``partial`` states of the subject's partial forms ``[m, P', d]`` (see ``partial_subject_weight``).
        """
        cfg, conf = self.cfg, self.config
        k0 = queries.mean(1) if cfg.key_init == "mean" else queries[:, -1]
        hinge = cfg.key_objective == "infonce+generic_hinge"
        has_neg = negatives is not None and negatives.shape[1] > 0
        stats: dict[str, Any] = {"key_steps": 0}
        partial_n = F.normalize(partial, dim=-1) if partial is not None else None
        if not has_neg and not hinge and partial_n is None:
            return k0.clone(), {**stats, "key_shift": 0.0, **self._hub_check(k0)}
        pool = self._generic() if hinge else None
        qn = F.normalize(queries, dim=-1)
        k = k0.clone().requires_grad_(True)
        adam = MaskedAdam(k, lr=cfg.key_lr)
        active = torch.ones(k.shape[0], dtype=torch.bool)
        gen = torch.Generator().manual_seed(seed * 31 + 17)
        tau = conf.key_temperature
        loss = torch.zeros(k.shape[0])
        for step in range(conf.key_steps):
            kn = F.normalize(k, dim=-1)
            cos_pos = torch.einsum("md,mpd->mp", kn, qn)
            loss = torch.zeros(k.shape[0])
            if has_neg:
                n = negatives.shape[1]
                if n > conf.key_negatives:
                    pick = torch.randperm(n, generator=gen)[: conf.key_negatives]
                    neg = negatives[:, pick]
                else:
                    neg = negatives
                cos_neg = torch.einsum("md,mnd->mn", kn, neg)
                pos = torch.exp(cos_pos / tau).mean(1)
                negs = torch.exp(cos_neg / tau).mean(1)
                loss = loss - torch.log(pos / (pos + negs))
            if hinge:
                cos_g = torch.einsum("md,msd->ms", kn, pool)
                loss = loss + conf.hinge_alpha * F.relu(cos_g - conf.hinge_mu_neg).mean(1)
                loss = loss + conf.hinge_alpha * F.relu(conf.hinge_mu_pos - cos_pos).mean(1)
            if partial_n is not None:
                cos_p = torch.einsum("md,mpd->mp", kn, partial_n)
                loss = loss + cfg.partial_subject_weight * F.relu(cos_p - conf.partial_subject_mu).mean(1)
            active &= ~(loss.detach() < conf.key_stop_loss)  # REF: break before stepping
            if not bool(active.any()):
                break
            adam.zero_grad()
            loss[active].sum().backward()
            adam.step(active.view(-1, 1))
            stats["key_steps"] = step + 1
        k = k.detach()
        stats["key_shift"] = round(float(((k - k0).norm(dim=-1) / k0.norm(dim=-1)).mean()), 4)
        stats["key_loss"] = round(float(loss.detach().mean()), 4)
        stats.update(self._hub_check(k))
        return k, stats

    def _hub_check(self, key: torch.Tensor) -> dict[str, Any]:
        """Does ``key`` match some generic token above ``t_layer`` in >= ``t_vote`` layers (it would fire on
        unrelated prompts)?"""
        pool = self._generic()
        max_g = torch.einsum("md,msd->ms", F.normalize(key.float(), dim=-1), pool).amax(1)
        return {"hub": bool(int((max_g > self.cfg.t_layer).sum()) >= self.cfg.t_vote),
                "generic_max_cos": [round(float(x), 3) for x in max_g]}

    # ------------------------------------------------------------------ write path
    def apply(self, facts: Sequence[StoredFact]) -> None:
        """Write facts: one entry per subject (a new fact about a stored subject rebuilds that entry)."""
        if not facts:
            return
        groups: dict[str, list[StoredFact]] = {}
        for stored in facts:
            if not stored.fact.subject or stored.fact.subject not in stored.fact.prompt:
                raise ValueError(f"llp: fact {stored.id}: subject {stored.fact.subject!r} must occur in prompt {stored.fact.prompt!r}")
            groups.setdefault(stored.fact.subject.strip().casefold(), []).append(stored)
        jobs: list[tuple[str, str, list[_FactRec], int, torch.Tensor | None]] = []  # (entry id, subject, facts, seed, kept key)
        applied = self.applied_ids()
        for skey, group in groups.items():
            new = [_FactRec(s.id, s.fact.prompt, s.fact.target) for s in group if s.id not in applied]
            if not new:
                continue
            existing = next((e for e in self._entries.values() if e.subject.strip().casefold() == skey
                             and len(e.facts) < self.config.max_facts_per_entry), None)
            pending: list[_FactRec] = list(existing.facts) if existing else []
            subject = existing.subject if existing else group[0].fact.subject
            if existing is not None:
                self._drop_entry(existing.id)
            while new:
                room = self.config.max_facts_per_entry - len(pending)
                pending, new = pending + new[:room], new[room:]
                eid = hashlib.sha256("\x1f".join(f.id for f in pending).encode()).hexdigest()[:16]
                seed = (self.config.seed * 1_000_003 + int(eid[:8], 16)) % (2**31)
                jobs.append((eid, subject, pending, seed, None))
                pending = []
        if not jobs:
            return
        self._write_entries(jobs)

    def _write_entries(self, jobs: list[tuple[str, str, list[_FactRec], int, torch.Tensor | None]]) -> None:
        was = self.attached
        if was:
            self.detach()
        try:
            values = self._train_values([(facts, seed) for _, _, facts, seed, _ in jobs])
            keys = self._refine_keys(jobs)
            self.last_edit_stats = []
            for (eid, subject, facts, seed, _), (value, vstats), (key, kstats) in zip(jobs, values, keys):
                entry = _Entry(eid, subject, facts, key.cpu(), value.cpu(), seed, {**vstats, **kstats})
                if entry.stats.get("hub"):
                    logger.warning("llp entry %s (subject %r) matches generic text in >= t_vote layers: it may fire on "
                                   "unrelated prompts", eid, subject)
                self._entries[eid] = entry
                self._order.append(eid)
                self._invalidate()
                self.last_edit_stats.append({"entry": eid, "facts": len(facts), **entry.stats})
        finally:
            if was:
                self.attach()

    def _drop_entry(self, eid: str) -> None:
        self._entries.pop(eid, None)
        if eid in self._order:
            self._order.remove(eid)
        self._invalidate()

    def remove(self, fact_ids: Sequence[str], *, active: Sequence[StoredFact]) -> None:
        """Drop facts: an entry left without facts is deleted; a shared entry's value is retrained on the rest
        (its key is kept: keys depend on the subject and prompts' context, not on targets)."""
        gone = set(fact_ids)
        jobs = []
        for eid in list(self._order):
            entry = self._entries[eid]
            if not gone.intersection(entry.fact_ids):
                continue
            rest = [f for f in entry.facts if f.id not in gone]
            self._drop_entry(eid)
            if rest:
                new_id = hashlib.sha256("\x1f".join(f.id for f in rest).encode()).hexdigest()[:16]
                jobs.append((new_id, entry.subject, rest, entry.seed, entry.key))
        if jobs:
            self._write_entries(jobs)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        entries = [self._entries[i] for i in self._order]
        tensors: dict[str, torch.Tensor] = {}
        if entries:
            tensors = {"keys": torch.stack([e.key for e in entries]).cpu(), "values": torch.stack([e.value for e in entries]).cpu()}
        state = {
            "format": 1,
            "layout": self.layout,
            "model_fingerprint": self.model_fingerprint(),
            "entries": [{"id": e.id, "subject": e.subject, "seed": e.seed, "stats": e.stats,
                         "facts": [dataclasses.asdict(f) for f in e.facts]} for e in entries],
        }
        return tensors, state

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> set[str]:
        if state.get("layout") != self.layout:
            raise ValueError(f"llp: stored memory was built for layout {state.get('layout')}, this strategy has {self.layout}; "
                             "keys/values are only valid for the (model, R, z, b) they were built with. Rebuild from the edit memory.")
        if state.get("model_fingerprint") != self.model_fingerprint():
            raise ValueError("llp: stored memory was built on another model (fingerprint mismatch). Rebuild from the edit memory.")
        entries = state.get("entries", [])
        keys, values = tensors.get("keys"), tensors.get("values")
        if entries and (keys is None or values is None or keys.shape[0] != len(entries) or values.shape[0] != len(entries)):
            raise ValueError("llp: stored tensors do not match the stored entry list")
        self._entries, self._order = {}, []
        for i, rec in enumerate(entries):
            entry = _Entry(rec["id"], rec["subject"], [_FactRec(**f) for f in rec["facts"]], keys[i].cpu().float(),
                           values[i].cpu().float(), int(rec["seed"]), dict(rec.get("stats", {})))
            self._entries[entry.id] = entry
            self._order.append(entry.id)
        self._invalidate()
        return self.applied_ids()

    # ------------------------------------------------------------------ inference hooks
    def attach(self) -> None:
        if self.attached:
            return
        self._hooks.add_input_hook(self.model, self._on_model_input)
        for r in self.cfg.retrieval_layers:
            self._hooks.add_output_hook(self.adapter.module("layer", r), self._make_retrieval_hook(r))
        z = self.cfg.injection_layer
        for layer in range(z, self.adapter.num_layers):
            self._hooks.add_input_hook(self.adapter.module("layer", layer), self._make_layer_hook(layer))
        self._hooks.add_output_hook(self.adapter.module("layer", self.adapter.num_layers - 1), self._on_last_output)
        super().attach()

    def detach(self) -> None:
        self._hooks.remove()
        self._state = _ForwardState()
        super().detach()

    @contextmanager
    def query_positions(self, lengths: Sequence[int] | None) -> Iterator[None]:
        """Restrict retrieval to the first ``lengths[row]`` real tokens of each row (the prompt), e.g. to measure the
        leak-free variant of teacher-forced metrics, where the target tokens must not take part in retrieval."""
        old, self._query_lengths = self._query_lengths, (list(lengths) if lengths is not None else None)
        try:
            yield
        finally:
            self._query_lengths = old

    def _markers(self) -> tuple[list[int], list[int]] | None:
        """Token ids opening and closing the user turn in the chat template (None without a template)."""
        if self._chat_markers is False:
            self._chat_markers = None
            tok = self.tokenizer
            if getattr(tok, "chat_template", None):
                try:
                    a = tok.apply_chat_template([{"role": "user", "content": "alpha"}], tokenize=False, add_generation_prompt=True)
                    pre, post = a.split("alpha", 1)
                    pre_ids = tok(pre, add_special_tokens=False)["input_ids"]
                    post_ids = tok(post, add_special_tokens=False)["input_ids"]
                    if pre_ids and post_ids:
                        self._chat_markers = (pre_ids[-3:], post_ids[:1])
                except Exception:  # a template that cannot render a plain user turn: no span restriction
                    self._chat_markers = None
        return self._chat_markers  # type: ignore[return-value]

    def _query_mask(self, input_ids: torch.Tensor | None, attn2d: torch.Tensor, q_len: int) -> torch.Tensor:
        """Positions of the current tokens retrieval may look at: real, not special, not a row's first token, inside
        the last user turn when the input is chat-templated."""
        mask = attn2d[:, -q_len:].bool().clone()
        batch = mask.shape[0]
        first = mask.float().argmax(1)  # first real token (attention sink without BOS)
        mask[torch.arange(batch), first] = False
        if input_ids is not None:
            if self._special_ids.numel():
                mask &= ~torch.isin(input_ids, self._special_ids.to(input_ids.device))
            markers = self._markers() if self.config.query_span == "user" else None
            if markers is not None:
                head, tail = markers
                for row in range(batch):
                    ids = input_ids[row].tolist()
                    start = _find_last(ids, head)
                    if start < 0:
                        continue
                    begin = start + len(head)
                    end = next((i for i in range(begin, len(ids)) if ids[i] == tail[0]), len(ids))
                    keep = torch.zeros_like(mask[row])
                    keep[begin:end] = True
                    mask[row] &= keep
        if self._query_lengths is not None:
            for row, n in enumerate(self._query_lengths[:batch]):
                real = mask.new_zeros(mask.shape[1])
                start = int(first[row])
                real[start : start + int(n)] = True
                mask[row] &= real
        return mask

    def _on_model_input(self, _module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = input_ids if input_ids is not None else embeds
        if ref is None:
            return None
        batch, q_len = ref.shape[0], ref.shape[1]
        past_len = compat.past_length(kwargs)
        attn2d = kwargs.get("attention_mask")
        if attn2d is None or attn2d.dim() != 2:
            attn2d = torch.ones(batch, past_len + q_len, dtype=torch.long, device=ref.device)
        state = self._state
        if past_len == 0 or self._dry_run:
            self._state = state = _ForwardState(attn2d=attn2d, q_len=q_len, prefill=True)
            if not self._dry_run and self._order:
                state.query_mask = self._query_mask(input_ids, attn2d, q_len)
        else:
            state.attn2d, state.q_len, state.prefill, state.injecting_now = attn2d, q_len, False, False
            state.layer_kwargs = None
        return None

    def _make_retrieval_hook(self, layer: int):
        index = self.cfg.retrieval_layers.index(layer)

        def hook(_module, _args, output):
            state = self._state
            if not state.prefill or state.query_mask is None:
                return None
            mats = self._get_matrices()
            if mats is None:
                return None
            keys = mats[0][index]  # [N, d]
            h = F.normalize(hidden_of(output).float(), dim=-1)  # [B, q, d]
            sims = torch.einsum("bqd,nd->bqn", h, keys)
            sims = sims.masked_fill(~state.query_mask[:, :, None], float("-inf"))
            state.scores[layer] = sims.amax(1)  # [B, N]
            return None

        return hook

    def _decide(self) -> None:
        """Votes across retrieval layers -> one entry (or none) per row; the traces go to the current call."""
        state = self._state
        cfg = self.cfg
        mats = self._get_matrices()
        batch = state.attn2d.shape[0]
        n = len(self._order)
        k = min(self.config.top_k, n)
        votes = torch.zeros(batch, n, dtype=torch.long)
        first_vote = torch.full((batch, n), 10**9, dtype=torch.long)
        vote_score = torch.zeros(batch, n)
        per_layer: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        order = 0
        for layer in cfg.retrieval_layers:
            scores = state.scores.get(layer)
            if scores is None:
                continue
            top_v, top_i = scores.detach().float().cpu().topk(k, dim=1)
            per_layer[layer] = (top_v, top_i)
            ok = top_v > cfg.t_layer
            for slot in range(k):
                rows = ok[:, slot].nonzero().squeeze(1)
                if rows.numel():
                    idx = top_i[rows, slot]
                    votes[rows, idx] += 1
                    vote_score[rows, idx] += top_v[rows, slot]
                    first_vote[rows, idx] = torch.minimum(first_vote[rows, idx], torch.full_like(idx, order))
                order += 1
        decisions: list[int | None] = []
        traces: list[EditTrace] = []
        for row in range(batch):
            count = int(votes[row].max()) if n else 0
            winner = None
            if count >= cfg.t_vote:
                cands = (votes[row] == count).nonzero().squeeze(1)
                if cfg.tie_break == "score":
                    winner = int(cands[vote_score[row, cands].argmax()])
                else:
                    winner = int(cands[first_vote[row, cands].argmin()])
            decisions.append(winner)
            traces.append(self._trace(row, winner, votes[row], per_layer))
        state.hit_entries = decisions
        hit = torch.tensor([d is not None for d in decisions], dtype=torch.bool)
        state.hit = hit.to(self.device)
        if bool(hit.any()):
            values = mats[1]
            rows = torch.zeros(batch, cfg.b, values.shape[-1], dtype=values.dtype, device=values.device)
            for row, d in enumerate(decisions):
                if d is not None:
                    rows[row] = values[d]
            state.values = rows
        self.current_call().traces = traces

    def _trace(self, row: int, winner: int | None, votes: torch.Tensor, per_layer: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> EditTrace:
        layers = {}
        for layer, (top_v, top_i) in per_layer.items():
            layers[str(layer)] = [[self._order[int(i)], round(float(s), 4)] for s, i in zip(top_v[row], top_i[row])]
        voted = {self._order[int(i)]: int(votes[i]) for i in votes.nonzero().squeeze(1).tolist()} if votes.numel() else {}
        details: dict[str, Any] = {"layer_scores": layers, "votes": voted, "t_layer": self.cfg.t_layer, "t_vote": self.cfg.t_vote}
        if winner is None:
            return EditTrace(strategy=self.name, details=details)
        entry = self._entries[self._order[winner]]
        score = max((s for scores in layers.values() for e, s in scores if e == entry.id), default=0.0)
        details.update(entry=entry.id, subject=entry.subject, vote_count=int(votes[winner]))
        return EditTrace(strategy=self.name, fact_ids=entry.fact_ids, scores={f: score for f in entry.fact_ids}, details=details)

    def _make_layer_hook(self, layer: int):
        z = self.cfg.injection_layer

        def hook(module, args: tuple, kwargs: dict):
            state = self._state
            if self._dry_run:
                return None
            if layer == z and state.prefill:
                if state.query_mask is None or not state.scores:
                    state.hit = None
                    return None
                self._decide()
                if self._explain_only:
                    state.hit = None
                    raise StopForward  # retrieval only: the layers from z on are not needed
                if not bool(state.hit.any()):
                    return None
            if state.hit is None or not bool(state.hit.any()):
                return None
            hidden, named = self.adapter.layer_arguments(module, args, kwargs)
            if layer == z or state.layer_kwargs is None:
                state.layer_kwargs = self._extend_layer_kwargs(named, state.attn2d.to(hidden.device), state.q_len,
                                                               state.hit, state.prefill, hidden)
                if layer == z and state.prefill:
                    state.injecting_now = True
                    hidden = torch.cat([state.values.to(hidden.dtype), hidden], dim=1)
            return (hidden,), {**named, **state.layer_kwargs}

        return hook

    def _on_last_output(self, _module, _args, output):
        state = self._state
        if state.injecting_now and not self._dry_run:
            return replace_hidden(output, hidden_of(output)[:, self.cfg.b :])
        return None

    # ------------------------------------------------------------------ explain
    def explain(self, prompt: str) -> EditTrace:
        """Retrieval scores per layer (top-k entries), vote counts and the fact ids that would be injected."""
        return self.retrieve([prompt])[0]

    @torch.no_grad()
    def retrieve(self, prompts: Sequence[str], *, batch_size: int = 16) -> list[EditTrace]:
        """The retrieval decision for each prompt (raw text, as tokenised by the tokenizer), without injecting.

        Runs only the layers below ``z`` (batched, left-padded), each batch as its own :meth:`forward_call`.
        """
        if not self._order:
            return [EditTrace(strategy=self.name, details={"note": "memory is empty"}) for _ in prompts]
        was = self.attached
        if not was:
            self.attach()
        traces: list[EditTrace] = []
        self._explain_only = True
        try:
            for lo in range(0, len(prompts), batch_size):
                seqs = [self.tokenizer(p)["input_ids"] for p in prompts[lo : lo + batch_size]]
                ids, mask = pad_batch(seqs, self.tokenizer.pad_token_id or 0, side="left")
                self._state = _ForwardState()
                with self.forward_call() as call:
                    try:
                        self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False)
                    except StopForward:
                        pass
                traces.extend(call.traces or [EditTrace(strategy=self.name) for _ in seqs])
        finally:
            self._explain_only = False
            self._state = _ForwardState()
            if not was:
                self.detach()
        return traces


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


register_strategy(name="llp", config_cls=LLPConfig, strategy_cls=LLPStrategy)
