"""Write-path resources shared by key and value training: the frozen bottom pass, the prefix bank, the generic-text pool."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from editmem.interventions import read_layers
from editmem.prefixes import sample_continuations


class WriteResources:
    """Frozen bottom forwards and the self-sampled texts every entry is trained against."""

    @torch.no_grad()
    def _bottom(self, input_ids: torch.Tensor, attn2d: torch.Tensor, layers: Sequence[int], *, stop_at_z: bool) -> dict[str, Any]:
        """Outputs of ``layers`` (by index) and, with ``stop_at_z``, the input hidden states (``"h"``) and kwargs of
        layer ``z``, from one frozen forward that stops as early as it can (:func:`~editmem.interventions.read_layers`;
        ``_dry_run`` keeps the strategy's own hooks passive)."""
        was, self._dry_run = self._dry_run, True
        try:
            seen = read_layers(self.model, self.adapter, input_ids.to(self.device), attn2d.to(self.device), outputs=layers,
                               input_of=self.cfg.injection_layer if stop_at_z else None)
        finally:
            self._dry_run = was
        out: dict[Any, Any] = dict(seen["outputs"])
        if stop_at_z:
            out["h"], out["kwargs"] = seen["hidden"], seen["kwargs"]
        return out

    # ------------------------------------------------------------------ shared write-path resources
    def _prefixes(self) -> list[str]:
        if self._prefix_bank is None:
            from editmem.prefixes import sample_prefixes

            was = self.attached
            if was:
                self.detach()
            try:
                self._prefix_bank = sample_prefixes(self.model, self.tokenizer, n=self.config.prefix_bank,
                                                    max_new_tokens=self.config.prefix_tokens, top_k=self.config.prefix_top_k,
                                                    seed=self.config.seed)
            finally:
                if was:
                    self.attach()
        return self._prefix_bank

    def _start_token_id(self) -> int:
        """Token that starts self-generated text: the document separator ``<|endoftext|>`` when the vocabulary has one
        (REF's sampler start), else BOS, else EOS."""
        tok = self.tokenizer
        vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
        if "<|endoftext|>" in vocab:
            return int(vocab["<|endoftext|>"])
        return int(tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id)

    @torch.no_grad()
    def _generic(self) -> torch.Tensor:
        """Normalised layer-``R`` states of self-generated generic text, ``[m, S, d]`` (computed once, seeded).

        ``generic_samples`` texts start from the start token; ``generic_number_samples`` more start with a digit, the
        commonest hub trigger on tokenizers that split numbers into digits (SmolLM2, Llama-3 splits into 3-digit
        groups): dates and quantities are frequent in unrelated prompts and answers.
        """
        if self._generic_pool is None:
            cfg = self.config
            tok = self.tokenizer
            gen = torch.Generator().manual_seed(cfg.seed + 7919)
            starts = [[self._start_token_id()] for _ in range(cfg.generic_samples)]
            for i in range(cfg.generic_number_samples):
                starts.append([self._start_token_id()] + tok(str(1 + i % 9), add_special_tokens=False)["input_ids"][:1])
            width = max(len(x) for x in starts)
            starts = [x + x[-1:] * (width - len(x)) for x in starts]  # all starts have the same length (1 or 2)
            was = self.attached
            if was:
                self.detach()
            try:
                ids = sample_continuations(self.model, torch.tensor(starts, dtype=torch.long), top_k=cfg.generic_top_k,
                                           new_tokens=cfg.generic_tokens - len(starts[0]), generator=gen)
                seen = self._bottom(ids, torch.ones_like(ids), self.cfg.retrieval_layers, stop_at_z=False)
            finally:
                if was:
                    self.attach()
            pool = torch.stack([seen[r][:, 2:].reshape(-1, seen[r].shape[-1]) for r in self.cfg.retrieval_layers])
            self._generic_pool = F.normalize(pool.float(), dim=-1)
        return self._generic_pool

    def _entry_prefixes(self, seed: int, stage: str) -> list[str]:
        bank = self._prefixes()
        gen = torch.Generator().manual_seed(seed * 2 + (0 if stage == "value" else 1))
        count = self.cfg.n_prefixes if stage == "value" else self.cfg.key_prefixes
        picks = torch.randperm(len(bank), generator=gen)[:count].tolist()
        return [bank[i] for i in picks]
