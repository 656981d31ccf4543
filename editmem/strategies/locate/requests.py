"""Edit requests and the token rows built from them (LYAPLOCK.md §1.1, §2.1, §3 items 1-4).

Every locate-then-edit variant sees an edit through :class:`EditRequest` and reads token rows from
:func:`build_rows`, so key positions, label spans and the KL row are computed in exactly one place.
Token ids are concatenated (prompt ids + target ids), never decoded and re-tokenised, so label positions
cannot shift (spec §3 recommendation); the subject position comes from character offsets
(:func:`editmem.tokens.subject_last_token_index`) searched *after* the random prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from editmem.prefixes import sample_prefixes
from editmem.tokens import encode_prompt_target, subject_last_token_index

#: MEMIT/LyapLock prefix seeds (one sampled prefix each), spec §2.1
PREFIX_STARTS = ["The", "Therefore", "Because", "I", "You"]


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``template`` holds exactly one ``{}`` where ``subject`` goes.

    ``target_ids`` are the answer's token ids exactly as the teacher-forced evaluation scores them
    (tail of ``tokenize(prompt + " " + target)``), with no special tokens.
    """

    fact_id: str
    template: str
    subject: str
    target: str
    target_ids: tuple[int, ...]

    @property
    def prompt(self) -> str:
        return self.template.replace("{}", self.subject, 1)


def make_request(tokenizer, fact_id: str, prompt: str, subject: str, target: str) -> EditRequest:
    """Normalise a fact into an :class:`EditRequest` (spec §1.1).

    The *first* occurrence of the subject becomes the placeholder (the references' ``str.replace`` replaces
    every occurrence and then fail on subjects that occur twice).
    """
    if "{}" in prompt:
        template = prompt
    else:
        pos = prompt.find(subject)
        if pos < 0:
            raise ValueError(f"subject {subject!r} does not occur in prompt {prompt!r}")
        template = prompt[:pos] + "{}" + prompt[pos + len(subject) :]
    if template.count("{}") != 1:
        raise ValueError(f"prompt template must hold exactly one '{{}}', got {template!r}")
    filled = template.replace("{}", subject, 1)
    target = target.strip()
    enc = encode_prompt_target(tokenizer, filled, target)
    ids = list(enc.target_ids)
    if tokenizer.bos_token_id is not None and ids and ids[0] == tokenizer.bos_token_id:
        ids = ids[1:]
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return EditRequest(fact_id=fact_id, template=template, subject=subject, target=target, target_ids=tuple(ids))


def context_templates(model, tokenizer, *, seed: int = 42, length: int = 10) -> list[list[str]]:
    """``[["{}"], [g_1 .. g_5]]`` with ``g_j = prefix_j + ". {}"`` (spec §2.1).

    Each prefix is one top-5 sample continuing a seed word until the text is ``length`` tokens long
    (seed included); braces are blanked so the prefix cannot carry a placeholder.
    """
    prefixes = []
    for i, start in enumerate(PREFIX_STARTS):
        n_seed = len(tokenizer(start, add_special_tokens=False)["input_ids"])
        text = sample_prefixes(model, tokenizer, starts=[start], max_new_tokens=max(1, length - n_seed), top_k=5, seed=seed + i)[0]
        prefixes.append(text.replace("{", " ").replace("}", " ") + ". {}")
    return [["{}"], prefixes]


@dataclass
class Row:
    """One token row: ``ids`` (unpadded), the subject's last-token position ``lookup``, and for rewriting rows
    the label span (``label_pos[j]`` is the position whose logits predict ``target_ids[j]``)."""

    ids: list[int]
    lookup: int
    label_pos: list[int]
    group: int  # 0 = the bare "{}" template, 1 = prefixed templates, -1 = the KL row


def _prompt_row(tokenizer, context: str, request: EditRequest) -> tuple[list[int], int]:
    """Token ids of ``context`` with the request's prompt in it, and the subject's last token index."""
    outer = context.index("{}")
    text = context.replace("{}", request.template, 1)
    char_start = outer + request.template.index("{}")
    text = text.replace("{}", request.subject, 1)
    ids = tokenizer(text)["input_ids"]
    idx = subject_last_token_index(tokenizer, text, request.subject, start=char_start)
    return list(ids), idx


def build_rows(tokenizer, request: EditRequest, templates: Sequence[Sequence[str]], *, with_target: bool) -> list[Row]:
    """Rows of one request: one per template (groups in order), plus the KL row ``"{subject} is a"`` when
    ``with_target`` (the value optimisation); without targets the rows are the key-averaging contexts."""
    rows: list[Row] = []
    t = list(request.target_ids)
    for group, contexts in enumerate(templates):
        for context in contexts:
            ids, idx = _prompt_row(tokenizer, context, request)
            if with_target:
                n_p = len(ids)
                ids = ids + t[:-1]
                rows.append(Row(ids=ids, lookup=idx, label_pos=list(range(n_p - 1, n_p - 1 + len(t))), group=group))
            else:
                rows.append(Row(ids=ids, lookup=idx, label_pos=[], group=group))
    if with_target:
        kl_text = f"{request.subject} is a"
        ids = tokenizer(kl_text)["input_ids"]
        rows.append(Row(ids=list(ids), lookup=subject_last_token_index(tokenizer, kl_text, request.subject), label_pos=[], group=-1))
    return rows
