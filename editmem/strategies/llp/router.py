"""Inference: retrieval on the prompt, the vote, injection at layer ``z`` kept through cached decoding, explain."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from editmem.adapters import compat
from editmem.interventions import StopForward, hidden_of, replace_hidden
from editmem.strategies.base import EditTrace
from editmem.strategies.llp.records import _find_last, _ForwardState
from editmem.tokens import pad_batch


class Router:
    """The inference hooks of the ``llp`` strategy: retrieve once per prompt (prefill), inject, report traces."""

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
                state.input_ids = input_ids
        else:
            state.attn2d, state.q_len, state.prefill, state.injecting_now = attn2d, q_len, False, False
            state.layer_kwargs = None
            if input_ids is not None and state.targets and state.released is not None:
                self._track_release(state, input_ids)
        return None

    def _track_release(self, state: _ForwardState, input_ids: torch.Tensor) -> None:
        """Record the tokens fed back on a decode step; a row that has generated one of its targets and the token
        after it is released (its value masked from this step on, ``release_after_target``)."""
        for row, ids in enumerate(input_ids.tolist()):
            if row >= len(state.targets) or not state.targets[row] or bool(state.released[row]):
                continue
            state.generated[row].extend(ids)
            done = state.generated[row][:-1]  # the step fed the target's last token still sees the value: it was
            # trained to end the answer there (value_chat_end_turn); the token after it is the first one released
            if any(len(t) <= len(done) and done[-len(t):] == t for t in state.targets[row]):
                state.released[row] = True

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
        call = self.current_call()
        dead = self._out_of_force(call.exclude)
        order = 0
        for layer in cfg.retrieval_layers:
            scores = state.scores.get(layer)
            if scores is None:
                continue
            if dead is not None:  # facts not in force at the call's as_of: their entries never win
                scores = scores.masked_fill(dead.to(scores.device)[None, :], float("-inf"))
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
        gate = self._gate()
        for row in range(batch):
            count = int(votes[row].max()) if n else 0
            winner = None
            if count >= cfg.t_vote:
                cands = (votes[row] == count).nonzero().squeeze(1)
                if cfg.tie_break == "score":
                    winner = int(cands[vote_score[row, cands].argmax()])
                else:
                    winner = int(cands[first_vote[row, cands].argmin()])
            gate_details = None
            if gate is not None:
                winner, gate_details = self._gate_decision(gate, row, votes[row], vote_score[row], dead)
            decisions.append(winner)
            trace = self._trace(row, winner, votes[row], per_layer)
            if gate_details is not None:
                trace.details["gate"] = gate_details
            traces.append(trace)
        state.hit_entries = decisions
        if cfg.release_after_target:
            state.targets = [self._target_ids(d) for d in decisions]
            state.generated = [[] for _ in decisions]
            state.released = torch.zeros(batch, dtype=torch.bool)
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

    # ------------------------------------------------------------------ query gate, release
    def _gate(self):
        """The query gate (None when ``query_gate`` is off), its items in step with the entries."""
        if self.cfg.query_gate != "relation":
            return None
        from editmem.strategies.gate import GateItem, QueryGate, names_of

        conf = self.config
        if self._query_gate is None:
            self._query_gate = QueryGate(conf.gate_relation_threshold, conf.gate_name_threshold, conf.gate_name_route)
        gate = self._query_gate
        gate.relation_threshold, gate.name_threshold, gate.name_route, gate.similar_names = (
            conf.gate_relation_threshold, conf.gate_name_threshold, conf.gate_name_route, conf.gate_similar_names)
        if self._gate_stale:
            items = []
            for eid in self._order:
                entry = self._entries[eid]
                surfaces = [f.surface for f in entry.facts if f.surface]
                aliases = [a for f in entry.facts for a in f.aliases]
                items.append(GateItem(eid, entry.subject, names_of(entry.subject, surfaces, aliases),
                                      tuple(f.prompt for f in entry.facts)))
            gate.set_items(items)
            self._gate_stale = False
        return gate

    def _query_text(self, row: int) -> str:
        """The text retrieval looked at in ``row`` (the user turn of the prompt), decoded."""
        state = self._state
        if state.input_ids is None or state.query_mask is None:
            return ""
        row_ids = state.input_ids[row].tolist()
        keep = state.query_mask[row].nonzero().squeeze(1).tolist()
        if not keep:
            return ""
        first = keep[0] - 1  # retrieval skips a row's first real token (the attention sink); the text keeps it
        real = state.attn2d[row, -len(row_ids):] if state.attn2d is not None else None
        if first >= 0 and (real is None or bool(real[first])) and row_ids[first] not in set(self._special_ids.tolist()):
            keep = [first, *keep]
        return self.tokenizer.decode([row_ids[i] for i in keep], skip_special_tokens=True).strip()

    def _gate_decision(self, gate, row: int, votes: torch.Tensor, score: torch.Tensor,
                       dead: torch.Tensor | None) -> tuple[int | None, dict[str, Any]]:
        """The gate's winner for ``row``: entries the key voted for (``t_vote`` or more) are proposed, best first."""
        proposed = [int(i) for i in (votes >= self.cfg.t_vote).nonzero().squeeze(1).tolist()]
        proposed.sort(key=lambda i: (-int(votes[i]), -float(score[i])))
        decision = gate.decide(self._query_text(row), proposed)
        winner = decision.winner
        if winner is not None and dead is not None and bool(dead[winner]):
            winner = None  # the name route proposed a fact not in force at the call's as_of
        details = decision.details(gate.relation_threshold)
        details["key_proposed"] = [self._order[i] for i in proposed]
        return winner, details

    def _target_ids(self, entry: int | None) -> list[list[int]]:
        """Token ids of the targets of entry ``entry`` as they follow a prompt (with and without a leading space)."""
        if entry is None:
            return []
        out = []
        for fact in self._entries[self._order[entry]].facts:
            for text in (f" {fact.target}", fact.target):
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                if ids and ids not in out:
                    out.append(ids)
        return out

    def _out_of_force(self, exclude: frozenset[str]) -> torch.Tensor | None:
        """``[N]`` mask of the entries all of whose facts are in ``exclude`` (None when none is)."""
        if not exclude:
            return None
        dead = torch.tensor([set(self._entries[eid].fact_ids) <= exclude for eid in self._order], dtype=torch.bool)
        return dead if bool(dead.any()) else None

    def _trace(self, row: int, winner: int | None, votes: torch.Tensor, per_layer: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> EditTrace:
        layers = {}
        for layer, (top_v, top_i) in per_layer.items():
            layers[str(layer)] = [[self._order[int(i)], round(float(s), 4)] for s, i in zip(top_v[row], top_i[row])]
        voted = {self._order[int(i)]: int(votes[i]) for i in votes.nonzero().squeeze(1).tolist()} if votes.numel() else {}
        details: dict[str, Any] = {"layer_scores": layers, "votes": voted, "t_layer": self.cfg.t_layer, "t_vote": self.cfg.t_vote}
        as_of = self.current_call().as_of
        if as_of is not None:
            details["as_of"] = as_of.isoformat()
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
                hit = state.hit
                if not state.prefill and state.released is not None and bool(state.released.any()):
                    hit = hit & ~state.released.to(hit.device)  # released rows no longer see the value
                state.layer_kwargs = self._injection.layer_kwargs(named, state.attn2d.to(hidden.device), state.q_len,
                                                               hit, state.prefill, hidden)
                if layer == z and state.prefill:
                    state.injecting_now = True
                    hidden = self._injection.prepend(hidden, state.values)
            return (hidden,), {**named, **state.layer_kwargs}

        return hook

    def _on_last_output(self, _module, _args, output):
        state = self._state
        if state.injecting_now and not self._dry_run:
            return replace_hidden(output, self._injection.strip(hidden_of(output)))
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
