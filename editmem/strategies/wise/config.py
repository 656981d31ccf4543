"""Config of the ``wise`` strategy: every hyper-parameter of the WISE spec, two presets, the default layer rule."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from editmem.strategies.base import StrategyConfig

PRESETS = ("default", "paper")
MODES = ("merge", "retrieve")
DISTANCES = ("act_wrapped", "plain")
DECAY_SCOPES = ("masked", "all", "none")
ROUTINGS = ("sticky", "per_call")
SPANS = ("user", "all")
REDUCES = ("max", "mean")
FORGETS = ("shard", "replay")

#: Values of the two presets for the fields left as ``None`` (see :class:`WISEConfig` for the reasoning).
_PRESET_VALUES: dict[str, dict[str, Any]] = {
    # The reference's 7B recipe (hparams/WISE/llama-7b.yaml; spec §9).
    "paper": {"act_margin": [5.0, 20.0, 10.0], "act_ratio": 0.88, "save_freq": 500, "merge_freq": 1000, "n_iter": 70,
              "n_templates": 11, "template_sampling": "greedy", "n_irrelevant": 1, "chat_context": False},
    # SmolLM2-135M-Instruct (spec §10, Appendix A; docs/strategies/wise.md).
    "default": {"act_margin": [10.0, 20.0, 10.0], "act_ratio": 0.8, "save_freq": 100, "merge_freq": 200, "n_iter": 40,
                "n_templates": 6, "template_sampling": "top_k", "n_irrelevant": 8, "chat_context": True},
}


def default_layer(num_layers: int) -> int:
    """The side-memory layer: ~80 % depth (SmolLM2's 30 layers: 24; a 32-layer LLaMA: 26), kept below the last layer
    so that at least one block runs above it (tiny models: the second-to-last layer)."""
    layer = round(0.8 * num_layers)
    return max(0, min(layer, num_layers - 2)) if num_layers >= 2 else 0


@dataclasses.dataclass
class WISEConfig(StrategyConfig):
    """Config of the ``wise`` strategy (WISE, Wang et al. 2024; spec ``WISE.md``).

    Args:
        preset: ``"default"`` (scaled for SmolLM2-135M: margins [10, 20, 10], shards of 100 edits merged in pairs,
            40 steps, top-k sampled templates) or ``"paper"`` (the 7B reference: [5, 20, 10], 500 / 1000, 70 steps,
            greedy templates). Fields left ``None`` take the preset's value.
        layer: decoder layer whose MLP value matrix (``mlp_out``: ``down_proj`` / ``fc_out`` / ``c_proj``) is copied as
            the side memory; None = :func:`default_layer` (~80 % depth).
        mode: ``"merge"`` (WISE-Merge: shards Ties-merged into one side memory; the paper's main results) or
            ``"retrieve"`` (WISE-Retrieve: one memory per merge group, each with its own threshold, routed top-1).
        distance: ``"act_wrapped"`` ``‖σ(aW'ᵀ) − σ(aW0ᵀ)‖`` (reference code; margins were tuned with it) or
            ``"plain"`` ``‖a(W' − W0)ᵀ‖`` (the paper's Eq. 3).
        act_margin: ``[α, β, γ]`` of the routing loss: irrelevant row below α, in-scope rows above β, gap ≥ γ.
            Default preset [10, 20, 10]: at this width the irrelevant row's distance has a floor of ≈ 10, so α = 5
            is never met, the hinge never switches off and early stopping never fires (spec App. A).
        act_ratio: ε = act_ratio · min(recorded in-scope distances) (reference 0.88; default preset 0.8: at T = 10 on
            ZsRE, 0.88 left 1 in 10 edited prompts below ε while 0.8 routed all of them and no locality prompt).
        mask_ratio: ρ, share of the side-memory entries one shard may change (a random mask per shard).
        save_freq: edits per shard (S); merge_freq: edits per merge group (``merge_freq % save_freq == 0``).
        merge_alg: ``"ties"`` (the only one implemented; the paper's best).
        densities: Ties trim density (share of entries kept per task vector); weights: λ total of a merge.
        edit_lr: SGD learning rate (plain SGD, fresh per edit, no momentum; reference 1.0).
        weight_decay: SGD weight decay (reference 1e-5); decay_scope: ``"masked"`` (only where the mask is 1, so
            frozen entries stay exactly W0; default), ``"all"`` (the reference's leak into masked entries) or ``"none"``.
        n_iter: optimisation steps per edit at most (early stop: last two losses within ``stop_delta`` and the last
            ≤ ``stop_loss``).
        norm_constraint: element-wise box ``|W' − W0| ≤ c`` after each step.
        n_templates: context templates per edit (1 = the bare edit only; 11 = the reference's ``"{}"`` + 10 texts).
            Default preset 6: a step costs about half of 11 templates' and ZsRE T = 10 scored no worse (0.56 / 0.56
            against 0.53 / 0.58 token accuracy, docs/strategies/wise.md).
        template_sampling: ``"greedy"`` (reference) or ``"top_k"`` (seeded top-5: greedy continuations of the seeds are
            degenerate on SmolLM2, spec App. A).
        template_seed: seed of the sampled templates (sampled once from the unedited model and stored).
        irrelevant_pool: where the out-of-scope rows come from: ``"auto"`` (``zsre_train_4000.json`` ``loc + " " +
            loc_ans`` when the shared data folder has it, else the shared corpus, else model-sampled text), a dataset
            name (``zsre`` / ``counterfact`` / ``hallucination``: its *training* split), ``"corpus"``, ``"sampled"``,
            or a file path (a benchmark JSON or one text per line). Never the evaluation records.
        irrelevant_max_tokens: the irrelevant row is cut to this many tokens (reference ``max_length`` 30).
        n_irrelevant: irrelevant rows per edit (reference 1). They only run up to the side-memory layer (their
            distance is all the loss uses), so extra rows cost little. Default preset 8: with one NQ row per edit
            the router learned "NQ question or not": after 10 ZsRE edits 60 % of *unedited* ZsRE questions were
            routed to the side memory; with 8 rows 2.5-5 %, locality prompts 0 % (docs/strategies/wise.md).
        chat_context: also train on the chat-templated exchange (the prompt as the user turn, the target as the
            assistant's answer right after the assistant header; :func:`~editmem.tokens.encode_chat_answer`, the row
            llp trains its values on). Its routing score averages over the user turn's content, the span a chat request
            is routed on at prefill (with ``routing_span="all"``: every real token). Default preset on: trained on raw
            ``prompt + " " + target`` rows only, greedy chat answers restated the question and contained the target
            in 1 of 10 ZsRE edits; paper preset off (the reference trains raw rows; its ``use_chat_template`` wraps
            every row instead). No effect for a tokenizer without a chat template.
        chat_end_turn: the chat row also supervises the template's end-of-turn token after the target (as llp's
            ``value_chat_end_turn``), so the greedy answer stops after the target.
        chat_weight: weight of the chat row in ``L_ft`` (the raw rows weigh 1 each). Default 6, as much as the
            default preset's 6 raw rows together: at weight 1 the chat row ended its edit at 1.3-3.1 nats per token
            (the raw rows 0.4-1.3) and greedy chat answers still restated the question.
        routing: ``"sticky"`` (decided at prefill, kept through cached decoding) or ``"per_call"`` (the reference:
            every forward call, i.e. every decoded token, is routed on its own).
        routing_span: ``"user"`` scores only the last user turn when the input is chat-templated (a fixed system
            prompt would otherwise dominate the mean); ``"all"`` every real token.
        long_input_len / long_input_reduce: inputs with more real tokens than this are reduced by ``"max"``
            (reference) instead of the mean.
        forget: ``"shard"`` retrains the fact's shard from its remaining facts (other shards and the merge groups
            are kept; merges are recomputed); ``"replay"`` rewrites every shard from the first changed one on, so
            the state equals a stream that never held the fact (exact, slower).
        seed: base seed of the per-shard gradient masks and of the irrelevant-row choice.
    """

    runtime_fields: ClassVar[frozenset[str]] = frozenset({
        "batch_size", "act_ratio", "routing", "routing_span", "long_input_len", "long_input_reduce", "forget"})

    preset: str = dataclasses.field(default="default", metadata={"help": "default | paper"})
    layer: int | None = dataclasses.field(default=None, metadata={"help": "side-memory layer (None: ~80 % depth)"})
    mode: str = dataclasses.field(default="merge", metadata={"help": "merge | retrieve"})
    distance: str = dataclasses.field(default="act_wrapped", metadata={"help": "act_wrapped | plain"})
    act_margin: list[float] | None = dataclasses.field(default=None, metadata={"help": "[alpha, beta, gamma]"})
    act_ratio: float | None = dataclasses.field(default=None, metadata={"help": "epsilon = act_ratio * min recorded"})
    mask_ratio: float = dataclasses.field(default=0.2, metadata={"help": "rho, share of trainable entries per shard"})
    save_freq: int | None = dataclasses.field(default=None, metadata={"help": "edits per shard"})
    merge_freq: int | None = dataclasses.field(default=None, metadata={"help": "edits per merge group"})
    merge_alg: str = dataclasses.field(default="ties", metadata={"help": "ties"})
    densities: float = dataclasses.field(default=0.53, metadata={"help": "Ties trim density"})
    weights: float = dataclasses.field(default=1.0, metadata={"help": "Ties total weight"})
    edit_lr: float = dataclasses.field(default=1.0, metadata={"help": "SGD learning rate"})
    weight_decay: float = dataclasses.field(default=1e-5, metadata={"help": "SGD weight decay"})
    decay_scope: str = dataclasses.field(default="masked", metadata={"help": "masked | all | none"})
    n_iter: int | None = dataclasses.field(default=None, metadata={"help": "max steps per edit"})
    stop_loss: float = dataclasses.field(default=0.02, metadata={"help": "early stop: loss at most this"})
    stop_delta: float = dataclasses.field(default=1e-4, metadata={"help": "early stop: last two losses this close"})
    norm_constraint: float = dataclasses.field(default=1.0, metadata={"help": "element-wise box around W0"})
    n_templates: int | None = dataclasses.field(default=None, metadata={"help": "context templates per edit (1..11)"})
    template_sampling: str | None = dataclasses.field(default=None, metadata={"help": "greedy | top_k"})
    template_seed: int = 42
    irrelevant_pool: str = dataclasses.field(default="auto", metadata={"help": "auto | zsre | corpus | sampled | PATH"})
    irrelevant_max_tokens: int = 30
    n_irrelevant: int | None = dataclasses.field(default=None, metadata={"help": "irrelevant rows per edit (reference 1)"})
    chat_context: bool | None = dataclasses.field(default=None, metadata={"help": "also train the chat-templated answer"})
    chat_end_turn: bool = dataclasses.field(default=True, metadata={"help": "chat row: supervise the end-of-turn token"})
    chat_weight: float = dataclasses.field(default=6.0, metadata={"help": "weight of the chat row in L_ft"})
    routing: str = dataclasses.field(default="sticky", metadata={"help": "sticky | per_call"})
    routing_span: str = dataclasses.field(default="user", metadata={"help": "user | all"})
    long_input_len: int = 100
    long_input_reduce: str = dataclasses.field(default="max", metadata={"help": "max | mean"})
    forget: str = dataclasses.field(default="shard", metadata={"help": "shard | replay"})
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ValueError(f"WISEConfig.preset must be one of {PRESETS}, got {self.preset!r}")
        for name, value in _PRESET_VALUES[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, list(value) if isinstance(value, list) else value)
        for name, allowed in (("mode", MODES), ("distance", DISTANCES), ("decay_scope", DECAY_SCOPES),
                              ("routing", ROUTINGS), ("routing_span", SPANS), ("long_input_reduce", REDUCES),
                              ("forget", FORGETS), ("template_sampling", ("greedy", "top_k")), ("merge_alg", ("ties",))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"WISEConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        self.act_margin = [float(x) for x in self.act_margin]  # type: ignore[union-attr]
        if len(self.act_margin) != 3 or min(self.act_margin) < 0:
            raise ValueError(f"WISEConfig.act_margin must be three non-negative numbers [alpha, beta, gamma], got {self.act_margin}")
        if self.layer is not None and self.layer < 0:
            raise ValueError(f"WISEConfig.layer must be >= 0, got {self.layer}")
        if not 0.0 < self.act_ratio <= 1.0:
            raise ValueError(f"WISEConfig.act_ratio must be in (0, 1], got {self.act_ratio}")
        if not 0.0 < self.mask_ratio <= 1.0:
            raise ValueError(f"WISEConfig.mask_ratio must be in (0, 1], got {self.mask_ratio}")
        if self.save_freq < 1 or self.merge_freq < 1 or self.merge_freq % self.save_freq:  # type: ignore[operator]
            raise ValueError(f"WISEConfig: save_freq >= 1 and merge_freq a multiple of it, got {self.save_freq} / {self.merge_freq}")
        if not 0.0 < self.densities <= 1.0 or self.weights <= 0:
            raise ValueError(f"WISEConfig: densities in (0, 1] and weights > 0, got {self.densities} / {self.weights}")
        if self.edit_lr <= 0 or self.weight_decay < 0 or self.norm_constraint <= 0:
            raise ValueError("WISEConfig: edit_lr and norm_constraint must be > 0, weight_decay >= 0")
        if self.n_iter < 1 or not 1 <= self.n_templates <= 11:  # type: ignore[operator]
            raise ValueError(f"WISEConfig: n_iter >= 1 and n_templates in 1..11, got {self.n_iter} / {self.n_templates}")
        if self.chat_weight <= 0:
            raise ValueError(f"WISEConfig.chat_weight must be > 0, got {self.chat_weight}")
        if self.irrelevant_max_tokens < 2 or self.long_input_len < 1 or self.n_irrelevant < 1:
            raise ValueError("WISEConfig: irrelevant_max_tokens >= 2, long_input_len >= 1 and n_irrelevant >= 1")

    @property
    def shards_per_merge(self) -> int:
        """k = merge_freq / save_freq."""
        return int(self.merge_freq // self.save_freq)  # type: ignore[operator]
