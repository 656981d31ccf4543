"""Key training: prefix-averaged subject states refined by InfoNCE (+ generic and partial-subject hinges)."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from editmem.optim import MaskedAdam
from editmem.strategies.llp.records import _FactRec, _subject_index
from editmem.tokens import pad_batch


class KeyTraining:
    """Key refinement of a write's entries against the stored keys."""

    # ------------------------------------------------------------------ key training
    def _key_texts(self, subject: str, entry_facts: list[_FactRec], seed: int) -> list[tuple[str, str, int]]:
        """The key's positive contexts ``(text, subject, where the prompt starts)``: every prefixed prompt and, with
        ``key_bare_context``, the bare prompt."""
        sep = self.cfg.key_separator
        prefixes = self._entry_prefixes(seed, "key")
        texts: list[tuple[str, str, int]] = []
        for fact in entry_facts:
            surface = fact.surface or subject
            if self.cfg.key_bare_context:
                texts.append((fact.prompt, surface, 0))
            texts.extend((f"{p}{sep}{fact.prompt}", surface, len(p) + len(sep)) for p in prefixes)
        return texts

    def _partial_texts(self, subject: str, entry_facts: list[_FactRec], seed: int) -> list[tuple[str, str, int]]:
        """Contexts of the subject's partial forms (leading words dropped: ``Kelly`` for ``Gerald Kelly``): each alone
        after the entry's key prefixes and, with ``key_bare_context``, inside the entry's own prompts in place of the
        subject. Empty for a one-word subject."""
        words = subject.split()
        sep = self.cfg.key_separator
        prefixes = self._entry_prefixes(seed, "key")
        texts: list[tuple[str, str, int]] = []
        for part in (" ".join(words[i:]) for i in range(1, len(words))):
            texts.extend((f"{p}{sep}{part}", part, len(p) + len(sep)) for p in prefixes)
            if self.cfg.key_bare_context:
                for fact in entry_facts:
                    surface = fact.surface or subject
                    at = fact.prompt.find(surface)
                    if at >= 0 and surface == subject:
                        texts.append((fact.prompt[:at] + part + fact.prompt[at + len(surface):], part, at))
        return texts

    @torch.no_grad()
    def _subject_states(self, *groups: list[tuple[str, str, int]]) -> tuple[torch.Tensor, ...]:
        """States ``[m, P, d]`` of each ``(text, subject, search_from)``'s last subject token at every retrieval layer,
        one tensor per group, all groups in one forward pass of the layers below the last retrieval layer. A subject
        ending on the first token is dropped (that position is the attention sink, whose state says nothing about the
        subject); prefixed texts never do. Each text runs only up to its subject's last token: with causal attention
        the tokens after it do not change that state."""
        kept = [[(t, i) for t, subj, start in group if (i := _subject_index(self.tokenizer, t, subj, start)) > 0]
                for group in groups]
        flat = [pair for group in kept for pair in group]
        seqs = [self.tokenizer(t)["input_ids"][: i + 1] for t, i in flat]
        ids, attn = pad_batch(seqs, self.tokenizer.pad_token_id or 0, side="right")
        seen = self._bottom(ids, attn, self.cfg.retrieval_layers, stop_at_z=False)
        rows = torch.arange(len(flat))
        idx = torch.tensor([i for _, i in flat])
        states = torch.stack([seen[r][rows, idx].float() for r in self.cfg.retrieval_layers])  # [m, sum P, d]
        return tuple(states.split([len(group) for group in kept], dim=1))

    def _key_queries(self, subject: str, entry_facts: list[_FactRec], seed: int) -> torch.Tensor:
        """Subject-token states ``[m, P, d]`` of the key's positive contexts (:meth:`_key_texts`)."""
        return self._subject_states(self._key_texts(subject, entry_facts, seed))[0]

    def _partial_queries(self, subject: str, entry_facts: list[_FactRec], seed: int) -> torch.Tensor | None:
        """States ``[m, P', d]`` of the subject's partial forms (:meth:`_partial_texts`); None for a one-word subject."""
        texts = self._partial_texts(subject, entry_facts, seed)
        return self._subject_states(texts)[0] if texts else None

    def _refine_key(self, subject: str, entry_facts: list[_FactRec], seed: int, negatives: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The write path's key stage: prefix-averaged subject states refined against ``negatives`` (normalised keys
        ``[m, N, d]``; default: the stored keys). Positives and partial-subject negatives share one forward pass."""
        positive = self._key_texts(subject, entry_facts, seed)
        negative = self._partial_texts(subject, entry_facts, seed) if self.cfg.partial_subject_weight > 0 else []
        queries, partial = self._subject_states(positive, negative)
        negatives = self._stored_negatives() if negatives is None else negatives
        return self._train_key(queries, negatives, seed, partial=partial if partial.shape[1] else None)

    def _stored_negatives(self) -> torch.Tensor:
        """The stored keys, normalised, on the CPU: ``[m, N, d]`` (``N`` = 0 for an empty memory)."""
        mats = self._get_matrices()
        if mats is None:
            return torch.zeros(len(self.cfg.retrieval_layers), 0, self.adapter.hidden_size)
        return mats[0].cpu()

    def _refine_keys(self, jobs: list[tuple[str, str, list[_FactRec], int, torch.Tensor | None]]
                     ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """Keys of a write's entries in order, each refined against the stored keys and the ones before it (a kept
        key, on a value retrain, is reused as is)."""
        negatives = self._stored_negatives()
        out = []
        for _, subject, facts, seed, kept_key in jobs:
            t0 = time.perf_counter()
            if kept_key is not None:
                key, stats = kept_key, {"key_kept": True}
            else:
                key, stats = self._refine_key(subject, facts, seed, negatives)
            stats["key_seconds"] = round(time.perf_counter() - t0, 3)
            negatives = torch.cat([negatives, F.normalize(key.float().cpu(), dim=-1).unsqueeze(1)], dim=1)
            out.append((key, stats))
        return out

    def _train_key(self, queries: torch.Tensor, negatives: torch.Tensor | None, seed: int,
                   partial: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """InfoNCE (+ generic hinge, + partial-subject hinge) refinement of one key, all layers at once with
        per-layer Adam and early stop.

        ``queries`` ``[m, P, d]``; ``negatives`` normalised stored keys ``[m, N, d]`` (None when the memory is empty);
        ``partial`` states of the subject's partial forms ``[m, P', d]`` (see ``partial_subject_weight``).
        """
        cfg, conf = self.cfg, self.config
        k0 = queries.mean(1) if cfg.key_init == "mean" else queries[:, -1]
        hinge = cfg.key_objective == "infonce+generic_hinge"
        has_neg = negatives is not None and negatives.shape[1] > 0
        stats: dict[str, Any] = {"key_steps": 0}
        partial_n = F.normalize(partial, dim=-1) if partial is not None else None
        if not has_neg and not hinge and partial_n is None:
            return k0.clone(), {**stats, "key_shift": 0.0, **self._hub_check(k0)}
        pool = self._generic() if hinge else None
        qn = F.normalize(queries, dim=-1)
        k = k0.clone().requires_grad_(True)
        adam = MaskedAdam(k, lr=cfg.key_lr)
        active = torch.ones(k.shape[0], dtype=torch.bool)
        gen = torch.Generator().manual_seed(seed * 31 + 17)
        tau = conf.key_temperature
        loss = torch.zeros(k.shape[0])
        for step in range(conf.key_steps):
            kn = F.normalize(k, dim=-1)
            cos_pos = torch.einsum("md,mpd->mp", kn, qn)
            loss = torch.zeros(k.shape[0])
            if has_neg:
                n = negatives.shape[1]
                if n > conf.key_negatives:
                    pick = torch.randperm(n, generator=gen)[: conf.key_negatives]
                    neg = negatives[:, pick]
                else:
                    neg = negatives
                cos_neg = torch.einsum("md,mnd->mn", kn, neg)
                pos = torch.exp(cos_pos / tau).mean(1)
                negs = torch.exp(cos_neg / tau).mean(1)
                loss = loss - torch.log(pos / (pos + negs))
            if hinge:
                cos_g = torch.einsum("md,msd->ms", kn, pool)
                loss = loss + conf.hinge_alpha * F.relu(cos_g - conf.hinge_mu_neg).mean(1)
                loss = loss + conf.hinge_alpha * F.relu(conf.hinge_mu_pos - cos_pos).mean(1)
            if partial_n is not None:
                cos_p = torch.einsum("md,mpd->mp", kn, partial_n)
                loss = loss + cfg.partial_subject_weight * F.relu(cos_p - conf.partial_subject_mu).mean(1)
            active &= ~(loss.detach() < conf.key_stop_loss)  # REF: break before stepping
            if not bool(active.any()):
                break
            adam.zero_grad()
            loss[active].sum().backward()
            adam.step(active.view(-1, 1))
            stats["key_steps"] = step + 1
        k = k.detach()
        stats["key_shift"] = round(float(((k - k0).norm(dim=-1) / k0.norm(dim=-1)).mean()), 4)
        stats["key_loss"] = round(float(loss.detach().mean()), 4)
        stats.update(self._hub_check(k))
        return k, stats

    def _hub_check(self, key: torch.Tensor) -> dict[str, Any]:
        """Does ``key`` match some generic token above ``t_layer`` in >= ``t_vote`` layers (it would fire on
        unrelated prompts)?"""
        pool = self._generic()
        max_g = torch.einsum("md,msd->ms", F.normalize(key.float(), dim=-1), pool).amax(1)
        return {"hub": bool(int((max_g > self.cfg.t_layer).sum()) >= self.cfg.t_vote),
                "generic_max_cos": [round(float(x), 3) for x in max_g]}
