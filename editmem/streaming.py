"""Token streaming for :meth:`editmem.EditableLLM.stream`: a streamer, a stop/cancel criterion and the final record.

Kept apart from ``editable.py`` so that the one method there stays small: ``stream`` runs the ordinary
``EditableLLM.generate`` in a worker thread with a streamer attached (so streaming shares generate's prompt
preparation, locking and traces), and this module turns the streamer's token ids into text pieces.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from editmem.strategies import EditTrace

FinishReason = Literal["stop", "length"]


class StreamResult(BaseModel):
    """The last item :meth:`EditableLLM.stream` yields: the whole answer, its trace and token counts."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    """The text fed to the model (chat template and stated facts included)."""
    text: str
    """The answer: every streamed piece joined, cut before the first stop sequence."""
    trace: EditTrace | None = None
    """Which stored facts fired (None when the strategy has nothing to say)."""
    input_tokens: int
    """Prompt tokens fed to the model."""
    output_tokens: int
    """Tokens the model generated (a stop sequence's own tokens included, the end-of-sequence token included)."""
    finish_reason: FinishReason
    """``stop``: end of sequence or a stop sequence; ``length``: ``max_new_tokens`` ran out."""


_END = object()


class TokenStreamer(BaseStreamer):
    """Receives token ids from ``model.generate`` (in the worker thread) and queues decoded text deltas.

    The first ``put`` is the prompt (counted, not decoded). Text is re-decoded from all generated ids each step,
    so multi-token characters come out whole: a delta ending in an incomplete UTF-8 sequence waits for the next token.
    """

    def __init__(self, tokenizer: Any, eos_ids: set[int]):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.prompt_tokens = 0
        self.ids: list[int] = []
        self.saw_eos = False
        self.text = ""
        self.queue: queue.Queue[Any] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            self.prompt_tokens = int(value.shape[-1])
            return
        new = [int(t) for t in value.reshape(-1).tolist()]
        if self.saw_eos:
            return
        for token in new:
            self.ids.append(token)
            if token in self.eos_ids:
                self.saw_eos = True
                break
        decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if decoded.endswith("\ufffd"):
            return
        if len(decoded) > len(self.text) and decoded.startswith(self.text):
            self.queue.put(decoded[len(self.text) :])
        self.text = decoded

    def end(self) -> None:
        self.queue.put(_END)


class CancelCriterion(StoppingCriteria):
    """Stops generation when the consumer asks (stop sequence seen, generator closed) or a deadline passes."""

    def __init__(self, deadline: float | None):
        self.cancel = threading.Event()
        self.deadline = deadline
        self.timed_out = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.BoolTensor:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
            self.cancel.set()
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could still begin a stop sequence (so must not be emitted yet)."""
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                keep = max(keep, n)
                break
    return keep


def first_stop(text: str, stops: list[str]) -> int | None:
    """Index of the earliest stop sequence in ``text`` (None when there is none)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None
