"""Explicit intervention hooks on named modules (pyvene/nnsight style), in one place.

Strategies never call ``register_forward_hook`` themselves: they build a :class:`HookSet` (attach,
detach as one unit) or use :func:`capture` to read activations for one forward pass. Hidden states are
addressed through the adapter's anchors, e.g. ``adapter.module("layer", 12)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from editmem.adapters import compat

OutputHook = Callable[[nn.Module, tuple, Any], Any]


class StopForward(Exception):
    """Raised by a hook to end a forward pass once every needed activation has been read (the layers above are
    skipped); the caller wraps the model call in ``try: ... except StopForward: pass``."""

InputHook = Callable[[nn.Module, tuple, dict], Any]


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (decoder layers return a tensor or a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden-state tensor replaced, keeping the rest of a tuple output."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class HookSet:
    """A named group of hooks attached and detached together.

    >>> hooks = HookSet("llp")
    >>> hooks.add_output_hook(adapter.module("layer", 12), retrieve)
    >>> hooks.add_input_hook(adapter.module("layer", 20), inject)
    >>> hooks.remove()                       # the model is exactly the base model again
    """

    def __init__(self, name: str = "hooks"):
        self.name = name
        self._handles: list[RemovableHandle] = []

    def add_output_hook(self, module: nn.Module, fn: OutputHook) -> RemovableHandle:
        """``fn(module, args, output)``; a non-None return value replaces the output."""
        handle = module.register_forward_hook(fn)
        self._handles.append(handle)
        return handle

    def add_input_hook(self, module: nn.Module, fn: InputHook) -> RemovableHandle:
        """``fn(module, args, kwargs)``; may return ``(args, kwargs)`` to replace the inputs."""
        handle = module.register_forward_pre_hook(fn, with_kwargs=True)
        self._handles.append(handle)
        return handle

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> "HookSet":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@contextmanager
def capture(modules: dict[str, nn.Module], *, what: str = "output", detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the hidden-state output (or first positional/``hidden_states`` input) of each named module.

    >>> with capture({"l3": adapter.module("mlp_out", 3)}, what="input") as seen:
    ...     model(**batch)
    >>> keys = seen["l3"]                     # [batch, seq, intermediate]
    """
    if what not in ("output", "input"):
        raise ValueError("what must be 'output' or 'input'")
    seen: dict[str, torch.Tensor] = {}
    with HookSet("capture") as hooks:
        for name, module in modules.items():
            if what == "output":

                def _out(_m, _args, output, _name=name):
                    tensor = hidden_of(output)
                    seen[_name] = tensor.detach() if detach else tensor

                hooks.add_output_hook(module, _out)
            else:

                def _in(_m, args, kwargs, _name=name):
                    tensor = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
                    seen[_name] = tensor.detach() if detach else tensor

                hooks.add_input_hook(module, _in)
        yield seen


@torch.no_grad()
def read_layers(model: nn.Module, adapter, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *,
                outputs: Iterable[int] = (), input_of: int | None = None) -> dict[str, Any]:
    """The shared bottom capture: run the model (no KV cache) only as far as needed and return
    ``{"outputs": {i: output hidden state of layer i}, "raw": {i: layer i's output as returned},
    "hidden": / "kwargs": what enters layer ``input_of`` (hidden states; the other arguments by name, no cache)}``.

    The forward stops at the input of ``input_of`` or after the deepest of ``outputs``, whichever comes later:
    every strategy that optimises something injected at or above a layer runs the layers below once, with this.
    """
    outputs = sorted(set(outputs))
    stop_at_input = input_of is not None and (not outputs or input_of > outputs[-1])
    seen: dict[str, Any] = {"outputs": {}, "raw": {}}
    with HookSet("read-layers") as hooks:
        for i in outputs:
            def _out(_m, _a, output, _i=i):
                seen["outputs"][_i] = hidden_of(output).detach()
                seen["raw"][_i] = output
                if not stop_at_input and _i == outputs[-1]:
                    raise StopForward

            hooks.add_output_hook(adapter.module("layer", i), _out)
        if input_of is not None:
            def _pre(module, args, kwargs):
                hidden, named = adapter.layer_arguments(module, args, kwargs)
                seen["hidden"], seen["kwargs"] = hidden.detach(), compat.without_cache(named)
                if stop_at_input:
                    raise StopForward

            hooks.add_input_hook(adapter.module("layer", input_of), _pre)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        try:
            model(**kwargs)
        except StopForward:
            pass
    return seen


def read_layer_input(model: nn.Module, adapter, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, layer: int,
                     *, outputs: Iterable[int] = ()) -> dict[str, Any]:
    """What enters decoder ``layer`` (and the outputs of layers ``outputs`` below it): :func:`read_layers`."""
    return read_layers(model, adapter, input_ids, attention_mask, outputs=outputs, input_of=layer)


def is_prefill(hidden: torch.Tensor, kwargs: dict | None = None, layer: int | None = None) -> bool:
    """True on the first forward of a generation (the prompt), False on cached decode steps (from a decoder layer's
    pre-hook pass its index as ``layer``)."""
    return compat.is_prefill(hidden, kwargs, layer)
