"""The transformers contract (editmem.adapters.compat), exercised on a tiny random model of every supported family.

An upstream release that renames a cache argument, changes a decoder layer's signature or the mask format fails
here first, naming the family, instead of silently turning cached decoding into repeated prefills.
"""

from __future__ import annotations

import pytest
import torch

from editmem.adapters import compat, get_adapter
from editmem.interventions import HookSet, hidden_of, read_layer_input
from tests.conftest import tiny_model

FAMILIES = ["llama", "mistral", "qwen2", "gpt2", "gptj", "gpt_neox"]
VOCAB = 256


def _model(family: str, attn: str | None = None):
    """A tiny random model; ``attn`` switches its attention implementation (None: the release's default)."""
    model = tiny_model(family, vocab_size=VOCAB)
    if attn is not None:
        model.set_attn_implementation(attn)
    return model


def _supports_sdpa(family: str) -> bool:
    return bool(getattr(tiny_model(family, vocab_size=VOCAB), "_supports_sdpa", False))


#: (family, attention implementation) pairs the installed release supports (GPT-J has sdpa from 5.24 on)
ATTENTION = [(f, a) for f in FAMILIES for a in ("sdpa", "eager") if a == "eager" or _supports_sdpa(f)]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_plus_cached_decode_equals_the_uncached_forward(family):
    model = _model(family)
    adapter = get_adapter(model)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        logits, cache = adapter.decode_step(ids[:, :5])
        assert compat.cache_length(cache) == 5
        steps = [logits]
        for t in range(5, 9):
            logits, cache = adapter.decode_step(ids[:, t : t + 1], cache)
            steps.append(logits)
    assert compat.cache_length(cache) == 9
    assert compat.layer_cache_lengths(cache, adapter.num_layers) == [9] * adapter.num_layers
    _close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("family", FAMILIES)
def test_layers_see_the_past_length_and_the_prefill_flag(family):
    model = _model(family)
    adapter = get_adapter(model)
    seen: list[tuple[str, int, bool]] = []

    def on_model(_module, _args, kwargs):
        seen.append(("model", compat.past_length(kwargs), compat.past_length(kwargs) == 0))

    def on_layer(module, args, kwargs):
        hidden, named = adapter.layer_arguments(module, args, kwargs)
        seen.append(("layer", compat.past_length(named, layer=1), compat.is_prefill(hidden, named, layer=1)))

    ids = torch.randint(0, VOCAB, (1, 6))
    with HookSet() as hooks, torch.no_grad():
        hooks.add_input_hook(model, on_model)
        hooks.add_input_hook(adapter.module("layer", 1), on_layer)
        _, cache = adapter.decode_step(ids[:, :4])
        adapter.decode_step(ids[:, 4:5], cache)
    assert seen == [("model", 0, True), ("layer", 0, True), ("model", 4, False), ("layer", 4, False)]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_of_mixed_length_rows_equals_the_rows_one_by_one(family):
    model = _model(family)
    adapter = get_adapter(model)
    rows = [torch.randint(1, VOCAB, (n,)).tolist() for n in (3, 7, 5)]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])  # left padding, as generation pads
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    nxt = torch.randint(1, VOCAB, (3, 2))
    with torch.no_grad():
        logits, cache = adapter.decode_step(ids, attention_mask=mask)
        batch = [logits[:, -1]]
        for step in range(2):
            mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], dim=1)
            logits, cache = adapter.decode_step(nxt[:, step : step + 1], cache, attention_mask=mask)
            batch.append(logits[:, -1])
        for i, row in enumerate(rows):
            alone = model(input_ids=torch.tensor([row + nxt[i].tolist()]), use_cache=False).logits[0]
            n = len(row)
            for step, got in enumerate(batch):
                _close(got[i], alone[n - 1 + step])


@pytest.mark.parametrize(("family", "attn"), ATTENTION)
def test_the_layer_runner_reproduces_the_models_hidden_states(family, attn):
    model = _model(family, attn)
    adapter = get_adapter(model)
    ids = torch.randint(1, VOCAB, (2, 6))
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    seen = read_layer_input(model, adapter, ids, mask, 1, outputs=[0])
    assert seen["hidden"].shape == (2, 6, adapter.hidden_size)
    assert not set(seen["kwargs"]) & set(compat.CACHE_ARGUMENTS)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
        _close(seen["outputs"][0], ref[1])
        top = adapter.run_layers(seen["hidden"], seen["kwargs"], 1)
        again = adapter.final_norm(top)
    _close(again[1, 2:], ref[-1][1, 2:])  # real positions (the last entry is after the final norm)
    _close(again[0], ref[-1][0])
    captured = seen["kwargs"].get("attention_mask")
    boolean = compat.mask_is_boolean(captured)
    assert boolean is None or boolean == adapter.boolean_masks  # the format layer_mask() builds is the model's


