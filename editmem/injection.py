"""Injection into named decoder layers, shared by every strategy that adds something to the forward pass.

* :class:`PrefixInjection` — ``b`` continuous vectors put in front of the hidden sequence entering layer ``z``
  (LLP's layer-level prompt; RECIPE's continuous prompt at the embeddings is the case ``z = 0``). The real tokens
  keep positions ``0..n-1`` in every layer and the vectors get positions ``-b..-1``: with rotary embeddings this is
  the published layout (prompt at ``0..b-1``, tokens shifted by ``b``) up to a common shift, which attention does
  not see, so layers below and above ``z`` share the model's own position embeddings and KV-cache bookkeeping.
  Layers ``>= z`` get an attention mask with ``b`` extra key columns, allowed per row (rows that do not inject, in
  a mixed batch, mask them). During cached decoding the vectors' keys/values stay in the cache of layers ``>= z``;
  only the mask keeps growing by the extra columns.
* :func:`add_at_positions` — a vector added to a layer's output at chosen positions (locate-then-edit ``δ``,
  activation steering).

Everything model-specific (mask format, rotary cos/sin) comes from the adapter.
"""

from __future__ import annotations

from typing import Any

import torch


class PrefixInjection:
    """The layer arguments and masks of layers ``>= z`` when ``b`` vectors are prepended at layer ``z``.

    >>> inj = PrefixInjection(adapter, b=1)
    >>> kwargs = inj.layer_kwargs(named, attn2d, q_len, hit, with_prefix=True, hidden=h)   # prefill
    >>> hidden = torch.cat([values, h], dim=1)                                            # at layer z
    """

    def __init__(self, adapter, b: int):
        self.adapter = adapter
        self.b = b
        self.boolean = adapter.boolean_masks
        self._prefix_pe: tuple[torch.Tensor, torch.Tensor] | None = None

    def prefix_position_embeddings(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Rotary cos/sin of the prefix positions ``-b..-1`` (input-independent, computed once; None without RoPE)."""
        if self._prefix_pe is None:
            pos = torch.arange(-self.b, 0, device=like.device).unsqueeze(0)
            self._prefix_pe = self.adapter.rotary_cos_sin(pos, like)
        return self._prefix_pe

    def layer_kwargs(self, kwargs: dict[str, Any], attn2d: torch.Tensor, q_len: int, hit: torch.Tensor,
                     with_prefix: bool, hidden: torch.Tensor) -> dict[str, Any]:
        """``kwargs`` of a layer ``>= z`` with the prefix taken into account.

        ``attn2d`` ``[B, past + q]`` is the 2-D mask of the real tokens, ``hit`` ``[B]`` says which rows carry the
        prefix, ``with_prefix`` is True when the prefix positions are part of this forward's queries (the prefill),
        False on cached decode steps (its keys are in the cache).
        """
        b = self.b
        out = dict(kwargs)
        mask = self.attention_mask(attn2d, q_len, hit, with_prefix)
        out["attention_mask"] = self.adapter.layer_mask(mask, hidden.dtype)
        if with_prefix:
            pe = kwargs.get("position_embeddings")
            if pe is not None:
                vcos, vsin = self.prefix_position_embeddings(hidden)
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
            if isinstance(kwargs.get("cache_position"), torch.Tensor):  # transformers < 5.24
                cp = kwargs["cache_position"]
                out["cache_position"] = torch.cat([torch.arange(-b, 0, device=cp.device, dtype=cp.dtype), cp])
        return out

    def attention_mask(self, attn2d: torch.Tensor, q_len: int, hit: torch.Tensor, with_prefix: bool) -> torch.Tensor:
        """Boolean mask ``[B, 1, (b+)q, b+kv]`` (True = attend): the prefix columns first, allowed for rows that
        ``hit``; the prefix queries (when ``with_prefix``) attend causally among themselves."""
        b = self.b
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
        if with_prefix:
            vq = torch.zeros(batch, 1, b, b + kv, dtype=torch.bool, device=device)
            vq[..., :b] = torch.ones(b, b, dtype=torch.bool, device=device).tril()
            rows = torch.cat([vq, rows], dim=2)
        return rows

    @staticmethod
    def prepend(hidden: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """``[vectors ; hidden]`` along the sequence (``vectors`` ``[B, b, d]``, zeros for rows that do not hit)."""
        return torch.cat([vectors.to(hidden.dtype), hidden], dim=1)

    def strip(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last layer's output without the prefix positions (so logits line up with the real tokens)."""
        return hidden[:, self.b :]


def add_at_positions(hidden: torch.Tensor, vectors: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``hidden`` ``[B, T, d]`` with ``vectors[i]`` ``[d]`` added at ``positions[i]`` of row ``i`` (out of place,
    differentiable in ``vectors``)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden + torch.zeros_like(hidden).index_put((rows, positions.to(hidden.device)), vectors.to(hidden.dtype))
