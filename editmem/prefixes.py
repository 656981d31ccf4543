"""Random context prefixes sampled from the model itself (ROME/MEMIT/LLP style), shared by all strategies.

Keys and values are computed over several left contexts so an edit does not overfit one exact string.
Sampling is seeded; the seed is stored with each artifact so an entry can be rebuilt exactly.
"""

from __future__ import annotations

import torch

from editmem.adapters.compat import decode_step


@torch.no_grad()
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
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if starts is None:
        start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        rows = [[start_id] for _ in range(n)]
    else:
        rows = [tokenizer(s)["input_ids"] for s in starts]
    texts = []
    for ids in rows:
        input_ids = torch.tensor([ids], device=device)
        cache = None
        generated: list[int] = []
        step_input = input_ids
        for _ in range(max_new_tokens):
            logits, cache = decode_step(model, step_input, cache)
            logits = logits[0, -1].float().cpu()
            top = torch.topk(logits, top_k)
            probs = torch.softmax(top.values, dim=-1)
            choice = top.indices[torch.multinomial(probs, 1, generator=generator)].item()
            generated.append(choice)
            step_input = torch.tensor([[choice]], device=device)
        text = tokenizer.decode(ids + generated, skip_special_tokens=True)
        texts.append(text.replace("{", " ").replace("}", " "))
    return texts
