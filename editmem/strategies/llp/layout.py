"""Where the value sits in the sequence of layers ``>= z``: position embeddings and attention masks (see the package docstring, "Layout")."""

from __future__ import annotations

from typing import Any

import torch

from editmem.adapters import compat


class PromptLayout:
    """Layer kwargs for the ``b`` value positions in front of the real tokens (used by training and inference alike)."""

    def _value_position_embeddings(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos/sin of the value positions ``-b..-1`` (input-independent, computed once)."""
        if self._value_pe is None:
            pos = torch.arange(-self.cfg.b, 0, device=like.device).unsqueeze(0)
            self._value_pe = self.adapter.rotary_cos_sin(pos, like)
        return self._value_pe

    def _extend_layer_kwargs(self, kwargs: dict[str, Any], attn2d: torch.Tensor, q_len: int, hit: torch.Tensor,
                             value_queries: bool, hidden: torch.Tensor) -> dict[str, Any]:
        """Layer kwargs for layers ``>= z`` with ``b`` value positions in front (mask, position embeddings)."""
        b = self.cfg.b
        out = dict(kwargs)
        mask = self._extended_mask(attn2d, q_len, hit, value_queries)
        out["attention_mask"] = compat.layer_mask(mask, boolean=self._bool_mask, dtype=hidden.dtype)
        if value_queries:
            pe = kwargs.get("position_embeddings")
            if pe is not None:
                vcos, vsin = self._value_position_embeddings(hidden)
                cos, sin = pe
                batch = cos.shape[0]
                out["position_embeddings"] = (
                    torch.cat([vcos.to(cos.dtype).expand(batch, -1, -1), cos], dim=1),
                    torch.cat([vsin.to(sin.dtype).expand(batch, -1, -1), sin], dim=1),
                )
            pid = kwargs.get("position_ids")
            if isinstance(pid, torch.Tensor):
                vpos = torch.arange(-b, 0, device=pid.device, dtype=pid.dtype).unsqueeze(0).expand(pid.shape[0], -1)
                out["position_ids"] = torch.cat([vpos, pid], dim=1)
            if "cache_position" in kwargs and isinstance(kwargs["cache_position"], torch.Tensor):
                cp = kwargs["cache_position"]
                out["cache_position"] = torch.cat([torch.arange(-b, 0, device=cp.device, dtype=cp.dtype), cp])
        return out

    def _extended_mask(self, attn2d: torch.Tensor, q_len: int, hit: torch.Tensor, value_queries: bool) -> torch.Tensor:
        """Boolean attention mask ``[B, 1, (b+)q, b+kv]`` (True = attend) for layers ``>= z``."""
        b = self.cfg.b
        batch, kv = attn2d.shape
        past = kv - q_len
        device = attn2d.device
        keys_ok = attn2d.bool()[:, None, None, :]
        qpos = torch.arange(past, kv, device=device)[:, None]
        causal = torch.arange(kv, device=device)[None, :] <= qpos
        real = keys_ok & causal[None, None]  # [B,1,q,kv]
        # a padded query that sees nothing may attend to itself (avoids NaN rows; its output is never used)
        empty = ~real.any(-1, keepdim=True)
        if bool(empty.any()):
            own = torch.zeros(q_len, kv, dtype=torch.bool, device=device)
            own[torch.arange(q_len), torch.arange(past, kv)] = True
            real = real | (empty & own[None, None])
        vcols = hit.to(device)[:, None, None, None].expand(batch, 1, q_len, b)
        rows = torch.cat([vcols, real], dim=-1)
        if value_queries:
            vq = torch.zeros(batch, 1, b, b + kv, dtype=torch.bool, device=device)
            vq[..., :b] = torch.ones(b, b, dtype=torch.bool, device=device).tril()
            rows = torch.cat([vq, rows], dim=2)
        return rows
