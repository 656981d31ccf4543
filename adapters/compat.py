"""The transformers contract, in one place.

Everything editmem needs to know about how a Hugging Face model is *called* (as opposed to where its modules live,
which is :mod:`editmem.adapters.families`) is here: the name a forward takes its KV cache under, how long a cache
is, how a decoder layer's arguments bind, which attention implementation and mask format a model uses, where its
rotary embedding is, which layers are full attention, the process-wide attention-function registry, and swapping
decoder blocks in and out of their ``ModuleList``. Strategies and shared modules reach these through
:class:`~editmem.adapters.base.ModelAdapter` methods or the functions below, never directly, so that an upstream
rename (transformers 5.24 renamed ``past_key_values`` to ``cache``) breaks this file and its contract tests
(``tests/test_contract.py``), not four strategies.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

#: Names under which a model or a decoder layer takes its KV cache, newest first (5.24+: ``cache``; before:
#: ``past_key_values``; older layers: ``past_key_value``; GPT-NeoX layers: ``layer_past``).
CACHE_ARGUMENTS: tuple[str, ...] = ("cache", "past_key_values", "past_key_value", "layer_past")

_PARAMETERS: dict[type, Mapping[str, inspect.Parameter]] = {}
_SIGNATURES: dict[type, inspect.Signature] = {}


def _signature(module: nn.Module) -> inspect.Signature:
    sig = _SIGNATURES.get(type(module))
    if sig is None:
        sig = _SIGNATURES[type(module)] = inspect.signature(module.forward)
    return sig


def forward_parameters(module: nn.Module) -> Mapping[str, inspect.Parameter]:
    """The named parameters of ``module.forward`` (cached per class)."""
    params = _PARAMETERS.get(type(module))
    if params is None:
        params = _PARAMETERS[type(module)] = _signature(module).parameters
    return params


def cache_argument(module: nn.Module) -> str:
    """The keyword under which ``module`` (a ``*ForCausalLM`` or a decoder layer) takes its KV cache.

    A forward that declares none of :data:`CACHE_ARGUMENTS` but takes ``**kwargs`` gets the newest name.
    """
    params = forward_parameters(module)
    for name in CACHE_ARGUMENTS:
        if name in params:
            return name
    return CACHE_ARGUMENTS[0]


def cache_from_kwargs(kwargs: Mapping[str, Any]) -> Any:
    """The KV cache among a forward's keyword arguments (under any known name), or None."""
    for name in CACHE_ARGUMENTS:
        value = kwargs.get(name)
        if value is not None:
            return value
    return None


def cache_length(cache: Any) -> int:
    """Tokens already held by ``cache`` (0 for None or an object that does not say)."""
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    return int(cache.get_seq_length())


def past_length(kwargs: Mapping[str, Any], layer: int | None = None) -> int:
    """Tokens already in the KV cache of a forward called with ``kwargs`` (0 on a prefill or without cache).

    From a model-level hook pass no ``layer``; from decoder layer ``i``'s pre-hook pass ``layer=i``: the layers
    below it have already written this forward's tokens into the shared cache.
    """
    cache = cache_from_kwargs(kwargs)
    return cache_length(cache) if layer is None else cache_length_of_layer(cache, layer)


