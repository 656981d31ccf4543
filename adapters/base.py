"""Architecture specs, the adapter that resolves them on a live model, and the registry."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from editmem.adapters import compat
from torch import nn

#: Anchors a strategy may ask for. Layer-scoped anchors take a layer index.
ANCHORS: dict[str, str] = {
    "embed_tokens": "token embedding module",
    "layers": "the ModuleList of decoder layers",
    "final_norm": "norm applied after the last decoder layer",
    "lm_head": "output projection to the vocabulary",
    "layer": "decoder layer i (its input/output is the residual stream)",
    "attn": "self-attention block of layer i",
    "mlp": "MLP block of layer i",
    "mlp_in": "first MLP projection of layer i (hidden -> intermediate)",
    "mlp_out": "last MLP projection of layer i (intermediate -> hidden); its input is the locate-then-edit key",
}


class UnsupportedArchitectureError(ValueError):
    """Raised when no adapter is registered for a model's ``config.model_type``."""


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where one architecture family keeps its modules (dotted paths from the ``*ForCausalLM`` root).

    Args:
        model_types: ``config.model_type`` values this spec covers.
        embed_tokens: path of the token embedding.
        layers: path of the decoder-layer ``ModuleList``.
        final_norm: path of the final norm.
        lm_head: path of the LM head.
        attn / mlp / mlp_in / mlp_out: paths *inside one decoder layer*.
        mlp_weights_transposed: True when the MLP projections are GPT-2 ``Conv1D`` modules whose weight is
            stored ``[in, out]`` instead of ``nn.Linear``'s ``[out, in]``.
        hidden_size_attr / num_layers_attr / intermediate_size_attr: config attribute names (first found wins).
        absolute_positions: True when position information is added at the embedding (GPT-2), False for RoPE.
    """

    model_types: tuple[str, ...]
    embed_tokens: str
    layers: str
    final_norm: str
    lm_head: str
    attn: str
    mlp: str
    mlp_in: str
    mlp_out: str
    mlp_weights_transposed: bool = False
    hidden_size_attr: tuple[str, ...] = ("hidden_size", "n_embd")
    num_layers_attr: tuple[str, ...] = ("num_hidden_layers", "n_layer")
    intermediate_size_attr: tuple[str, ...] = ("intermediate_size", "n_inner")
    absolute_positions: bool = False
    extra: dict[str, str] = field(default_factory=dict)


_REGISTRY: dict[str, ArchitectureSpec] = {}


def register_architecture(spec: ArchitectureSpec) -> ArchitectureSpec:
    """Register ``spec`` for each of its model types; a type may only be registered once."""
    for model_type in spec.model_types:
        if model_type != model_type.lower():
            raise ValueError(f"model_type must be lower case, got {model_type!r}")
        if model_type in _REGISTRY:
            raise ValueError(f"an adapter for model_type {model_type!r} is already registered")
        _REGISTRY[model_type] = spec
    return spec


def registered_model_types() -> list[str]:
    """Model types that have an adapter."""
    return sorted(_REGISTRY)


def _resolve(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _config_value(config, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


class ModelAdapter:
    """Resolves anchors on one live model.

    >>> adapter = get_adapter(model)
    >>> adapter.module("mlp_out", layer=4)          # e.g. model.model.layers[4].mlp.down_proj
    >>> adapter.module_name("layer", 4)              # "model.layers.4"
    """

    def __init__(self, model: nn.Module, spec: ArchitectureSpec):
        self.model = model
        self.spec = spec
        config = model.config
        self.model_type: str = config.model_type
        self.hidden_size: int = _config_value(config, spec.hidden_size_attr)  # type: ignore[assignment]
        self.num_layers: int = _config_value(config, spec.num_layers_attr)  # type: ignore[assignment]
        self.intermediate_size: int = _config_value(config, spec.intermediate_size_attr) or 4 * self.hidden_size
        if len(self.layers) != self.num_layers:
            raise UnsupportedArchitectureError(
                f"{self.model_type}: config says {self.num_layers} layers but {spec.layers} has {len(self.layers)}"
            )

    # -- module lookup -------------------------------------------------------------------------
    def module_name(self, anchor: str, layer: int | None = None) -> str:
        """Dotted module path of ``anchor`` (``layer`` required for layer-scoped anchors)."""
        spec = self.spec
        if anchor in ("embed_tokens", "layers", "final_norm", "lm_head"):
            return getattr(spec, anchor)
        if anchor not in ANCHORS and anchor not in spec.extra:
            raise KeyError(f"unknown anchor {anchor!r}; known: {sorted(ANCHORS) + sorted(spec.extra)}")
        if layer is None:
            raise ValueError(f"anchor {anchor!r} is layer-scoped: pass layer=")
        if not -self.num_layers <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range for a {self.num_layers}-layer model")
        layer %= self.num_layers
        base = f"{spec.layers}.{layer}"
        if anchor == "layer":
            return base
        return f"{base}.{spec.extra.get(anchor) or getattr(spec, anchor)}"

    def module(self, anchor: str, layer: int | None = None) -> nn.Module:
        """The module at ``anchor`` (and ``layer``)."""
        return _resolve(self.model, self.module_name(anchor, layer))

    @property
    def layers(self) -> nn.ModuleList:
        return _resolve(self.model, self.spec.layers)  # type: ignore[return-value]

    @property
    def embed_tokens(self) -> nn.Module:
        return _resolve(self.model, self.spec.embed_tokens)

    @property
    def final_norm(self) -> nn.Module:
        return _resolve(self.model, self.spec.final_norm)

    @property
    def lm_head(self) -> nn.Module:
        return _resolve(self.model, self.spec.lm_head)

    # -- weights of the locate-then-edit target --------------------------------------------------
    def mlp_out_weight(self, layer: int) -> torch.Tensor:
        """Weight of ``mlp_out`` as ``[hidden, intermediate]`` (``nn.Linear`` layout) — a view, not a copy."""
        weight = self.module("mlp_out", layer).weight
        return weight.T if self.spec.mlp_weights_transposed else weight

    def mlp_out_weight_name(self, layer: int) -> str:
        return f"{self.module_name('mlp_out', layer)}.weight"

    # -- how the model is called (the transformers contract: editmem.adapters.compat) ------------
    def layer_arguments(self, layer: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(hidden_states, other arguments by name)`` of a call of decoder ``layer`` (from a forward pre-hook)."""
        return compat.layer_arguments(layer, args, kwargs)

    def run_layers(self, hidden: torch.Tensor, kwargs: Mapping[str, Any], start: int, stop: int | None = None,
                   blocks: list[nn.Module] | None = None) -> torch.Tensor:
        """Hidden states after decoder layers ``start..stop-1`` run on ``hidden`` with the captured layer ``kwargs``
        (``blocks`` replaces those layers, e.g. reduced-precision shadows)."""
        layers = blocks if blocks is not None else list(self.layers)[start:stop]
        for block in layers:
            out = block(hidden, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def hidden_activation(self):
        """The model's MLP activation function ``σ`` (e.g. SiLU for Llama, ``gelu_new`` for GPT-J), as a callable."""
        return compat.hidden_activation(self.model)

    @property
    def attention_implementation(self) -> str:
        return compat.attention_implementation(self.model)

    @property
    def boolean_masks(self) -> bool:
        """True: layers take boolean 4-D masks (``sdpa``); False: additive float masks (``eager``)."""
        return compat.boolean_masks(self.model)

    def layer_mask(self, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A 4-D layer mask in this model's format from a boolean ``allowed`` ``[B, 1, q, kv]``."""
        return compat.layer_mask(allowed, boolean=self.boolean_masks, dtype=dtype)

    @property
    def full_attention_only(self) -> bool:
        return compat.full_attention_only(self.model)

    def rotary_cos_sin(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Rotary ``(cos, sin)`` of ``positions`` ``[1, n]`` (None for absolute-position models)."""
        return compat.rotary_cos_sin(self.model, positions, like)

    def decode_step(self, input_ids: torch.Tensor, cache: Any = None, *, attention_mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, Any]:
        """One cached forward: ``(logits, cache for the next step)``."""
        return compat.decode_step(self.model, input_ids, cache, attention_mask=attention_mask)

    def layer_cache_argument(self) -> str:
        """The keyword under which this model's decoder layers take their KV cache."""
        return compat.cache_argument(self.layers[0])

    @contextmanager
    def replaced_layers(self, replacements: Mapping[int, nn.Module]) -> Iterator[None]:
        """Decoder layers ``i`` are ``replacements[i]`` inside the block (hooks on the originals do not fire)."""
        with compat.replaced_modules(self.layers, replacements):
            yield

    def __repr__(self) -> str:
        return (
            f"ModelAdapter(model_type={self.model_type!r}, layers={self.num_layers}, "
            f"hidden={self.hidden_size}, intermediate={self.intermediate_size})"
        )


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``, chosen by ``model.config.model_type`` (never by the model's name)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        raise UnsupportedArchitectureError("model has no config.model_type; pass a Hugging Face PreTrainedModel")
    spec = _REGISTRY.get(model_type)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"no editmem adapter for model_type {model_type!r} (supported: {', '.join(registered_model_types())}). "
            "Add one with editmem.adapters.register_architecture(ArchitectureSpec(model_types=("
            f"{model_type!r},), embed_tokens=..., layers=..., final_norm=..., lm_head=..., attn=..., mlp=..., "
            "mlp_in=..., mlp_out=...))."
        )
    return ModelAdapter(model, spec)
