"""The routing activation indicator (spec §2) and the routing rule (§7): one definition for editing and inference.

``d_t = ‖σ(a_t W'ᵀ) − σ(a_t W0ᵀ)‖₂`` per token (``distance="act_wrapped"``; ``"plain"`` drops σ), reduced per row by
the mean over the row's real tokens — or their maximum for rows longer than ``long_input_len`` tokens. The edit-time
threshold and the inference-time score are the same function of the same kind of token set, which is what keeps
routing from silently never (or always) firing (spec pitfalls 1, 2, 8).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from editmem.strategies.wise.memory import Candidate


def token_distance(o_side: torch.Tensor, o_main: torch.Tensor, sigma: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """Per-token distance ``[B, T]`` between the side-memory and main-memory outputs ``[B, T, d]``."""
    if sigma is None:
        return (o_side - o_main).norm(dim=-1)
    return (sigma(o_side) - sigma(o_main)).norm(dim=-1)


def reduce_rows(d: torch.Tensor, mask: torch.Tensor, *, long_len: int | None = None, long_reduce: str = "max") -> torch.Tensor:
    """One score per row ``[B]``: the mean of ``d`` over the positions where ``mask`` is True (the maximum for rows
    with more than ``long_len`` such positions when ``long_reduce == "max"``); 0 for a row without any."""
    m = mask.to(d.dtype)
    n = m.sum(-1)
    mean = (d * m).sum(-1) / n.clamp_min(1)
    if long_len is None or long_reduce != "max":
        return mean
    peak = d.masked_fill(~mask.bool(), float("-inf")).amax(-1).clamp_min(0)
    return torch.where(n > long_len, peak, mean)


def chat_markers(tokenizer) -> tuple[list[int], list[int]] | None:
    """Token ids that open (the last three of the generation prompt before the user's text) and close (the first
    after it) the user turn in the tokenizer's chat template; None without a template or when it cannot render a
    plain user turn (then every real token is scored)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "alpha"}], tokenize=False, add_generation_prompt=True)
        pre, post = text.split("alpha", 1)
        head = tokenizer(pre, add_special_tokens=False)["input_ids"]
        tail = tokenizer(post, add_special_tokens=False)["input_ids"]
    except Exception:  # noqa: BLE001
        return None
    return (list(head[-3:]), list(tail[:1])) if head and tail else None


def user_span(ids: Sequence[int], markers: tuple[list[int], list[int]] | None) -> tuple[int, int] | None:
    """``[begin, end)`` of the last user turn's content in ``ids`` (None: not chat-templated, score every token).
    The one definition of the scored span, used for the chat-templated edit row and for chat requests at inference,
    so the threshold recorded at edit time and the score at inference reduce over the same tokens (pitfall 1)."""
    if markers is None:
        return None
    head, tail = markers
    ids = list(ids)
    n = len(head)
    start = next((i for i in range(len(ids) - n, -1, -1) if ids[i : i + n] == head), -1)
    if start < 0:
        return None
    begin = start + n
    end = next((i for i in range(begin, len(ids)) if ids[i] == tail[0]), len(ids))
    return (begin, end) if end > begin else None


def hinge_mean(v: torch.Tensor) -> torch.Tensor:
    """Mean of the strictly positive entries of ``v`` (0 when there are none): the reference's margin reduction,
    which does not shrink as more rows satisfy their margin."""
    pos = v > 0
    if not bool(pos.any()):
        return v.sum() * 0.0
    return v[pos].mean()


def margin_loss(d_in: torch.Tensor, d_out: torch.Tensor, margins: Sequence[float]) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_act = hinge(d_out − d_in + γ) + hinge(d_out − α) + hinge(β − d_in)`` (spec §3.1) for in-scope scores
    ``d_in [n]`` and the irrelevant rows' scores ``d_out [m]`` (the reference has m = 1; the gap term then runs over
    every (irrelevant, in-scope) pair)."""
    alpha, beta, gamma = margins
    gap = hinge_mean(d_out.reshape(-1, 1) - d_in.reshape(1, -1) + gamma)
    out = hinge_mean(d_out.reshape(-1) - alpha)
    inn = hinge_mean(beta - d_in)
    return gap + out + inn, {"gap": float(gap.detach()), "out": float(out.detach()), "in": float(inn.detach())}


def choose(scores: dict[str, float], candidates: Sequence[Candidate]) -> int | None:
    """Top-1 routing: the candidate with the highest score among those whose score reaches their threshold, or
    None (main memory). With Merge mode's shared ε this is spec §7.2 (``d_m, d_c < ε → main; else the larger``)."""
    best, best_d = None, float("-inf")
    for i, cand in enumerate(candidates):
        d = scores[cand.name]
        if d >= cand.epsilon and d > best_d:
            best, best_d = i, d
    return best
