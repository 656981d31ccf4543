"""The artifact folder: where strategies keep their tensors (safetensors) and small JSON state.

Artifacts are *derived* data: deleting the folder and reopening the store rebuilds them from the memory.
Layout: ``artifacts/<strategy>/<name>.safetensors`` and ``artifacts/<strategy>/<name>.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


class ArtifactStore:
    """Tensor and JSON files of one strategy in one store."""

    def __init__(self, root: Path):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # a read-only store: loading works if the folder exists, saving raises then

    @staticmethod
    def _tmp(path: Path) -> Path:
        """A temporary name unique to this process and call: two processes saving at once never share one."""
        return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")

    def _path(self, name: str, suffix: str) -> Path:
        if "/" in name or name.startswith("."):
            raise ValueError(f"invalid artifact name {name!r}")
        return self.root / f"{name}{suffix}"

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
        path = self._path(name, ".safetensors")
        tmp = self._tmp(path)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        tmp.replace(path)
        return path

    def load_tensors(self, name: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor] | None:
        path = self._path(name, ".safetensors")
        return load_file(str(path), device=str(device)) if path.is_file() else None

    def save_json(self, name: str, data: Any) -> Path:
        path = self._path(name, ".json")
        tmp = self._tmp(path)
        tmp.write_text(json.dumps(data, indent=1, default=str))
        tmp.replace(path)
        return path

    def load_json(self, name: str) -> Any | None:
        path = self._path(name, ".json")
        return json.loads(path.read_text()) if path.is_file() else None

    def delete(self, name: str) -> None:
        for suffix in (".safetensors", ".json"):
            self._path(name, suffix).unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted({p.stem for p in self.root.iterdir() if p.suffix in (".safetensors", ".json") and not p.name.startswith(".")})
