"""Random context prefixes sampled from the model itself (ROME/MEMIT/LLP style), shared by all strategies.

Keys and values are computed over several left contexts so an edit does not overfit one exact string.
Sampling is seeded; the seed is stored with each artifact so an entry can be rebuilt exactly.
"""

from __future__ import annotations

import torch

from editmem.adapters.compat import decode_step


@torch.no_grad()
def sample_continuations(model, start_ids: torch.Tensor, *, new_tokens: int, top_k: int,
                         generator: torch.Generator) -> torch.Tensor:
    """``start_ids`` ``[B, s]`` (rows of equal length) followed by ``new_tokens`` top-k samples each, ``[B, s + n]``.

    The one sampling loop of the write paths (prefixes, LLP's generic-text pool): cached decoding, the model as it
    is (callers detach their strategy first), draws from ``generator`` one step at a time for all rows.
    """
    device = next(model.parameters()).device
    ids = start_ids.cpu()
    step, cache = ids, None
    for _ in range(new_tokens):
        logits, cache = decode_step(model, step.to(device), cache)
        top = torch.topk(logits[:, -1].float().cpu(), top_k, dim=-1)
        choice = top.indices.gather(1, torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator))
        ids = torch.cat([ids, choice], dim=1)
        step = choice
    return ids


def sample_prefixes(
    model,
    tokenizer,
    *,
    starts: list[str] | None = None,
    n: int = 3,
    max_new_tokens: int = 10,
    top_k: int = 5,
    seed: int = 0,
) -> list[str]:
    """Sample short continuations with top-k sampling.

    ``starts`` are seed texts (one prefix each, MEMIT uses ``["The", "Therefore", "Because", "I", "You"]``); when
    None, ``n`` prefixes start from the tokenizer's BOS (or EOS) token (LLP). Returned texts have special tokens
    removed and keep their seed text.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if starts is None:
        start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        rows = [[start_id] for _ in range(n)]
    else:
        rows = [tokenizer(s)["input_ids"] for s in starts]
    texts = []
    for ids in rows:  # one row at a time: the start texts differ in length
        out = sample_continuations(model, torch.tensor([ids]), new_tokens=max_new_tokens, top_k=top_k, generator=generator)
        text = tokenizer.decode(out[0].tolist(), skip_special_tokens=True)
        texts.append(text.replace("{", " ").replace("}", " "))
    return texts
