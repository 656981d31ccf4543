"""Model-facing measurements on an :class:`~editmem.EditableLLM`: teacher-forced passes, greedy answers, samples.

Every measurement goes through the same path a user's query takes, so every strategy is scored fairly:

* the prompt is prepared by ``llm.prepare_prompt(p, chat=False)`` (in-context strategies state their facts; for
  hook/weight strategies this is the identity), then ``prompt + " " + target`` is tokenised by
  :func:`editmem.tokens.encode_prompt_target`, the single definition of the prompt/target boundary;
* each forward runs inside ``llm.strategy.forward_call()`` through ``llm.model`` (the strategy's hooks are
  active), one prompt per forward (router strategies decide per call);
* generation metrics use ``llm.generate`` as a user would (chat template on chat models, greedy).
"""

from __future__ import annotations

import torch

from editmem.eval.metrics import TeacherForced, fluency_text, score_logits
from editmem.tokens import encode_prompt_target

#: EVALUATION.md §5 step 3: sequences are cut to the first 1024 tokens
MAX_TOKENS = 1024


class Scorer:
    """Measurements on one ``EditableLLM`` (its current state: edited, or inside ``strategy.disabled()``)."""

    def __init__(self, llm, *, chat_teacher_forced: bool = False, max_new_tokens: int = 32):
        self.llm = llm
        self.chat_teacher_forced = chat_teacher_forced
        self.max_new_tokens = max_new_tokens
        self.mismatches = 0
        self.batch_fallbacks = 0
        """Batched generation calls that raised and were answered one prompt at a time instead."""

    def prepared(self, prompt: str, *, chat: bool = False) -> str:
        text, _ = self.llm.prepare_prompt(prompt, chat=chat)
        return text

    @torch.no_grad()
    def teacher_forced(self, prompt: str, target: str, *, chat: bool | None = None) -> TeacherForced:
        """One forward over ``prepare_prompt(prompt) + " " + target``; answer-position predictions and NLL.

        ``chat`` wraps the prompt in the chat template (Rel./Gen. only, and only when asked: §3 step 1);
        locality probes always pass ``chat=False``.
        """
        use_chat = self.chat_teacher_forced if chat is None else chat
        text = self.prepared(prompt, chat=use_chat)
        encoded = encode_prompt_target(self.llm.tokenizer, text, target)
        self.mismatches += int(encoded.mismatch)
        ids = encoded.input_ids[:MAX_TOKENS]
        if encoded.start >= len(ids):
            raise ValueError(f"prompt alone is longer than {MAX_TOKENS} tokens: {prompt[:80]!r}...")
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.llm.loaded.device)
        with self.llm.strategy.forward_call():
            logits = self.llm.model(input_ids=input_ids).logits[0]
        return score_logits(logits, ids, encoded.start, mismatch=encoded.mismatch)

    @torch.no_grad()
    def answer_pass(self, prompt: str, answer: str) -> TeacherForced | None:
        """One forward over ``prompt`` as a user asks it (chat template on chat models, like :meth:`answer`)
        followed by ``answer``'s tokens; None for an empty answer.

        Fed a pre-edit greedy answer, the argmax at each answer position is what the model would generate next,
        so comparing these predictions before and after editing (``token_agreement``) is a teacher-forced
        version of "the answer did not change" that is less brittle than exact string equality.
        """
        if not answer.strip():
            return None
        tok = self.llm.tokenizer
        text = self.prepared(prompt, chat=self.llm.chat)
        if self.llm.chat:
            head = list(tok(text, add_special_tokens=False)["input_ids"])
            ids, start = head + list(tok(answer, add_special_tokens=False)["input_ids"]), len(head)
        else:
            encoded = encode_prompt_target(tok, text, answer)
            ids, start = list(encoded.input_ids), encoded.start
        ids = ids[:MAX_TOKENS]
        if start >= len(ids):
            return None
        self.llm.strategy.begin_forward()
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.llm.loaded.device)
        logits = self.llm.model(input_ids=input_ids).logits[0]
        return score_logits(logits, ids, start)

    def answer(self, prompt: str) -> str:
        """Greedy answer as a user sees it (chat template on chat models)."""
        return self.llm.generate(prompt, max_new_tokens=self.max_new_tokens).text

    def answers(self, prompts: list[str]) -> list[tuple[str, bool | None]]:
        """Greedy answers of several prompts in one left-padded batch, with whether the strategy fired.

        ``fired`` is None when the strategy reports no trace (hook/weight strategies without one).
        """
        try:
            outs = self.llm.generate(list(prompts), max_new_tokens=self.max_new_tokens)
        except RuntimeError:
            if len(prompts) == 1:
                raise
            # A strategy that claims batch safety but fails on a padded batch (seen with llp, 2026-12) must not
            # end the run: answer the chunk one prompt at a time (exact) and count it for the report.
            self.batch_fallbacks += 1
            outs = [self.llm.generate(p, max_new_tokens=self.max_new_tokens) for p in prompts]
        return [(o.text, None if o.trace is None else o.trace.fired) for o in outs]

    @torch.no_grad()
    def sample_texts(self, prompts: list[str], *, seed: int, total_tokens: int = 100, top_k: int = 5) -> list[str]:
        """MEMIT fluency samples (§6.3): top-k sampling until prompt + continuation is ``total_tokens`` long.

        The model sees each prepared prompt (stated facts included, no chat template) and the prompts are sampled
        as one left-padded batch (sampling is random anyway, so batching changes nothing measurable). The returned
        text is the *user* prompt plus the continuation: facts stated by an in-context strategy never count
        towards fluency.
        """
        tok = self.llm.tokenizer
        budgets = [max(1, total_tokens - len(tok(p)["input_ids"])) for p in prompts]
        torch.manual_seed(seed)
        outs = self.llm.generate(list(prompts), chat=False, max_new_tokens=max(budgets), min_new_tokens=max(budgets),
                                 do_sample=True, top_k=top_k, top_p=1.0, temperature=1.0)
        texts = []
        for prompt, budget, out in zip(prompts, budgets, outs):
            ids = tok(out.text, add_special_tokens=False)["input_ids"][:budget]
            texts.append(fluency_text(prompt, tok.decode(ids, skip_special_tokens=True)))
        return texts
