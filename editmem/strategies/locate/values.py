"""Target hidden values ``z*`` at the last edited layer (LYAPLOCK.md §3, the references' ``compute_z``).

For each edit a vector ``δ`` is added to the output of block ``z_layer`` at the subject's last token of every
row (six rewriting contexts + the KL row ``"{subject} is a"``) and optimised with Adam on
``NLL(target) + kl_factor·KL(P_now‖P_0) + v_weight_decay·‖δ‖/‖h_init‖²``, projected back into the ball
``‖δ‖ ≤ clamp_norm_factor·‖h_init‖`` after each step; it stops when the loss drops below ``loss_stop`` and,
on the last iteration, without stepping. ``z* = h_init + δ``.

Exact cost savings: the blocks below ``z_layer`` do not depend on ``δ`` and run once
(:func:`~editmem.strategies.locate.forward.skip_bottom`); the forward stops at the final norm (the model's own LM
head never runs) and the head is applied only at label positions and the KL position; several edits are optimised
in one batch. Edits never interact: each ``δ_i`` only enters its own rows, the loss is a sum over edits, Adam is
elementwise with one shared step count, and an edit that met its stopping rule is frozen and its rows dropped. So
the batched result equals running the reference per edit.

Faster, same function of ``δ`` up to rounding (both off in :class:`ValueParams` by default, on in the strategy):

* ``prefix_cache`` — positions before a row's lookup token do not depend on ``δ`` in any block above
  ``z_layer`` (causal attention), so their keys/values are recorded once and each step runs only the positions
  from the lookup token on (:class:`_PrefixTop`): on ZsRE rows 5-6 of ~21 positions per row.
* ``train_dtype="bfloat16"`` — the blocks above ``z_layer`` and the LM head run as bf16 shadows
  (:mod:`editmem.shadow`, whose attention runs in fp32); ``δ``, Adam, the loss and
  the KL stay fp32.

With ``train_dtype="float32"`` and ``prefix_cache=False`` the computation is the reference one, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from editmem.adapters import compat
from editmem.injection import add_at_positions
from editmem.interventions import HookSet, StopForward, hidden_of, read_layers
from editmem.optim import MaskedAdam
from editmem.shadow import resolve_dtype, shadow_of, shadowed_layers
from editmem.strategies.locate.forward import pad_id_of, right_pad, skip_bottom
from editmem.strategies.locate.requests import EditRequest, build_rows


@dataclass(frozen=True)
class ValueParams:
    """Hyper-parameters of the target-value optimisation (names as in the reference configs)."""

    v_lr: float = 0.1
    v_num_grad_steps: int = 20
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    loss_stop: float = 5e-2
    #: precision of the frozen blocks above ``z_layer`` and of the LM head during the optimisation (``float32`` =
    #: the reference computation; ``bfloat16`` = shadows, ~1.5x faster per step on the 2-core CPU, more with
    #: ``prefix_cache``)
    train_dtype: str = "float32"
    #: record the upper blocks' keys/values of the positions before each row's lookup token once (they do not
    #: depend on ``δ``) and run only the positions from the lookup token on per step: the same function of ``δ``,
    #: ~4x fewer tokens per step on ZsRE rows; rounding differs from the full forward (other matrix shapes)
    prefix_cache: bool = False

    def __post_init__(self) -> None:
        resolve_dtype(self.train_dtype, field="ValueParams.train_dtype")


@dataclass
class ValueResult:
    """``z`` [d_model, n] targets; per-edit diagnostics (final loss, target probability, steps, ‖δ‖/‖h‖)."""

    z: torch.Tensor
    h_init: torch.Tensor
    loss: list[float]
    nll: list[float]
    steps: list[int]
    delta_ratio: list[float]


def compute_values(
    model,
    tokenizer,
    adapter,
    requests: Sequence[EditRequest],
    templates: Sequence[Sequence[str]],
    z_layer: int,
    params: ValueParams = ValueParams(),
    *,
    chunk: int = 8,
) -> ValueResult:
    """``z*`` for every request, optimised against the model as it is now (spec §3)."""
    parts = [_compute_chunk(model, tokenizer, adapter, requests[i : i + chunk], templates, z_layer, params)
             for i in range(0, len(requests), chunk)]
    return ValueResult(
        z=torch.cat([p.z for p in parts], dim=1),
        h_init=torch.cat([p.h_init for p in parts], dim=1),
        loss=[x for p in parts for x in p.loss],
        nll=[x for p in parts for x in p.nll],
        steps=[x for p in parts for x in p.steps],
        delta_ratio=[x for p in parts for x in p.delta_ratio],
    )


def _compute_chunk(model, tokenizer, adapter, requests, templates, z_layer, params: ValueParams) -> ValueResult:
    device = next(model.parameters()).device
    rows, owner, bare, kl_row = [], [], [], []
    for i, req in enumerate(requests):
        req_rows = build_rows(tokenizer, req, templates, with_target=True)
        bare.append(len(rows))
        kl_row.append(len(rows) + len(req_rows) - 1)
        rows.extend(req_rows)
        owner.extend([i] * len(req_rows))
    n = len(requests)
    ids, mask = right_pad([r.ids for r in rows], pad_id_of(tokenizer), device)
    lookup = torch.tensor([r.lookup for r in rows], device=device)
    owner_t = torch.tensor(owner, device=device)

    # bottom run, once: block z_layer's output (and its output structure, for the stubs) and its input arguments
    seen = read_layers(model, adapter, ids, mask, outputs=[z_layer], input_of=z_layer)
    out = seen["raw"][z_layer]
    h_bottom = hidden_of(out).detach()
    like = tuple(x.detach() if torch.is_tensor(x) else x for x in out) if isinstance(out, tuple) else None
    bare_t = torch.tensor(bare, device=device)
    h_init = h_bottom[bare_t, lookup[bare_t]].clone()  # [n, d]
    h_norm = h_init.norm(dim=1)

    # label bookkeeping (flat lists of (row, position, token) triples for rewriting rows)
    lab_row, lab_pos, lab_tok, lab_w = [], [], [], []
    n_rewrite = sum(len(group) for group in templates)  # rewriting rows per edit
    for r_i, row in enumerate(rows):
        if row.group < 0:
            continue
        t = requests[owner[r_i]].target_ids
        for j, p in enumerate(row.label_pos):
            lab_row.append(r_i)
            lab_pos.append(p)
            lab_tok.append(t[j])
            lab_w.append(1.0 / (len(t) * n_rewrite))
    lab_row_t = torch.tensor(lab_row, device=device)
    lab_pos_t = torch.tensor(lab_pos, device=device)
    lab_tok_t = torch.tensor(lab_tok, device=device)
    lab_w_t = torch.tensor(lab_w, device=device, dtype=h_init.dtype)
    lab_owner_t = owner_t[lab_row_t]
    kl_t = torch.tensor(kl_row, device=device)

    delta = torch.zeros_like(h_init)
    adam = MaskedAdam(delta, lr=params.v_lr)  # every row steps until its edit meets the stopping rule
    active = torch.ones(n, dtype=torch.bool, device=device)
    final_loss = [float("nan")] * n
    final_nll = [float("nan")] * n
    steps = [0] * n
    log_p0: torch.Tensor | None = None
    dtype = resolve_dtype(params.train_dtype)
    norm_mod, head = adapter.final_norm, shadow_of(adapter.lm_head, dtype)

    def _final(_m, _a, output):  # the final norm's output is all we need: skip the model's own LM head
        finals["h"] = hidden_of(output)
        raise StopForward

    finals: dict[str, torch.Tensor] = {}
    with skip_bottom(adapter, z_layer, like) as stub, shadowed_layers(adapter, z_layer + 1, dtype):
        top = None
        if params.prefix_cache:
            top = _PrefixTop.build(model, adapter, seen["kwargs"], h_bottom, lookup, mask.sum(1), z_layer, dtype)
        exact = top is None and dtype == torch.float32
        for it in range(params.v_num_grad_steps):
            act_idx = active.nonzero().flatten()
            if act_idx.numel() == 0:
                break
            row_sel = torch.isin(owner_t, act_idx).nonzero().flatten()
            remap = torch.full((n,), -1, dtype=torch.long, device=device)
            remap[act_idx] = torch.arange(act_idx.numel(), device=device)
            row_new = torch.full((len(rows),), -1, dtype=torch.long, device=device)
            row_new[row_sel] = torch.arange(row_sel.numel(), device=device)

            d_act = delta[act_idx].clone().requires_grad_(True)
            with torch.enable_grad():
                if top is not None:
                    h_top = top.run(row_sel, d_act[remap[owner_t[row_sel]]])

                    def final_at(r, pos):  # slots are counted from each row's lookup token
                        return norm_mod(h_top[r, pos - lookup[row_sel[r]]])
                else:
                    stub.hidden = add_at_positions(h_bottom[row_sel], d_act[remap[owner_t[row_sel]]], lookup[row_sel])
                    finals.clear()
                    with HookSet("compute-z-top") as hooks:
                        hooks.add_output_hook(norm_mod, _final)
                        try:
                            model(input_ids=ids[row_sel], attention_mask=mask[row_sel], use_cache=False)
                        except StopForward:
                            pass
                    h_final = finals["h"]

                    def final_at(r, pos):
                        return h_final[r, pos]
                # one head call for the label positions of active edits' rewriting rows and their KL positions (the
                # head reads the whole vocabulary matrix: on CPU one call costs about what a few rows cost)
                lsel = torch.isin(lab_owner_t, act_idx)
                kl_sel = kl_t[act_idx]
                lab_h, kl_h = final_at(row_new[lab_row_t[lsel]], lab_pos_t[lsel]), final_at(row_new[kl_sel], lookup[kl_sel])
                if exact:  # the reference computation, bit for bit (two calls; one call rounds differently)
                    lp = torch.log_softmax(head(lab_h).float(), dim=-1)
                    kl_lp = torch.log_softmax(head(kl_h).float(), dim=-1)
                else:
                    lp, kl_lp = torch.log_softmax(head(torch.cat([lab_h, kl_h])).float(), dim=-1).split([lab_h.shape[0], kl_h.shape[0]])
                # NLL on the rewriting rows of active edits
                tok_lp = lp.gather(1, lab_tok_t[lsel][:, None]).squeeze(1)
                nll = torch.zeros(act_idx.numel(), device=device).index_add(
                    0, remap[lab_owner_t[lsel]], -(tok_lp * lab_w_t[lsel].float())
                )
                # KL on the KL rows
                if log_p0 is None:
                    log_p0 = kl_lp.detach().clone()  # it == 0: every edit is active and δ = 0
                kl = params.kl_factor * (kl_lp.exp() * (kl_lp - log_p0[act_idx])).sum(-1)
                wd = params.v_weight_decay * d_act.norm(dim=1) / h_norm[act_idx] ** 2
                loss = nll + kl + wd
            loss_d, nll_d = loss.detach().tolist(), nll.detach().tolist()
            for j, e in enumerate(act_idx.tolist()):
                final_loss[e], final_nll[e], steps[e] = loss_d[j], nll_d[j], it
            done = loss.detach() < params.loss_stop
            if it == params.v_num_grad_steps - 1:
                break
            loss.sum().backward()
            grad = torch.zeros_like(delta).index_copy_(0, act_idx, d_act.grad.detach())
            upd = act_idx[~done]
            if upd.numel():
                adam.step(torch.zeros(n, dtype=torch.bool).index_fill_(0, upd.cpu(), True), grad)
                p_rows = delta[upd]
                max_norm = params.clamp_norm_factor * h_norm[upd]
                norms = p_rows.norm(dim=1)
                scale = torch.where(norms > max_norm, max_norm / norms, torch.ones_like(norms))
                delta[upd] = p_rows * scale[:, None]
            active[act_idx[done]] = False
        stub.hidden = None
    z = (h_init + delta).T.contiguous()
    ratio = (delta.norm(dim=1) / h_norm).tolist()
    return ValueResult(z=z.detach(), h_init=h_init.T.contiguous(), loss=final_loss, nll=final_nll, steps=steps, delta_ratio=ratio)


#: decoder-block keyword arguments :class:`_PrefixTop` knows how to restrict to a subset of positions
_KNOWN_KWARGS = frozenset({"attention_mask", "position_ids", "position_embeddings", "use_cache", "cache_position",
                           "output_attentions", *compat.CACHE_ARGUMENTS})


class _PrefixTop:
    """The blocks above ``z_layer`` run on the positions from each row's lookup token on, with the keys/values of
    the positions before it taken from one ``δ = 0`` pass (exact: a position before the lookup token only attends
    to positions before it, so nothing there depends on ``δ``).

    Row ``b`` of a step holds the positions ``lookup_b … len_b − 1`` in slots ``0 … S − 1`` (slot 0 carries ``δ``);
    shorter rows repeat their last position in the spare slots, whose outputs are never read. A slot attends to
    the recorded keys before the row's lookup token and to the slots up to itself.
    """

    def __init__(self, blocks, kw, h_bottom, lookup, lengths, cache, mask_float, full_out, cache_argument):
        self.blocks, self.kw, self.h_bottom, self.lookup, self.lengths = blocks, kw, h_bottom, lookup, lengths
        self.cache, self.mask_float, self.cache_argument = cache, mask_float, cache_argument
        self.full_out = full_out  # the top blocks' output of the full rows at δ = 0 (the recording pass)

    @classmethod
    def build(cls, model, adapter, kwargs, h_bottom, lookup, lengths, z_layer, dtype) -> "_PrefixTop | None":
        """None when the model's blocks take arguments this runner does not know how to restrict (the caller then
        runs the full rows)."""
        impl = adapter.attention_implementation
        if impl not in ("sdpa", "eager") or not adapter.full_attention_only:
            return None
        if not set(kwargs) <= _KNOWN_KWARGS or kwargs.get("output_attentions"):
            return None
        mask = kwargs.get("attention_mask")
        if mask is not None and not (torch.is_tensor(mask) and mask.dim() == 4):
            return None
        blocks = [shadow_of(adapter.layers[i], dtype) for i in range(z_layer + 1, len(adapter.layers))]
        cache = compat.RowSelectKVCache()
        kw = {k: v for k, v in kwargs.items() if k in ("attention_mask", "position_ids", "position_embeddings", "cache_position")}
        full = compat.with_cache(adapter.layers[0], kw, cache)
        with torch.no_grad():
            hidden = h_bottom
            for block in blocks:
                hidden = hidden_of(block(hidden, **full))
        if cache.recorded_layers() != len(blocks):  # some block did not go through the cache
            return None
        return cls(blocks, kw, h_bottom, lookup, lengths, cache, impl == "eager" or (mask is not None and mask.dtype != torch.bool), hidden,
                   adapter.layer_cache_argument())

    def run(self, rows: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Top-block output ``[len(rows), S, d]`` of ``rows`` with ``delta[i]`` added at row ``i``'s lookup token;
        slot ``s`` of row ``i`` is position ``lookup + s``."""
        start, length = self.lookup[rows], self.lengths[rows]
        n_slot = int((length - start).max())
        slots = torch.arange(n_slot, device=rows.device)
        pos = torch.minimum(start[:, None] + slots[None, :], length[:, None] - 1)  # [B, S]
        hidden = self.h_bottom[rows[:, None], pos]
        hidden = torch.cat([hidden[:, :1] + delta[:, None], hidden[:, 1:]], dim=1)
        T = self.h_bottom.shape[1]
        allowed = torch.cat([(torch.arange(T, device=rows.device)[None, :] < start[:, None])[:, None, :].expand(-1, n_slot, -1),
                             (slots[None, :, None] >= slots[None, None, :]).expand(rows.numel(), -1, -1)], dim=2)[:, None]
        if self.mask_float:
            amask = torch.zeros(allowed.shape, dtype=self.h_bottom.dtype, device=rows.device)
            amask = amask.masked_fill(~allowed, torch.finfo(self.h_bottom.dtype).min)
        else:
            amask = allowed
        kw: dict[str, object] = {"attention_mask": amask, self.cache_argument: self.cache, "use_cache": True}
        if "position_ids" in self.kw and self.kw["position_ids"] is not None:
            pid = self.kw["position_ids"]
            kw["position_ids"] = pid.expand(self.h_bottom.shape[0], -1)[rows[:, None], pos]
        if self.kw.get("position_embeddings") is not None:
            kw["position_embeddings"] = tuple(t.expand(self.h_bottom.shape[0], *t.shape[1:])[rows[:, None], pos]
                                              for t in self.kw["position_embeddings"])
        self.cache.rows = rows
        try:
            for block in self.blocks:
                hidden = hidden_of(block(hidden, **kw))
        finally:
            self.cache.rows = None
        return hidden
