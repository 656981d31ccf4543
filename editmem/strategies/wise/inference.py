"""Inference: route each request once at prefill on its prompt, keep the chosen memory through cached decoding.

Hooks (through :class:`~editmem.interventions.HookSet`): a pre-hook on the model records which tokens of the call
count (real tokens; the last user turn of a chat-templated input) and whether it is a prefill; a forward hook on the
side-memory layer's value matrix scores every candidate memory against ``W0`` on those tokens, decides per row, and
replaces that module's output for the rows routed to a side memory. A row routed to the main memory is left
untouched, so with no edits (or no hit) the forward is bit-identical to the base model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from editmem.adapters import compat
from editmem.interventions import hidden_of, read_layers
from editmem.strategies.base import EditTrace
from editmem.strategies.wise.memory import Candidate
from editmem.strategies.wise.routing import chat_markers, choose, reduce_rows, token_distance, user_span


@dataclasses.dataclass
class _Route:
    """Per-thread state of one request (a generate call or a single forward)."""

    mask: torch.Tensor | None = None  # [B, q] positions of the current call that vote
    prefill: bool = True
    choices: list[int | None] | None = None  # per row: index into candidates, None = main memory
    candidates: list[Candidate] | None = None


class Router:
    """The inference side of :class:`~editmem.strategies.wise.WISEStrategy`."""

    # -- hooks ------------------------------------------------------------------------------------
    def attach(self) -> None:
        if self.attached:
            return
        self._hooks.add_input_hook(self.model, self._on_model_input)
        self._hooks.add_output_hook(self.adapter.module("mlp_out", self.layer), self._on_value_output)
        super().attach()

    def detach(self) -> None:
        self._hooks.remove()
        self._tls.route = None
        super().detach()

    def begin_forward(self) -> None:
        self._tls.route = None

    def _chat_markers(self) -> tuple[list[int], list[int]] | None:
        """Token ids that open and close the user turn in the chat template (None without one)."""
        if self._markers is False:
            self._markers = chat_markers(self.tokenizer)
        return self._markers  # type: ignore[return-value]

    def _vote_mask(self, input_ids: torch.Tensor | None, attn2d: torch.Tensor, q_len: int) -> torch.Tensor:
        """Positions of the current tokens that are scored: real tokens; only the last user turn's content when the
        input is chat-templated and ``routing_span == "user"`` (:func:`~editmem.strategies.wise.routing.user_span`,
        the span the chat-templated edit row is scored on)."""
        mask = attn2d[:, -q_len:].bool().clone()
        markers = self._chat_markers() if self.config.routing_span == "user" and input_ids is not None else None
        if markers is None:
            return mask
        for row in range(mask.shape[0]):
            span = user_span(input_ids[row].tolist(), markers)
            if span is not None:
                keep = torch.zeros_like(mask[row])
                keep[span[0]:span[1]] = True
                mask[row] &= keep
        return mask

    def _on_model_input(self, _module, args: tuple, kwargs: dict) -> None:
        if self._passive:
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        ref = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if ref is None:
            return
        batch, q_len = ref.shape[0], ref.shape[1]
        past = compat.past_length(kwargs)
        attn2d = kwargs.get("attention_mask")
        if not (isinstance(attn2d, torch.Tensor) and attn2d.dim() == 2):
            attn2d = torch.ones(batch, past + q_len, dtype=torch.long, device=ref.device)
        route = getattr(self._tls, "route", None)
        sticky = self.config.routing == "sticky"
        if past == 0 or route is None or not sticky or route.choices is None:
            self._tls.route = _Route(mask=self._vote_mask(input_ids, attn2d, q_len), prefill=True)
        else:
            route.prefill = False
        return

    def _on_value_output(self, module, args: tuple, output: Any):
        if self._passive:
            return None
        cands = self.memory_state.candidates(self.config.act_ratio)
        route = getattr(self._tls, "route", None)
        a = args[0]
        o0 = hidden_of(output)
        if route is None:  # a forward that bypassed the model's pre-hook: score every token of it
            route = self._tls.route = _Route(mask=torch.ones(a.shape[:2], dtype=torch.bool, device=a.device))
        if route.prefill:
            if not cands:
                route.choices, route.candidates = [None] * a.shape[0], []
                self.current_call().traces = [self._trace({}, [], None) for _ in range(a.shape[0])]
                return None
            outs, choices, traces = self.route_rows(a, o0, route.mask.to(a.device), cands)
            route.choices, route.candidates = choices, cands
            self.current_call().traces = traces
        else:
            outs = {}
        choices, cands = route.choices or [], route.candidates or []
        if all(c is None for c in choices):
            return None
        new = o0.clone()
        for i, cand in enumerate(cands):
            rows = [r for r, c in enumerate(choices) if c == i]
            if rows:
                idx = torch.tensor(rows, device=a.device)
                side = outs[i][idx] if i in outs else F.linear(a[idx], cand.weight, self._trainer().bias)
                new[idx] = side.to(new.dtype)
        return new if not isinstance(output, tuple) else (new, *output[1:])

    # -- the decision -------------------------------------------------------------------------------
    def route_rows(self, a: torch.Tensor, o0: torch.Tensor, mask: torch.Tensor, cands: list[Candidate]
                   ) -> tuple[dict[int, torch.Tensor], list[int | None], list[EditTrace]]:
        """Score every candidate per row (same distance and reduction as at edit time) and choose top-1 above ε."""
        trainer = self._trainer()
        outs, per_cand = {}, []
        for i, cand in enumerate(cands):
            o = F.linear(a, cand.weight.to(a.dtype), trainer.bias)
            outs[i] = o
            d = token_distance(o.float(), o0.float(), self.sigma)
            per_cand.append(reduce_rows(d, mask, long_len=self.config.long_input_len, long_reduce=self.config.long_input_reduce))
        choices, traces = [], []
        for row in range(a.shape[0]):
            scores = {c.name: float(per_cand[i][row]) for i, c in enumerate(cands)}
            pick = choose(scores, cands)
            choices.append(pick)
            traces.append(self._trace(scores, cands, pick))
        return outs, choices, traces

    def _trace(self, scores: dict[str, float], cands: list[Candidate], pick: int | None) -> EditTrace:
        details: dict[str, Any] = {
            "fired": pick is not None, "layer": self.layer, "mode": self.config.mode, "routing": self.config.routing,
            "candidates": {c.name: {"score": round(scores[c.name], 4), "epsilon": round(c.epsilon, 4), "shards": c.shards}
                           for c in cands},
        }
        if pick is None:
            best = max(cands, key=lambda c: scores[c.name], default=None)
            if best is not None:
                details.update(score=round(scores[best.name], 4), epsilon=round(best.epsilon, 4))
            return EditTrace(strategy=self.name, details=details)
        cand = cands[pick]
        details.update(memory=cand.name, score=round(scores[cand.name], 4), epsilon=round(cand.epsilon, 4), shards=cand.shards)
        return EditTrace(strategy=self.name, fact_ids=list(cand.fact_ids), scores={f: scores[cand.name] for f in cand.fact_ids},
                         details=details)

    # -- explain ------------------------------------------------------------------------------------
    @torch.no_grad()
    def explain(self, prompt: str) -> EditTrace:
        """The routing decision for ``prompt`` (raw text): every candidate memory's score against its ε, which memory
        (and in Retrieve mode which group's shards) would answer, and the facts it holds."""
        cands = self.memory_state.candidates(self.config.act_ratio)
        if not cands:
            return self._trace({}, [], None)
        ids = torch.tensor([self.tokenizer(prompt)["input_ids"]], device=self.device)
        module = self.adapter.module("mlp_out", self.layer)
        from editmem.interventions import capture

        was, self._passive = self._passive, True
        try:
            with capture({"a": module}, what="input") as a_seen, capture({"o": module}) as o_seen:
                read_layers(self.model, self.adapter, ids, None, outputs=[self.layer])
        finally:
            self._passive = was
        mask = self._vote_mask(ids, torch.ones_like(ids), ids.shape[1])
        _, _, traces = self.route_rows(a_seen["a"], o_seen["o"], mask, cands)
        return traces[0]
