"""Layer statistics: the key second moment ``C = E[k kᵀ]`` of each edited layer (LYAPLOCK.md §8).

``C`` is the uncentred second moment of the rewrite module's input over every non-padding token of a text
corpus, accumulated in float64 and divided by the token count. LyapLock's other moments follow from it
exactly, because the values are collected bias-free as ``v = W0 k`` (spec §6.1): ``C_VK = W0 C`` and
``C_VV = W0 C W0ᵀ`` — so only ``C`` is collected (one pass, and no catastrophic cancellation in ``D``).

Text source, in this order: a plain-text corpus given by path (one passage a line; every
``holdout_every``-th line is held out and never used here, so perplexity can be measured on text the
statistics did not see), optionally mixed with text sampled from the unedited model itself; with no corpus
at all, model-sampled text only. Nothing is downloaded.

Statistics are collected once per (model fingerprint, source, layer) and cached under
``editmem_home()/stats/<fingerprint>/<source-hash>/layer<L>.safetensors`` with the token count and source
description in the file's metadata. They are always collected on the *unedited* model (pitfall 12).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from editmem.models import editmem_home
from editmem.strategies.locate.forward import pad_id_of, read_activations, right_pad

#: generic seeds for model-sampled statistics text (no chat template)
SAMPLE_STARTS = ["The", "In", "A", "It", "This", "When", "One", "There", "He", "She", "We", "After", "As", "His", "Her", "On"]


def default_corpus_path() -> Path:
    """``<repository root>/../shared/data/corpus_passages.txt`` (the project's shared offline corpus)."""
    import editmem

    return Path(editmem.__file__).resolve().parents[1].parent / "shared" / "data" / "corpus_passages.txt"


def corpus_split(path: str | Path, holdout_every: int) -> tuple[list[str], list[str]]:
    """``(statistics lines, held-out lines)``: line ``i`` (0-based, non-empty lines) is held out when
    ``i % holdout_every == holdout_every - 1``; ``holdout_every = 0`` holds nothing out."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if holdout_every <= 0:
        return lines, []
    train = [ln for i, ln in enumerate(lines) if i % holdout_every != holdout_every - 1]
    held = [ln for i, ln in enumerate(lines) if i % holdout_every == holdout_every - 1]
    return train, held


@dataclass(frozen=True)
class StatsSource:
    """Where the statistics text comes from; its :meth:`key` names the cache folder."""

    corpus: str | None
    holdout_every: int = 10
    max_len: int = 256
    sampled_tokens: int = 0
    sample_len: int = 128
    seed: int = 0
    max_tokens: int | None = None

    def describe(self) -> dict:
        info = {
            "corpus": self.corpus,
            "holdout_every": self.holdout_every,
            "max_len": self.max_len,
            "sampled_tokens": self.sampled_tokens,
            "sample_len": self.sample_len,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
        }
        if self.corpus is not None:
            info["corpus_sha256"] = hashlib.sha256(Path(self.corpus).read_bytes()).hexdigest()[:16]
        return info

    def key(self) -> str:
        desc = self.describe()
        desc.pop("corpus")  # the content hash identifies the corpus, not where it lies
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class LayerStats:
    """``C = E[k kᵀ]`` (float64) of one layer and how it was obtained."""

    layer: int
    C: torch.Tensor
    n_tokens: int
    meta: dict = field(default_factory=dict)


def _sampled_rows(model, tokenizer, n_tokens: int, length: int, seed: int, progress: bool) -> list[list[int]]:
    """Pure (temperature 1, top-p 0.95) samples from the model, ``length`` new tokens each, seeded."""
    device = next(model.parameters()).device
    rows: list[list[int]] = []
    n_rows = max(1, -(-n_tokens // length))
    batch = 16
    bar = _bar(progress, n_rows, "sampling statistics text")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for b in range(0, n_rows, batch):
            starts = [SAMPLE_STARTS[(b + i) % len(SAMPLE_STARTS)] for i in range(min(batch, n_rows - b))]
            enc = [tokenizer(s)["input_ids"] for s in starts]
            width = max(len(e) for e in enc)
            pad = pad_id_of(tokenizer)
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_p=0.95, top_k=0,
                                 temperature=1.0, max_new_tokens=length, pad_token_id=pad)
            for r, e in enumerate(enc):
                seq = out[r, width - len(e):].tolist()
                rows.append(seq)
            if bar:
                bar.update(len(starts))
    if bar:
        bar.close()
    return rows


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="rows")


def statistics_rows(model, tokenizer, source: StatsSource, progress: bool = False) -> list[list[int]]:
    """The token rows the statistics are collected on: the corpus minus its held-out lines, truncated, plus any
    model-sampled text, capped at ``source.max_tokens``."""
    rows: list[list[int]] = []
    if source.corpus is not None:
        train, _ = corpus_split(source.corpus, source.holdout_every)
        for line in train:
            ids = tokenizer(line)["input_ids"][: source.max_len]
            if len(ids) > 1:
                rows.append(ids)
    if source.sampled_tokens > 0:
        rows.extend(_sampled_rows(model, tokenizer, source.sampled_tokens, source.sample_len, source.seed, progress))
    if source.max_tokens is not None:
        kept, total = [], 0
        for r in rows:
            if total >= source.max_tokens:
                break
            kept.append(r)
            total += len(r)
        rows = kept
    if not rows:
        raise ValueError("no statistics text: give a corpus or sampled_tokens > 0")
    return rows


def token_batches(rows: Sequence[list[int]], token_budget: int = 4096) -> list[list[list[int]]]:
    """Rows sorted by length and grouped so that a right-padded batch holds at most ``token_budget`` positions."""
    batches: list[list[list[int]]] = []
    current: list[list[int]] = []
    for r in sorted(rows, key=len):
        if current and (len(current) + 1) * len(r) > token_budget:
            batches.append(current)
            current = []
        current.append(r)
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def collect_stats(
    model,
    tokenizer,
    adapter,
    layers: Sequence[int],
    source: StatsSource,
    *,
    token_budget: int = 4096,
    progress: bool = False,
) -> dict[int, LayerStats]:
    """One pass over the source text: ``Σ k kᵀ`` per layer (float32 products per batch, float64 accumulator)."""
    started = time.time()
    device = next(model.parameters()).device
    rows = statistics_rows(model, tokenizer, source, progress)
    d_in = adapter.intermediate_size
    acc = {l: torch.zeros(d_in, d_in, dtype=torch.float64, device=device) for l in layers}
    n_tokens = 0
    batches = token_batches(rows, token_budget)
    bar = _bar(progress, len(rows), "layer statistics")
    pad = pad_id_of(tokenizer)
    for batch in batches:
        ids, mask = right_pad(batch, pad, device)
        keys, _ = read_activations(model, adapter, ids, mask, key_layers=layers)
        sel = mask.bool()
        for l in layers:
            k = keys[l][sel].float()
            acc[l] += (k.T @ k).double()
        n_tokens += int(sel.sum())
        if bar:
            bar.update(len(batch))
    if bar:
        bar.close()
    seconds = time.time() - started
    meta = {**source.describe(), "n_tokens": n_tokens, "seconds": round(seconds, 1), "accumulator": "float64 (float32 per-batch products)"}
    return {l: LayerStats(layer=l, C=acc[l] / n_tokens, n_tokens=n_tokens, meta=dict(meta, layer=l)) for l in layers}


def stats_dir(fingerprint: str, source: StatsSource) -> Path:
    return editmem_home() / "stats" / fingerprint / source.key()


def load_or_collect_stats(
    model,
    tokenizer,
    adapter,
    layers: Sequence[int],
    source: StatsSource,
    *,
    fingerprint: str,
    progress: bool = False,
) -> dict[int, LayerStats]:
    """Cached statistics for ``layers``; missing layers are collected in one pass and written to the cache."""
    folder = stats_dir(fingerprint, source)
    out: dict[int, LayerStats] = {}
    for l in layers:
        path = folder / f"layer{l}.safetensors"
        if path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads(fh.metadata()["editmem"])
            C = load_file(str(path))["C"].to(next(model.parameters()).device)
            out[l] = LayerStats(layer=l, C=C, n_tokens=int(meta["n_tokens"]), meta=meta)
    missing = [l for l in layers if l not in out]
    if missing:
        fresh = collect_stats(model, tokenizer, adapter, missing, source, progress=progress)
        folder.mkdir(parents=True, exist_ok=True)
        for l, st in fresh.items():
            tmp = folder / f"layer{l}.tmp"
            save_file({"C": st.C.cpu().contiguous()}, str(tmp), metadata={"editmem": json.dumps(st.meta)})
            tmp.replace(folder / f"layer{l}.safetensors")
            out[l] = st
    return out
