"""Keys at the subject's last token, averaged over random context prefixes (LYAPLOCK.md §2, §4).

``k = ½·k("{}") + ½·mean_j k(g_j)`` — first within each template group, then across groups (pitfall 8: not a
plain mean over the six contexts). The same pass reads ``zcur``, the output of block ``z_layer`` at the
subject's last token of the bare prompt, which the residual spread needs (§4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editmem.strategies.locate.forward import pad_id_of, read_activations, right_pad
from editmem.strategies.locate.requests import EditRequest, build_rows


@torch.no_grad()
def compute_keys(
    model,
    tokenizer,
    adapter,
    requests: Sequence[EditRequest],
    templates: Sequence[Sequence[str]],
    layers: Sequence[int],
    *,
    z_layer: int | None = None,
    chunk: int = 32,
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Keys ``{layer: K [d_in, n]}`` (float32, two-level template mean) and ``zcur [d_model, n]`` at ``z_layer``.

    The model is used as it is now: callers updating layers in ascending order call this again after each
    update, because earlier rewrite modules change the inputs of later ones.
    """
    device = next(model.parameters()).device
    pad = pad_id_of(tokenizer)
    n_groups = len(templates)
    out_keys: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    zcur: list[torch.Tensor] = []
    for start in range(0, len(requests), chunk):
        part = requests[start : start + chunk]
        rows, owners, groups, bare = [], [], [], []
        for i, req in enumerate(part):
            bare.append(len(rows))  # the first row of a request is the bare "{}" template (group 0)
            for row in build_rows(tokenizer, req, templates, with_target=False):
                rows.append(row)
                owners.append(i)
                groups.append(row.group)
        ids, mask = right_pad([r.ids for r in rows], pad, device)
        keys, blocks = read_activations(
            model, adapter, ids, mask, key_layers=layers, block_layers=[z_layer] if z_layer is not None else []
        )
        pos = torch.tensor([r.lookup for r in rows], device=device)
        arange = torch.arange(len(rows), device=device)
        owner_t = torch.tensor(owners, device=device)
        group_t = torch.tensor(groups, device=device)
        for layer in layers:
            at = keys[layer][arange, pos].float()  # [rows, d_in]
            per_group = []
            for g in range(n_groups):
                sel = group_t == g
                sums = torch.zeros(len(part), at.shape[1], device=device).index_add_(0, owner_t[sel], at[sel])
                counts = torch.zeros(len(part), device=device).index_add_(0, owner_t[sel], torch.ones(int(sel.sum()), device=device))
                per_group.append(sums / counts[:, None])
            out_keys[layer].append(torch.stack(per_group).mean(0))
        if z_layer is not None:
            bare_t = torch.tensor(bare, device=device)
            zcur.append(blocks[z_layer][bare_t, pos[bare_t]].float())
    k = {l: torch.cat(v).T.contiguous() for l, v in out_keys.items()}
    z = torch.cat(zcur).T.contiguous() if zcur else None
    return k, z
