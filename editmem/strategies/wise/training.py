"""One WISE edit (spec §4): the batch, the frozen bottom run once, and masked SGD on the shard's matrix.

Exact speed-ups (spec §10), same objective up to rounding:

* the network below the side memory (embeddings … layer ``L`` up to the input of its value matrix) does not depend
  on the trained matrix, so it runs **once per edit**: the value matrix's input ``a`` and the output ``h_L`` of
  layer ``L`` are kept, and each step computes ``h_L + (a W'ᵀ − a W0ᵀ)`` and runs only layers ``L+1 …``;
* the LM head runs only at the positions that predict target tokens; the irrelevant row never goes above ``L``
  (only its distance is used).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
import torch.nn.functional as F

from editmem.interventions import capture, read_layers
from editmem.strategies.wise.routing import margin_loss, reduce_rows, token_distance, user_span
from editmem.tokens import encode_chat_answer, encode_prompt_target, pad_batch


@dataclasses.dataclass
class EditBatch:
    """The rows of one edit: templated ``prompt + " " + target`` rows, optionally the chat-templated answer (all
    right-padded), and the irrelevant rows."""

    ids: torch.Tensor  # [R, T]
    attn: torch.Tensor  # [R, T]
    score_mask: torch.Tensor  # [R, T] bool: the tokens each row's routing score averages over
    label_rows: torch.Tensor  # [P] row of each predicted target token
    label_pos: torch.Tensor  # [P] position whose logits predict it
    label_ids: torch.Tensor  # [P]
    n_targets: torch.Tensor  # [R] target tokens per row
    irr_ids: torch.Tensor  # [n, Ti] irrelevant rows (right-padded)
    irr_attn: torch.Tensor  # [n, Ti]
    chat_row: int | None = None  # index of the chat-templated row, if any


def build_batch(tokenizer, templates: list[str], prompt: str, target: str, irrelevant: list[str], max_irrelevant: int,
                *, chat: bool = False, end_turn: bool = True, markers: tuple[list[int], list[int]] | None = None) -> EditBatch:
    """Rows ``template.format(prompt) + " " + target`` for each template (prompt/target boundary from
    :func:`~editmem.tokens.encode_prompt_target`, per row, so no padding arithmetic is involved: pitfall 8).

    With ``chat`` (and a tokenizer with a chat template) one more row: ``prompt`` as the user turn of the chat template
    and ``target`` as the assistant's answer (:func:`~editmem.tokens.encode_chat_answer`, with ``end_turn`` the
    template's end-of-turn token after it), so that a greedy chat answer starts with the target and stops after it.
    Its routing score averages over the user turn's content only (``markers``:
    :func:`~editmem.strategies.wise.routing.chat_markers`; ``None``, as with ``routing_span="all"``: the whole
    generation prompt, answer excluded): the tokens a chat request is routed on at prefill. The raw rows score every
    real token, as a raw (teacher-forced) input is scored at inference.
    """
    encs = [encode_prompt_target(tokenizer, template.format(prompt), target) for template in templates]
    chat_row = None
    if chat and getattr(tokenizer, "chat_template", None):
        chat_row = len(encs)
        encs.append(encode_chat_answer(tokenizer, prompt, target, end_turn=end_turn))
    seqs, rows, pos, lab, counts = [], [], [], [], []
    for r, enc in enumerate(encs):
        seqs.append(enc.input_ids)
        for t in range(enc.start, len(enc.input_ids)):
            rows.append(r)
            pos.append(t - 1)
            lab.append(enc.input_ids[t])
        counts.append(len(enc.input_ids) - enc.start)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, attn = pad_batch(seqs, pad, side="right")
    score_mask = attn.bool().clone()
    if chat_row is not None:  # what a chat request is scored on at prefill: its user turn, else its whole prompt
        head = encs[chat_row].start
        span = user_span(encs[chat_row].input_ids[:head], markers) or (0, head)
        score_mask[chat_row] = False
        score_mask[chat_row, span[0]:span[1]] = True
    irr_ids, irr_attn = pad_batch([tokenizer(t)["input_ids"][:max_irrelevant] for t in irrelevant], pad, side="right")
    return EditBatch(ids, attn, score_mask, torch.tensor(rows), torch.tensor(pos), torch.tensor(lab),
                     torch.tensor(counts, dtype=torch.float32), irr_ids, irr_attn, chat_row)


@dataclasses.dataclass
class Bottom:
    """What the frozen bottom produced for one edit."""

    a: torch.Tensor  # [R, T, d_ff] input of the value matrix, templated rows
    o0: torch.Tensor  # [R, T, d] its output with W0
    h: torch.Tensor  # [R, T, d] output of layer L
    kwargs: dict[str, Any] | None  # what layer L+1 is called with (None: L is the last layer)
    a_irr: torch.Tensor  # [n, Ti, d_ff]
    o0_irr: torch.Tensor


@torch.no_grad()
def run_bottom(model, adapter, layer: int, batch: EditBatch, device: torch.device) -> Bottom:
    module = adapter.module("mlp_out", layer)
    top = layer + 1 if layer + 1 < adapter.num_layers else None
    with capture({"a": module}, what="input") as a_seen, capture({"o": module}) as o_seen:
        seen = read_layers(model, adapter, batch.ids.to(device), batch.attn.to(device), outputs=[layer], input_of=top)
        a, o0 = a_seen["a"], o_seen["o"]
        read_layers(model, adapter, batch.irr_ids.to(device), batch.irr_attn.to(device), outputs=[layer])
        a_irr, o0_irr = a_seen["a"], o_seen["o"]
    h = seen["outputs"][layer]
    return Bottom(a=a, o0=o0, h=h, kwargs=seen.get("kwargs") if top is not None else None, a_irr=a_irr, o0_irr=o0_irr)


class EditTrainer:
    """Trains one fact into a shard matrix (``W`` starts from the shard's current matrix, ``W0`` is frozen)."""

    def __init__(self, model, adapter, layer: int, config, sigma):
        self.model, self.adapter, self.layer, self.cfg, self.sigma = model, adapter, layer, config, sigma
        module = adapter.module("mlp_out", layer)
        bias = getattr(module, "bias", None)
        self.bias = bias.detach() if isinstance(bias, torch.Tensor) else None

    def linear(self, a: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return F.linear(a, W, self.bias)

    def upper_loss(self, bottom: Bottom, batch: EditBatch, o_side: torch.Tensor) -> torch.Tensor:
        """``L_ft``: mean over rows of (target-token NLL summed / number of target tokens), layers above L only; the
        chat row counts ``chat_weight`` times."""
        hidden = bottom.h + (o_side - bottom.o0)
        if bottom.kwargs is not None:
            hidden = self.adapter.run_layers(hidden, bottom.kwargs, start=self.layer + 1)
        dev = hidden.device
        picked = hidden[batch.label_rows.to(dev), batch.label_pos.to(dev)]  # [P, d]
        logits = self.adapter.lm_head(self.adapter.final_norm(picked)).float()
        nll = F.cross_entropy(logits, batch.label_ids.to(dev), reduction="none")
        per_row = torch.zeros(len(batch.n_targets), device=dev).index_add(0, batch.label_rows.to(dev), nll)
        per_row = per_row / batch.n_targets.to(dev)
        self.last_row_nll = per_row.detach()
        if batch.chat_row is None or self.cfg.chat_weight == 1.0:
            return per_row.mean()
        w = torch.ones_like(per_row)
        w[batch.chat_row] = self.cfg.chat_weight
        return (per_row * w).sum() / w.sum()

    def scores(self, bottom: Bottom, batch: EditBatch, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(o_side, d_in [R], d_out [n])`` with the same reduction the router uses (mean over the scored tokens:
        every real token of a raw row, the user turn's content of the chat row)."""
        o_side = self.linear(bottom.a, W)
        mask = batch.score_mask.to(o_side.device)
        d_in = reduce_rows(token_distance(o_side, bottom.o0, self.sigma), mask)
        o_irr = self.linear(bottom.a_irr, W)
        d_out = reduce_rows(token_distance(o_irr, bottom.o0_irr, self.sigma), batch.irr_attn.to(o_irr.device).bool())
        return o_side, d_in, d_out

    def train(self, W: torch.Tensor, W0: torch.Tensor, mask: torch.Tensor, batch: EditBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.cfg
        t0 = time.perf_counter()
        bottom = run_bottom(self.model, self.adapter, self.layer, batch, W0.device)
        t_bottom = time.perf_counter() - t0
        W = W.detach().clone().requires_grad_(True)
        maskf = mask.to(W.dtype)
        lo, hi = W0 - cfg.norm_constraint, W0 + cfg.norm_constraint
        losses: list[float] = []
        parts: dict[str, float] = {}
        steps = 0
        for _ in range(cfg.n_iter):
            o_side, d_in, d_out = self.scores(bottom, batch, W)
            l_ft = self.upper_loss(bottom, batch, o_side)
            l_act, parts = margin_loss(d_in, d_out, cfg.act_margin)
            loss = l_ft + l_act
            losses.append(float(loss.detach()))
            parts.update(ft=float(l_ft.detach()), d_in_min=float(d_in.detach().min()), d_out=float(d_out.detach().max()))
            if len(losses) >= 2 and abs(losses[-2] - losses[-1]) <= cfg.stop_delta and losses[-1] <= cfg.stop_loss:
                break
            W.grad = None
            loss.backward()
            with torch.no_grad():
                grad = W.grad * maskf  # the mask acts on the gradient, before the step (pitfall 5)
                if cfg.weight_decay and cfg.decay_scope != "none":
                    decay = W * maskf if cfg.decay_scope == "masked" else W
                    grad = grad + cfg.weight_decay * decay
                W.sub_(cfg.edit_lr * grad)
                torch.maximum(torch.minimum(W, hi, out=W), lo, out=W)
            steps += 1
        W = W.detach()
        with torch.no_grad():  # the recorded activation: after the last step (spec §4.4, recommended form)
            _, d_in, d_out = self.scores(bottom, batch, W)
        chat_ft = float(self.last_row_nll[batch.chat_row]) if batch.chat_row is not None else None
        stats = {"steps": steps, "ft_chat": chat_ft, "loss": losses[-1], "loss_first": losses[0], "act": float(d_in.mean()),
                 "act_min_row": float(d_in.min()), "d_irrelevant": float(d_out.max()), "ft": parts.get("ft"),
                 "bottom_s": t_bottom, "train_s": time.perf_counter() - t0}
        return W, stats
