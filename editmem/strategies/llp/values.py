"""Value training: ``b`` vectors prepended at layer ``z``, trained with the edit loss through layers ``z..L-1``."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from editmem.interventions import hidden_of
from editmem.optim import MaskedAdam
from editmem.shadow import resolve_dtype, shadow_blocks
from editmem.strategies.llp.records import (
    _FactRec,
    _frozen,
    _index_kwargs,
    _ValueBucket,
)
from editmem.tokens import (
    encode_chat_answer,
    encode_prompt_target,
    length_buckets,
    pad_batch,
)


class ValueTraining:
    """Batched value training of a write's entries (the frozen bottom runs once per edit)."""

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
        kw = self._injection.layer_kwargs(_index_kwargs(bucket.kwargs, sel, n_rows), bucket.attn[sel], bucket.attn.shape[1],
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
