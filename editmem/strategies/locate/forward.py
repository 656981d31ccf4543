"""Forward-pass helpers of the locate-then-edit machinery: truncated forwards and key/hidden capture.

All passes use right padding (spec pitfall 6): positions computed on unpadded rows stay valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from editmem.interventions import HookSet, StopForward, hidden_of
from editmem.tokens import pad_batch


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = pad_batch([list(r) for r in rows], pad_id, side="right")
    return ids.to(device), mask.to(device)


def pad_id_of(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else (tokenizer.eos_token_id or 0))


@torch.no_grad()
def read_activations(
    model: nn.Module,
    adapter,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    key_layers: Iterable[int] = (),
    block_layers: Iterable[int] = (),
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Keys (inputs of ``mlp_out``) at ``key_layers`` and block outputs at ``block_layers``, full sequences.

    The forward stops right after the deepest block needed, so collecting statistics or keys at layer 7 of
    30 costs about a quarter of a full pass.
    """
    key_layers, block_layers = sorted(set(key_layers)), sorted(set(block_layers))
    last = max(key_layers + block_layers)
    keys: dict[int, torch.Tensor] = {}
    blocks: dict[int, torch.Tensor] = {}
    with HookSet("locate-read") as hooks:
        for layer in key_layers:

            def _key(_m, args, kwargs, _l=layer):
                keys[_l] = (args[0] if args else kwargs["hidden_states"]).detach()

            hooks.add_input_hook(adapter.module("mlp_out", layer), _key)
        for layer in block_layers:

            def _block(_m, _args, output, _l=layer):
                blocks[_l] = hidden_of(output).detach()

            hooks.add_output_hook(adapter.module("layer", layer), _block)

        def _stop(_m, _args, _output):
            raise StopForward

        hooks.add_output_hook(adapter.module("layer", last), _stop)
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except StopForward:
            pass
    return keys, blocks


class _Skip(nn.Module):
    """Stands in for a decoder block below the optimised layer: returns a precomputed hidden state."""

    def __init__(self, like: object):
        super().__init__()
        self.like = like  # the original block's output structure (tensor or tuple)
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden_states=None, *args, **kwargs):  # noqa: D401 - module protocol
        out = self.hidden if self.hidden is not None else hidden_states
        if isinstance(self.like, tuple):
            return (out, *self.like[1:])
        return out


@contextmanager
def skip_bottom(adapter, z_layer: int, like: object):
    """Replace blocks ``0..z_layer`` with :class:`_Skip` stubs for the duration of the block.

    Exact shortcut of spec §3: the network below ``z_layer`` does not depend on the optimised ``δ``, so its
    output is computed once and fed in directly; only blocks above ``z_layer`` run on each step. Yields the
    stub of block ``z_layer``; set ``stub.hidden`` to the (perturbed) block output before each forward.
    """
    stubs = [_Skip(like) for _ in range(z_layer + 1)]
    with adapter.replaced_layers(dict(enumerate(stubs))):
        yield stubs[-1]
