"""Config of the ``llp`` strategy: the two presets and the per-model resolution of layers and thresholds."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from editmem.shadow import resolve_dtype
from editmem.strategies.base import StrategyConfig

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
        query_gate="off",
        release_after_target=False,
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
        query_gate="relation",
        release_after_target=True,
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
        query_gate: ``"relation"`` (default preset) checks the whole user turn before an entry fires
            (:mod:`editmem.strategies.gate`): the subject's mention is masked in the turn and in the entry's prompts and
            their sentence embeddings must reach ``gate_relation_threshold``, so other questions about an edited
            subject are answered unedited; ``"off"`` (``paper``) fires on the key's vote alone.
        gate_relation_threshold: cosine the masked turn needs with one of the entry's masked prompts (0.70: on the
            realistic benchmark's first half it let 77 % of paraphrases and 7 % of other questions about the same
            subject through; ZsRE paraphrases 92 %).
        gate_name_route: an entry whose name (subject, surface form, declared alias, acronym) is written in the turn is
            proposed even when the key does not vote for it ("ECB" for ``European Central Bank``).
        gate_similar_names / gate_name_threshold: also propose entries whose subject's embedding is this close to a
            span of the turn. Off: competitors score like aliases ("Germany" / "France" 0.75).
        release_after_target: once a row has generated one of its entry's targets, the injected value is masked for
            the rest of the answer, so the value cannot keep pulling the target back ("Sato, Sato, Sato").
            Default preset on, ``paper`` off.
        query_span: ``"user"`` restricts retrieval to the last user turn when the input is chat-templated (the
            template's fixed tokens are exactly the generic-token triggers); ``"all"`` uses every real token.
        seed: base seed of prefixes and negative sampling (each entry stores its own derived seed).
    """

    runtime_fields: ClassVar[frozenset[str]] = frozenset({"batch_size", "t_layer", "top_k", "t_vote", "tie_break", "query_span",
                                                          "query_gate", "gate_relation_threshold", "gate_name_threshold",
                                                          "gate_name_route", "gate_similar_names", "release_after_target"})

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
    query_gate: str | None = None
    gate_relation_threshold: float = 0.70
    gate_name_threshold: float = 0.80
    gate_name_route: bool = True
    gate_similar_names: bool = False
    release_after_target: bool | None = None
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
        if self.query_gate not in (None, "off", "relation"):
            raise ValueError(f"LLPConfig.query_gate must be 'off' or 'relation', got {self.query_gate!r}")
        for name in ("gate_relation_threshold", "gate_name_threshold"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"LLPConfig.{name} must be in [-1, 1], got {getattr(self, name)}")
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
            query_gate=pick("query_gate"),
            release_after_target=pick("release_after_target"),
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
    query_gate: str
    release_after_target: bool
