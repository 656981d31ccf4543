"""Token bookkeeping shared by strategies and metrics: the one place that knows where an answer starts.

Every strategy that trains on ``prompt -> target`` and every teacher-forced metric uses
:func:`encode_prompt_target`, so the prompt/target boundary is computed identically everywhere
(EVALUATION.md §3: ``s = p + " " + y``, boundary from the joint tokenisation, never from pad counting).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PromptTarget:
    """Token ids of ``prompt + " " + target`` and where the target starts.

    ``input_ids[start:]`` are the target tokens; the logit at position ``t-1`` predicts token ``t``.
    ``mismatch`` is True when the prompt's own tokens were not a prefix of the joint tokenisation and the
    ids were built by concatenation instead (counted by the evaluation harness).
    """

    input_ids: list[int]
    start: int
    mismatch: bool = False

    @property
    def target_ids(self) -> list[int]:
        return self.input_ids[self.start :]


def encode_prompt_target(tokenizer, prompt: str, target: str) -> PromptTarget:
    """Tokenise ``prompt + " " + target`` with the tokenizer's default special tokens."""
    joint = tokenizer(prompt + " " + target)["input_ids"]
    prompt_ids = tokenizer(prompt)["input_ids"]
    n_p = len(prompt_ids)
    if joint[:n_p] == prompt_ids and len(joint) > n_p:
        return PromptTarget(list(joint), n_p)
    tail = tokenizer(" " + target, add_special_tokens=False)["input_ids"]
    return PromptTarget(list(prompt_ids) + list(tail), n_p, mismatch=True)


def encode_chat_answer(tokenizer, prompt: str, target: str, *, end_turn: bool = True) -> PromptTarget:
    """Token ids of ``prompt`` as a user turn in the tokenizer's chat template, then ``target`` as the assistant's
    answer, and where the answer starts.

    With ``end_turn`` the answer is followed by the template's end-of-turn token (``<|im_end|>`` for ChatML), taken
    from the template's rendering of the whole exchange: the first special token after the answer. A value trained
    to produce it ends a greedy chat answer after the target instead of running on ("Lamiinaeinae..."). Nothing is
    added when the template renders the exchange differently from the generation prompt or puts text between the
    answer and the special token.
    """
    user = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    head_ids = list(tokenizer(head, add_special_tokens=False)["input_ids"])
    answer = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    return PromptTarget(head_ids + answer + (_end_of_turn(tokenizer, user, head, target) if end_turn else []), len(head_ids))


def _end_of_turn(tokenizer, user: list[dict[str, str]], head: str, target: str) -> list[int]:
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": target}], tokenize=False)
    if not full.startswith(head) or not full[len(head):].startswith(target):
        return []
    after = full[len(head) + len(target):]
    found = [(after.find(t), t) for t in tokenizer.all_special_tokens if t and t in after]
    if not found:
        return []
    at, token = min(found)
    return [int(tokenizer.convert_tokens_to_ids(token))] if not after[:at].strip() else []


def subject_last_token_index(tokenizer, text: str, subject: str, *, start: int = 0) -> int:
    """Index of the last token of the first occurrence of ``subject`` at or after character ``start`` in
    ``tokenizer(text)``.

    Uses character offsets, so it is exact for any tokenizer that provides them (all fast tokenizers); falls
    back to MEMIT's rule ``len(tokenize(text_before_subject + subject)) - 1`` otherwise. ``start`` lets a caller
    that put a random prefix in front of the prompt skip a subject that happens to occur inside the prefix.
    """
    pos = text.find(subject, start)
    if pos < 0:
        raise ValueError(f"subject {subject!r} not found in {text!r}")
    end = pos + len(subject)
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, TypeError, KeyError):
        offsets = None
    if offsets:
        last = None
        for i, (a, b) in enumerate(offsets):
            if b > a and a < end and b > pos:
                last = i
        if last is not None:
            return last
    return len(tokenizer(text[:end])["input_ids"]) - 1


def pad_batch(sequences: list[list[int]], pad_id: int, *, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists into ``(input_ids, attention_mask)``; ``side`` is ``left`` (generation) or ``right``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if side == "left":
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        else:
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
    return ids, mask


def length_buckets(lengths: list[int], *, overhead: int = 16) -> list[list[int]]:
    """Split row indices into buckets padded separately, minimising ``sum(rows * longest) + overhead * buckets``.

    Padding a short row to a long one costs compute on every training step; a separate bucket costs one more
    (smaller) forward call, worth about ``overhead`` tokens. Exact (dynamic programming over rows sorted by
    length); buckets are returned longest first, indices in the order of ``lengths`` within a bucket.
    """
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # rows i..j-1 form the last bucket; its longest is order[i]
            cost = best[i] + (j - i) * lengths[order[i]] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets = []
    j = n
    while j > 0:
        i = cut[j]
        buckets.append(sorted(order[i:j]))
        j = i
    return buckets[::-1]
