"""Adapters resolve the same anchors on tiny random models of every supported family."""

import pytest
import torch
from torch import nn

from editmem.adapters import UnsupportedArchitectureError, get_adapter
from editmem.interventions import HookSet, capture
from tests.conftest import tiny_model

FAMILIES = ["llama", "mistral", "qwen2", "gpt2", "gptj", "gpt_neox"]


@pytest.mark.parametrize("family", FAMILIES)
def test_anchors_resolve_with_the_right_shapes(family):
    model = tiny_model(family, vocab_size=256)
    adapter = get_adapter(model)
    assert adapter.num_layers == 2 and adapter.hidden_size == 64
    assert len(adapter.layers) == 2
    assert adapter.embed_tokens.weight.shape == (256, 64)
    assert adapter.lm_head.weight.shape[0] == 256
    w = adapter.mlp_out_weight(1)
    assert w.shape == (64, adapter.intermediate_size)  # [hidden, intermediate] for Linear and Conv1D alike
    ids = torch.randint(0, 256, (2, 7))
    with capture({"key": adapter.module("mlp_out", 1)}, what="input") as seen_in, capture(
        {"layer": adapter.module("layer", 0), "mlp": adapter.module("mlp_out", 1)}
    ) as seen_out:
        model(input_ids=ids)
    assert seen_in["key"].shape == (2, 7, adapter.intermediate_size)
    assert seen_out["layer"].shape == (2, 7, 64)
    # the anchor really is the MLP output projection: key @ W^T (+ bias) reproduces its output
    out = seen_in["key"] @ w.T
    bias = getattr(adapter.module("mlp_out", 1), "bias", None)
    if bias is not None:
        out = out + bias
    torch.testing.assert_close(out, seen_out["mlp"], rtol=1e-4, atol=1e-5)


def test_hooks_change_the_output_and_detach_restores_it():
    model = tiny_model("llama", vocab_size=256)
    adapter = get_adapter(model)
    ids = torch.randint(0, 256, (1, 5))
    base = model(input_ids=ids).logits
    hooks = HookSet("test")
    hooks.add_output_hook(adapter.module("layer", 0), lambda m, a, out: (out[0] + 1.0, *out[1:]) if isinstance(out, tuple) else out + 1.0)
    assert not torch.equal(model(input_ids=ids).logits, base)
    hooks.remove()
    assert torch.equal(model(input_ids=ids).logits, base)


def test_unknown_architecture_names_the_type_and_how_to_add_one():
    class Toy(nn.Module):
        config = type("Cfg", (), {"model_type": "toy-arch"})()

    with pytest.raises(UnsupportedArchitectureError, match="toy-arch.*register_architecture"):
        get_adapter(Toy())


def test_layer_out_of_range_and_unknown_anchor():
    adapter = get_adapter(tiny_model("gpt2", vocab_size=256))
    with pytest.raises(IndexError):
        adapter.module("mlp_out", 5)
    with pytest.raises(KeyError, match="unknown anchor"):
        adapter.module("nonsense", 0)


def test_installed_package_does_not_claim_top_level_adapters(tmp_path):
    import subprocess
    import sys

    code = "import importlib.util as u, editmem.adapters as a; print(u.find_spec('adapters') is None or 'editmem' not in str(u.find_spec('adapters').origin)); print(a.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "editmem.adapters"]