@pytest.mark.parametrize(("family", "attn"), ATTENTION)
def test_layer_masks_in_the_models_format_are_honoured(family, attn):
    model = _model(family, attn)
    adapter = get_adapter(model)
    ids = torch.randint(1, VOCAB, (1, 5))
    seen = read_layer_input(model, adapter, ids, None, 1)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    kwargs = dict(seen["kwargs"], attention_mask=adapter.layer_mask(causal, seen["hidden"].dtype))
    with torch.no_grad():
        ours = adapter.run_layers(seen["hidden"], kwargs, 1)
        theirs = adapter.run_layers(seen["hidden"], seen["kwargs"], 1)
    _close(ours, theirs)


@pytest.mark.parametrize("family", FAMILIES)
def test_rotary_cos_sin_are_what_the_layers_receive(family):
    model = _model(family)
    adapter = get_adapter(model)
    seen = read_layer_input(model, adapter, torch.randint(1, VOCAB, (1, 4)), None, 1)
    got = adapter.rotary_cos_sin(torch.arange(4).unsqueeze(0), seen["hidden"])
    passed = seen["kwargs"].get("position_embeddings")
    if got is None:
        assert family in ("gpt2", "gptj") or passed is None  # absolute positions / per-layer rotary
        return
    assert passed is not None
    _close(got[0], passed[0])
    _close(got[1], passed[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_row_select_cache_recomputes_the_last_positions_against_a_recorded_past(family):
    """The duck-typed Cache the prefix runner uses: record the full rows once, then recompute only the last two
    positions of some rows against the recorded keys; the result equals the full forward at those positions."""
    model = _model(family)
    adapter = get_adapter(model)
    ids = torch.randint(1, VOCAB, (3, 6))
    seen = read_layer_input(model, adapter, ids, None, 1)
    hidden, kwargs = seen["hidden"], seen["kwargs"]
    layer = adapter.layers[1]
    cache = compat.RowSelectKVCache()
    base = {k: v for k, v in kwargs.items() if k in ("position_ids", "position_embeddings", "cache_position")}
    full_mask = adapter.layer_mask(torch.ones(6, 6, dtype=torch.bool).tril()[None, None].expand(3, 1, 6, 6), hidden.dtype)
    with torch.no_grad():
        full = hidden_of(layer(hidden, **compat.with_cache(layer, dict(base, attention_mask=full_mask), cache)))
        assert cache.recorded_layers() == 1
        rows = torch.tensor([0, 2])
        # recorded columns 0..5 (only 0..3 are the past of the recomputed positions 4, 5), then the 2 new ones
        allowed = torch.cat([torch.arange(6)[None, :].expand(2, -1) < 4, torch.ones(2, 2, dtype=torch.bool).tril()], dim=1)
        part = {"attention_mask": adapter.layer_mask(allowed[None, None].expand(2, 1, 2, 8), hidden.dtype)}
        if isinstance(base.get("position_ids"), torch.Tensor):
            part["position_ids"] = base["position_ids"].expand(3, -1)[rows][:, 4:]
        if base.get("position_embeddings") is not None:
            part["position_embeddings"] = tuple(t.expand(3, *t.shape[1:])[rows][:, 4:] for t in base["position_embeddings"])
        cache.rows = rows
        out = hidden_of(layer(hidden[rows][:, 4:], **compat.with_cache(layer, part, cache)))
    _close(out, full[rows][:, 4:])


@pytest.mark.parametrize("family", FAMILIES)
def test_replaced_layers_swap_and_restore(family):
    model = _model(family)
    adapter = get_adapter(model)
    originals = list(adapter.layers)
    stand_in = torch.nn.Identity()
    with adapter.replaced_layers({1: stand_in}):
        assert adapter.layers[1] is stand_in and adapter.layers[0] is originals[0]
    assert list(adapter.layers) == originals


def test_attention_function_override_is_scoped_and_used():
    model = _model("llama", "sdpa")
    calls = []

    def wrap(inner):
        def counting(*args, **kwargs):
            calls.append(1)
            return inner(*args, **kwargs)

        return counting

    ids = torch.randint(1, VOCAB, (1, 4))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with compat.attention_function("sdpa", wrap):
            assert compat.attention_function_is_patched("sdpa")
            out = model(input_ids=ids).logits
        assert not compat.attention_function_is_patched("sdpa")
        model(input_ids=ids)
    assert len(calls) == get_adapter(model).num_layers  # one call per layer, only while patched
    torch.testing.assert_close(out, ref)


def test_cache_argument_names_follow_the_installed_release():
    model = _model("llama")
    name = compat.cache_argument(model)
    assert name in compat.CACHE_ARGUMENTS
    assert compat.cache_argument(get_adapter(_model("gpt_neox")).layers[0]) in ("layer_past", "cache", "past_key_values")
    assert compat.without_cache({name: object(), "use_cache": True, "attention_mask": 1}) == {"attention_mask": 1}
