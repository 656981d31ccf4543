"""Target hidden values ``z*`` at the last edited layer (LYAPLOCK.md §3, the references' ``compute_z``).

For each edit a vector ``δ`` is added to the output of block ``z_layer`` at the subject's last token of every
row (six rewriting contexts + the KL row ``"{subject} is a"``) and optimised with Adam on
``NLL(target) + kl_factor·KL(P_now‖P_0) + v_weight_decay·‖δ‖/‖h_init‖²``, projected back into the ball
``‖δ‖ ≤ clamp_norm_factor·‖h_init‖`` after each step; it stops when the loss drops below ``loss_stop`` and,
on the last iteration, without stepping. ``z* = h_init + δ``.

Exact cost savings: the blocks below ``z_layer`` do not depend on ``δ`` and run once
(:func:`~editmem.strategies.locate.forward.skip_bottom`); the LM head is applied only at label positions and
the KL position; several edits are optimised in one batch. Edits never interact: each ``δ_i`` only enters its
own rows, the loss is a sum over edits, Adam is elementwise with one shared step count, and an edit that met its
stopping rule is frozen and its rows dropped. So the batched result equals running the reference per edit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from editmem.interventions import HookSet, StopForward, hidden_of
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


@dataclass
class ValueResult:
    """``z`` [d_model, n] targets; per-edit diagnostics (final loss, target probability, steps, ‖δ‖/‖h‖)."""

    z: torch.Tensor
    h_init: torch.Tensor
    loss: list[float]
    nll: list[float]
    steps: list[int]
    delta_ratio: list[float]


def _adam_update(param, grad, m, v, step: int, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """``torch.optim.Adam`` (no weight decay, no amsgrad) applied to ``param`` rows, in place."""
    b1, b2 = betas
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    bc1 = 1 - b1**step
    bc2 = 1 - b2**step
    denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
    param.addcdiv_(m, denom, value=-lr / bc1)


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

    # bottom run, once: block z_layer's output (and its output structure, for the stubs)
    seen: dict[str, object] = {}
    with torch.no_grad(), HookSet("compute-z-bottom") as hooks:

        def _grab(_m, _a, output):
            seen["out"] = output
            raise StopForward

        hooks.add_output_hook(adapter.module("layer", z_layer), _grab)
        try:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        except StopForward:
            pass
    out = seen["out"]
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
    m, v = torch.zeros_like(delta), torch.zeros_like(delta)
    active = torch.ones(n, dtype=torch.bool, device=device)
    final_loss = [float("nan")] * n
    final_nll = [float("nan")] * n
    steps = [0] * n
    log_p0: torch.Tensor | None = None
    norm_mod, head = adapter.final_norm, adapter.lm_head
    with skip_bottom(adapter, z_layer, like) as stub:
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
                add = torch.zeros_like(h_bottom[row_sel]).index_put(
                    (torch.arange(row_sel.numel(), device=device), lookup[row_sel]), d_act[remap[owner_t[row_sel]]]
                )
                stub.hidden = h_bottom[row_sel] + add
                finals: dict[str, torch.Tensor] = {}
                with HookSet("compute-z-top") as hooks:
                    hooks.add_output_hook(norm_mod, lambda _m, _a, o: finals.__setitem__("h", hidden_of(o)))
                    try:
                        model(input_ids=ids[row_sel], attention_mask=mask[row_sel], use_cache=False, logits_to_keep=1)
                    except TypeError:
                        model(input_ids=ids[row_sel], attention_mask=mask[row_sel], use_cache=False)
                h_final = finals["h"]
                # NLL on the rewriting rows of active edits
                lsel = torch.isin(lab_owner_t, act_idx)
                lp = torch.log_softmax(head(h_final[row_new[lab_row_t[lsel]], lab_pos_t[lsel]]).float(), dim=-1)
                tok_lp = lp.gather(1, lab_tok_t[lsel][:, None]).squeeze(1)
                nll = torch.zeros(act_idx.numel(), device=device).index_add(
                    0, remap[lab_owner_t[lsel]], -(tok_lp * lab_w_t[lsel].float())
                )
                # KL on the KL rows
                kl_sel = kl_t[act_idx]
                kl_lp = torch.log_softmax(head(h_final[row_new[kl_sel], lookup[kl_sel]]).float(), dim=-1)
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
            grad = d_act.grad.detach()
            keep = ~done
            upd = act_idx[keep]
            if upd.numel():
                p_rows, m_rows, v_rows = delta[upd].clone(), m[upd].clone(), v[upd].clone()
                _adam_update(p_rows, grad[keep], m_rows, v_rows, it + 1, params.v_lr)
                max_norm = params.clamp_norm_factor * h_norm[upd]
                norms = p_rows.norm(dim=1)
                scale = torch.where(norms > max_norm, max_norm / norms, torch.ones_like(norms))
                delta[upd], m[upd], v[upd] = p_rows * scale[:, None], m_rows, v_rows
            active[act_idx[done]] = False
        stub.hidden = None
    z = (h_init + delta).T.contiguous()
    ratio = (delta.norm(dim=1) / h_norm).tolist()
    return ValueResult(z=z.detach(), h_init=h_init.T.contiguous(), loss=final_loss, nll=final_nll, steps=steps, delta_ratio=ratio)
