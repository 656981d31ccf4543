"""Reduced-precision shadows of frozen decoder blocks, for training-only forwards.

Every strategy that optimises a small tensor through the frozen top of the model (LLP's values through layers
``z..L-1``, the locate-then-edit target values through layers ``z+1..L-1``) spends ~80 % of its time in matrix
products of those blocks. On CPUs with bf16 units (AVX512-BF16 / AMX) and on GPUs a bf16 copy of the blocks runs
those products ~2.3x faster than fp32 (measured on the 2-core dev machine: 405 vs 175 GFLOPS). The optimised
tensor, its optimiser state, the loss and everything the strategy *stores* stay in fp32; only the frozen blocks'
arithmetic is rounded. ``torch.autocast`` gives little here: it re-casts the frozen fp32 weights on every call
(its cast cache only holds weights that require grad).

Training-only: blocks run without a KV cache (pass none). A :class:`ShadowBlock` holds the copy and casts at its boundary (floating inputs in, hidden state back to the
caller's dtype), so callers and hooks never see bf16. Copies are cached per block and rebuilt when the block's
parameters change in place (``Tensor._version``). Shadows run their attention in fp32 (:func:`fp32_attention`:
torch's bf16 CPU attention kernel has a large fixed cost per call).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from editmem.adapters.compat import attention_function

#: names accepted by strategy configs
TRAIN_DTYPES = ("float32", "bfloat16")


def resolve_dtype(name: str, *, field: str = "train dtype") -> torch.dtype:
    """The torch dtype of a config's ``train_dtype``; ``field`` names the config field in the error."""
    if name not in TRAIN_DTYPES:
        raise ValueError(f"{field} must be one of {TRAIN_DTYPES}, got {name!r}")
    return getattr(torch, name)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    if isinstance(value, list):
        return [_cast(v, dtype) for v in value]
    return value


class ShadowBlock(nn.Module):
    """Runs ``copy`` (a ``dtype`` copy of a frozen block) with the block's call signature.

    Floating tensors among the inputs (hidden states, rotary cos/sin, additive masks) are cast to ``dtype``; the
    hidden state of the output is cast back to the input hidden state's dtype. Other output members (attention
    weights, caches) are returned as the copy produced them. Attention inside the copy runs in fp32
    (:func:`fp32_attention`).
    """

    def __init__(self, block: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.copy = copy.deepcopy(block).to(dtype)
        for p in self.copy.parameters():
            p.requires_grad_(False)
        for module in self.copy.modules():  # hooks of the original (a strategy's, attached or not) are not copied
            module._forward_hooks.clear()
            module._forward_pre_hooks.clear()
            module._backward_hooks.clear()
        self.dtype = dtype
        self.versions = _versions(block)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:  # noqa: D401 - module protocol
        with fp32_attention(self.dtype):
            out = self.copy(_cast(hidden_states, self.dtype), *_cast(args, self.dtype), **{k: _cast(v, self.dtype) for k, v in kwargs.items()})
        if isinstance(out, tuple):
            return (out[0].to(hidden_states.dtype), *out[1:])
        return out.to(hidden_states.dtype)


def _versions(block: nn.Module) -> tuple[int, ...]:
    return tuple(p._version for p in block.parameters()) + tuple(id(p) for p in block.parameters())


_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, ShadowBlock]]" = weakref.WeakKeyDictionary()


def shadow_of(block: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The cached ``dtype`` shadow of ``block``, or ``block`` itself when it already computes in ``dtype`` or
    ``dtype`` is not lower than its own precision (a shadow never raises precision)."""
    own = next(block.parameters()).dtype
    if own == dtype or own != torch.float32:
        return block
    per = _CACHE.setdefault(block, {})
    shadow = per.get(dtype)
    if shadow is None or shadow.versions != _versions(block):
        shadow = ShadowBlock(block, dtype)
        per[dtype] = shadow
    return shadow


def shadow_blocks(layers: Sequence[nn.Module], dtype: torch.dtype) -> list[nn.Module]:
    """Shadows of ``layers`` (see :func:`shadow_of`)."""
    return [shadow_of(layer, dtype) for layer in layers]


@contextmanager
def shadowed_layers(adapter, start: int, dtype: torch.dtype) -> Iterator[None]:
    """Swap decoder layers ``start..`` for their shadows inside the block (for callers that run the whole model).

    Hooks registered on the original blocks do not fire while swapped: use it only around training-only forwards
    that install no hooks on those blocks.
    """
    layers = adapter.layers
    with adapter.replaced_layers({i: shadow_of(layers[i], dtype) for i in range(start, len(layers))}):
        yield


def _sdpa_in_fp32(inner):
    def sdpa_fp32(module, query, key, value, attention_mask, *args, **kwargs):
        if query.dtype == torch.float32 or query.device.type != "cpu":
            return inner(module, query, key, value, attention_mask, *args, **kwargs)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        out, weights = inner(module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs)
        return out.to(query.dtype), weights

    return sdpa_fp32


@contextmanager
def fp32_attention(dtype: torch.dtype):
    """While active, ``sdpa`` attention on reduced-precision CPU tensors runs in fp32 (inputs upcast, output cast
    back). torch's CPU flash-attention kernel costs ~5 ms per forward+backward call in bf16 whatever the size (vs
    0.5-1 ms in fp32 at these sizes): with 22 blocks that was a third of a locate-then-edit bf16 step. Attention holds few FLOPs,
    so upcasting it costs nothing measurable and only makes the shadow more accurate. The switch is process-wide
    (transformers' attention registry, :func:`editmem.adapters.compat.attention_function`) for the duration of the
    block; only training forwards should run inside it."""
    if dtype == torch.float32:
        yield
        return
    with attention_function("sdpa", _sdpa_in_fp32):
        yield
