"""Reduced-precision shadows of frozen blocks (editmem.shadow) and length buckets (editmem.tokens)."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import tiny_model
from editmem.adapters import get_adapter
from editmem.adapters import compat
from editmem.shadow import shadow_of, shadowed_layers
from editmem.tokens import length_buckets


def _layer_inputs(model, ids):
    """Input hidden state and kwargs of decoder layer 1 for ``ids`` (read by a pre-hook)."""
    seen = {}
    layer = get_adapter(model).layers[1]
    handle = layer.register_forward_pre_hook(lambda m, a, k: seen.update(h=(a[0] if a else k["hidden_states"]), k=dict(k)), with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    kwargs = {k: v for k, v in seen["k"].items() if k != "hidden_states"}
    return seen["h"], compat.without_cache(kwargs)  # training-only forwards keep no cache


def test_shadow_block_matches_fp32_block_and_keeps_the_callers_dtype():
    model = tiny_model("llama")
    layer = get_adapter(model).layers[1]
    h, kw = _layer_inputs(model, torch.randint(0, 1000, (2, 7)))
    shadow = shadow_of(layer, torch.bfloat16)
    assert shadow is not layer and next(shadow.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        ref = layer(h, **kw)
        out = shadow(h, **kw)
    ref = ref[0] if isinstance(ref, tuple) else ref
    out = out[0] if isinstance(out, tuple) else out
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
    assert not torch.equal(out, ref)  # it really computed in bf16


def test_shadow_gradients_flow_to_an_fp32_input():
    model = tiny_model("llama")
    layer = get_adapter(model).layers[1]
    h, kw = _layer_inputs(model, torch.randint(0, 1000, (1, 5)))
    x = h.clone().requires_grad_(True)
    out = shadow_of(layer, torch.bfloat16)(x, **kw)
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and x.grad.abs().sum() > 0


def test_shadow_is_cached_and_rebuilt_after_an_in_place_weight_change():
    model = tiny_model("llama")
    layer = get_adapter(model).layers[0]
    first = shadow_of(layer, torch.bfloat16)
    assert shadow_of(layer, torch.bfloat16) is first
    with torch.no_grad():
        layer.mlp.down_proj.weight.mul_(2.0)
    second = shadow_of(layer, torch.bfloat16)
    assert second is not first
    assert torch.equal(second.copy.mlp.down_proj.weight, layer.mlp.down_proj.weight.to(torch.bfloat16))


def test_shadow_does_not_copy_hooks_and_never_raises_precision():
    model = tiny_model("llama")
    layer = get_adapter(model).layers[0]
    calls = []
    handle = layer.register_forward_hook(lambda *a: calls.append(1))
    try:
        shadow = shadow_of(layer, torch.bfloat16)
        h, kw = _layer_inputs(model, torch.randint(0, 1000, (1, 4)))
        calls.clear()
        with torch.no_grad():
            shadow(h, **kw)
        assert calls == []
    finally:
        handle.remove()
    assert shadow_of(layer, torch.float32) is layer
    half = tiny_model("llama").to(torch.bfloat16)
    assert shadow_of(get_adapter(half).layers[0], torch.bfloat16) is get_adapter(half).layers[0]


def test_shadowed_layers_swaps_and_restores():
    model = tiny_model("llama")
    adapter = get_adapter(model)
    layers = adapter.layers
    originals = list(layers)
    ids = torch.randint(0, 1000, (1, 6))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with shadowed_layers(adapter, 1, torch.bfloat16):
            assert layers[0] is originals[0] and layers[1] is not originals[1]
            low = model(input_ids=ids).logits
        assert list(layers) == originals
        again = model(input_ids=ids).logits
    assert torch.equal(again, ref)
    assert not torch.equal(low, ref) and torch.allclose(low, ref, atol=0.1 * ref.abs().max().item())


def _cost(lengths, buckets, overhead):
    return sum(len(b) * max(lengths[i] for i in b) + overhead for b in buckets)


@pytest.mark.parametrize("lengths", [[12, 22, 22, 42], [5], [9, 9, 9], [40, 3, 38, 4, 20, 21, 2]])
def test_length_buckets_cover_every_row_once_at_minimal_cost(lengths):
    overhead = 16
    buckets = length_buckets(lengths, overhead=overhead)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    # brute force over set partitions into contiguous runs of the length-sorted order
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = min(
        _cost(lengths, [order[a:b] for a, b in zip((0,) + cuts, cuts + (len(order),))], overhead)
        for k in range(len(order))
        for cuts in itertools.combinations(range(1, len(order)), k)
    )
    assert _cost(lengths, buckets, overhead) == best


def test_length_buckets_split_a_long_chat_row_from_short_ones():
    assert length_buckets([12, 22, 22, 42]) == [[3], [0, 1, 2]]
    assert length_buckets([]) == []


def test_fp32_attention_switch_is_scoped():
    from editmem.shadow import fp32_attention

    assert not compat.attention_function_is_patched("sdpa")
    with fp32_attention(torch.bfloat16):
        assert compat.attention_function_is_patched("sdpa")
    assert not compat.attention_function_is_patched("sdpa")