def without_cache(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` minus the cache and ``use_cache`` (for training-only forwards that keep no cache)."""
    return {k: v for k, v in kwargs.items() if k not in CACHE_ARGUMENTS and k != "use_cache"}


def with_cache(module: nn.Module, kwargs: Mapping[str, Any], cache: Any) -> dict[str, Any]:
    """``kwargs`` with ``cache`` passed under the name ``module`` takes it, and ``use_cache=True``."""
    out = without_cache(kwargs)
    out[cache_argument(module)] = cache
    out["use_cache"] = True
    return out


def output_cache(output: Any) -> Any:
    """The KV cache a model returned (``output.cache`` from 5.24 on, ``output.past_key_values`` before)."""
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None


def decode_step(model: nn.Module, input_ids: torch.Tensor, cache: Any = None, *,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
    """One cached forward of a sampling loop: ``(logits [B, q, V], the cache to pass to the next step)``.

    ``attention_mask`` covers the past and the new tokens; with it, positions count real tokens only (as
    ``generate`` does), so left-padded rows get the positions they would have alone.
    """
    kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": True}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        kwargs["position_ids"] = positions[:, -input_ids.shape[1]:]
    if cache is not None:
        kwargs[cache_argument(model)] = cache
    out = model(**kwargs)
    return out.logits, output_cache(out)


def is_prefill(hidden: torch.Tensor, kwargs: Mapping[str, Any] | None = None, layer: int | None = None) -> bool:
    """True on the first forward of a generation (the prompt), False on cached decode steps (``layer`` as in
    :func:`past_length`)."""
    if kwargs:
        cache = cache_from_kwargs(kwargs)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return past_length(kwargs, layer) == 0
        position = kwargs.get("cache_position")  # transformers < 5.24
        if isinstance(position, torch.Tensor) and position.numel() > 0:
            return int(position[0]) == 0
    return hidden.shape[1] > 1


def layer_arguments(module: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(hidden_states, every other argument by name)`` of a decoder-layer call (GPT-2 passes some positionally);
    ``module(hidden, **named)`` repeats the call."""
    sig = _signature(module)
    named = dict(sig.bind_partial(*args, **kwargs).arguments)
    hidden = named.pop(next(iter(sig.parameters)))
    for name, param in sig.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD and name in named:
            named.update(named.pop(name))
    return hidden, named


def hidden_activation(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's own MLP activation function (``config.hidden_act``, GPT-2's ``activation_function``)."""
    from transformers.activations import ACT2FN

    config = getattr(model, "config", None)
    name = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None) or "gelu"
    return ACT2FN[name]


# -- attention ------------------------------------------------------------------------------------------------
def attention_implementation(model: nn.Module) -> str:
    """The attention implementation the model runs (``"eager"``, ``"sdpa"``, ``"flash_attention_2"``, ...)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) or "eager"


def boolean_masks(model: nn.Module) -> bool:
    """True when the model's decoder layers take boolean 4-D masks (True = attend: ``sdpa``), False for additive
    float masks (``eager``). Other implementations raise: their masks are not 4-D tensors."""
    impl = attention_implementation(model)
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"this operation supports the 'sdpa' and 'eager' attention implementations, not {impl!r}")
    return impl == "sdpa"


def layer_mask(allowed: torch.Tensor, *, boolean: bool, dtype: torch.dtype) -> torch.Tensor:
    """A decoder-layer attention mask ``[B, 1, q, kv]`` from a boolean ``allowed`` (True = attend), in the format
    the layer takes: boolean (``sdpa``) or additive with ``finfo(dtype).min`` at masked keys (``eager``)."""
    if boolean:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def mask_is_boolean(mask: Any) -> bool | None:
    """Whether a captured layer mask is boolean (None when there is no 4-D tensor mask)."""
    if not (torch.is_tensor(mask) and mask.dim() == 4):
        return None
    return mask.dtype == torch.bool


def rotary_embedding(model: nn.Module) -> nn.Module | None:
    """The model's shared rotary-embedding module (None for absolute positions or per-layer rotary modules)."""
    base = getattr(model, "base_model", model)
    return getattr(base, "rotary_emb", None)


def rotary_cos_sin(model: nn.Module, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(cos, sin)`` of ``positions`` ``[1, n]`` from the model's rotary embedding (None without one)."""
    rotary = rotary_embedding(model)
    if rotary is None:
        return None
    with torch.no_grad():
        return rotary(like[:1, :1].float(), position_ids=positions)


def layer_types(model: nn.Module) -> list[str] | None:
    """Per-layer attention kinds (``"full_attention"``, ``"sliding_attention"``, ...), None when not declared."""
    config = getattr(model, "config", None)
    types = getattr(config, "layer_types", None)
    return list(types) if types else None


def full_attention_only(model: nn.Module) -> bool:
    """True when every decoder layer attends to the whole past (no sliding windows or chunked layers)."""
    types = layer_types(model)
    return not types or all(t == "full_attention" for t in types)


@contextmanager
def attention_function(name: str, wrap: Callable[[Callable], Callable]) -> Iterator[None]:
    """While active, transformers' attention function ``name`` is ``wrap(original)`` (process-wide: the registry
    is global). Restored on exit, including whether the registry held a local override before."""
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # pragma: no cover - transformers without the attention interface
        yield
        return
    local = getattr(ALL_ATTENTION_FUNCTIONS, "_local_mapping", {})
    had_local = name in local
    inner = ALL_ATTENTION_FUNCTIONS[name]
    ALL_ATTENTION_FUNCTIONS[name] = wrap(inner)
    try:
        yield
    finally:
        if had_local:
            ALL_ATTENTION_FUNCTIONS[name] = inner
        else:
            del ALL_ATTENTION_FUNCTIONS[name]


def attention_function_is_patched(name: str) -> bool:
    """True while :func:`attention_function` overrides ``name`` (for tests)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return name in getattr(ALL_ATTENTION_FUNCTIONS, "_local_mapping", {})


# -- KV caches ------------------------------------------------------------------------------------------------
class RowSelectKVCache:
    """A stand-in for transformers' ``Cache`` that decoder layers write to and read from.

    While ``rows`` is None it records every layer's keys/values (the full rows, once); afterwards each call is
    served ``[recorded keys of ``rows`` ; the keys being computed]``, so a block recomputes only some positions
    against a recorded past. Implements the part of the ``Cache`` protocol the attention modules call
    (``update(key, value, layer_idx, ...)`` and ``get_seq_length()``).
    """

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.rows: torch.Tensor | None = None

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        if self.rows is None:
            self.keys[layer_idx], self.values[layer_idx] = key.detach(), value.detach()
            return key, value
        return (torch.cat([self.keys[layer_idx][self.rows], key], dim=2),
                torch.cat([self.values[layer_idx][self.rows], value], dim=2))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if layer_idx not in self.keys else int(self.keys[layer_idx].shape[2])

    def recorded_layers(self) -> int:
        return len(self.keys)


def layer_cache_lengths(cache: Any, num_layers: int) -> list[int]:
    """Tokens held per layer by a transformers cache (``get_seq_length(layer)``)."""
    return [cache_length_of_layer(cache, i) for i in range(num_layers)]


def cache_length_of_layer(cache: Any, layer: int) -> int:
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    try:
        return int(cache.get_seq_length(layer))
    except TypeError:  # a cache whose get_seq_length takes no layer
        return int(cache.get_seq_length())


# -- swapping decoder blocks ----------------------------------------------------------------------------------
@contextmanager
def replaced_modules(modules: nn.ModuleList, replacements: Mapping[int, nn.Module]) -> Iterator[None]:
    """Entries ``i`` of ``modules`` are ``replacements[i]`` inside the block, the originals again after it.

    Hooks registered on the original blocks do not fire while they are swapped out.
    """
    originals = {i: modules[i] for i in replacements}
    try:
        for i, module in replacements.items():
            modules[i] = module
        yield
    finally:
        for i, module in originals.items():
            modules[i] = module
