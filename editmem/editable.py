"""EditableLLM: a causal LM + a persistent edit memory + an editing strategy, behind one small API."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch
from pydantic import BaseModel, Field

from editmem.facts import Fact, FactStatus, LedgerEntry, StoredFact, parse_fact, to_utc, utcnow
from editmem.memory.store import AddResult, EditMemory
from editmem.models import DEFAULT_MODEL, LoadedModel, load_model
from editmem.strategies import DEFAULT_STRATEGY, EditTrace, Strategy, get_strategy
from editmem.tokens import pad_batch

if TYPE_CHECKING:
    from collections.abc import Iterator

    from editmem.streaming import StreamResult

Message = dict[str, str]
PromptInput = Union[str, Sequence[Message]]


class Generation(BaseModel):
    """One generated answer and where it came from."""

    prompt: str
    """The text actually fed to the model (chat template and stated facts included)."""
    text: str
    """The generated continuation only."""
    trace: EditTrace | None = None
    """Which stored facts fired for this answer (None when the strategy has nothing to say)."""


class EditReport(BaseModel):
    """Outcome of :meth:`EditableLLM.edit`."""

    added: list[str] = Field(default_factory=list)
    duplicates: list[str] = Field(default_factory=list)
    stale: list[str] = Field(default_factory=list)
    """facts superseded earlier and sent again: not re-activated (see :meth:`EditMemory.add`)"""
    superseded: dict[str, str] = Field(default_factory=dict)
    """old fact id -> new fact id"""

    def __len__(self) -> int:
        return len(self.added)


class Explanation(BaseModel):
    """Answer with and without the edits, and the stored facts behind the difference."""

    prompt: str
    answer: str
    base_answer: str
    trace: EditTrace
    facts: list[dict[str, Any]] = Field(default_factory=list)


class EditableLLM:
    """A language model whose knowledge is kept current by editing.

    >>> llm = EditableLLM.open("./store", model="smollm2-135m-instruct", strategy="context")
    >>> llm.edit([{"subject": "Twitter", "prompt": "Twitter is owned by", "target": "X Corp."}])
    >>> llm.generate("Who owns Twitter?")

    Open with :meth:`open`: it creates the store or reopens it, restoring every active edit from the stored
    artifacts without recomputation (facts with no artifact are applied, artifacts with no active fact dropped).

    Thread safety: ``generate``, ``explain``, ``edit`` and ``forget`` may be called from several threads (LangChain's
    ``batch``, parallel graph branches). They run one at a time on the shared model (a re-entrant lock: a forward's
    hooks and a write's training cannot interleave), and each call's routing decision and trace come back with
    that call. Pass several prompts to one :meth:`generate` for throughput: they run as one batched forward.
    """

    def __init__(self, loaded: LoadedModel, memory: EditMemory, strategy: Strategy, *, chat: bool | None = None):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.memory = memory
        self.strategy = strategy
        self.chat = loaded.is_chat if chat is None else chat
        #: serialises model calls and writes (see the class docstring)
        self.lock = threading.RLock()
        self._synced_seq = memory.seq

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        store_dir: str | Path,
        *,
        model: str | LoadedModel = DEFAULT_MODEL,
        strategy: str | None = None,
        device: str = "auto",
        chat: bool | None = None,
        actor: str = "sdk",
        switch_strategy: bool = False,
        chroma_url: str | None = None,
        **config: Any,
    ) -> "EditableLLM":
        """Create or reopen the store at ``store_dir``.

        ``strategy`` defaults to the one the store was built with (:data:`~editmem.strategies.DEFAULT_STRATEGY` for a
        new store); ``config`` overrides
        that strategy's config fields (unknown names raise ``TypeError``). A store keeps its strategy: another one
        raises :class:`~editmem.memory.StoreMismatchError` unless ``switch_strategy``. ``chroma_url`` puts the facts on
        a Chroma server (docs/deployment.md).
        """
        memory = EditMemory(store_dir, chroma_url=chroma_url, follow=False)
        loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device)
        meta = memory.read_meta() or {}
        name = strategy or meta.get("strategy") or DEFAULT_STRATEGY
        memory.check_model(model_name=loaded.name, fingerprint=loaded.fingerprint, strategy=name, switch_strategy=switch_strategy)
        config_cls, strategy_cls = get_strategy(name)
        artifacts = memory.artifacts(name)
        stored_config = None
        if (artifacts.root / "strategy_config.json").is_file():
            try:
                stored_config = config_cls.from_pretrained(artifacts.root)
            except (TypeError, ValueError):
                stored_config = None
        strategy_config = stored_config.replace(**config) if stored_config is not None else config_cls.from_dict(config)
        instance = strategy_cls(loaded.model, loaded.tokenizer, strategy_config, artifacts, memory)
        llm = cls(loaded, memory, instance, chat=chat)
        llm._restore(actor=actor)
        return llm

    def _restore(self, *, actor: str) -> None:
        restored = self.strategy.load()
        active = self.memory.list(status=FactStatus.active)
        active_ids = {s.id for s in active}
        if restored is None:
            self.strategy.artifacts.clear()
            restored = set()
        stale = sorted(restored - active_ids)
        if stale:
            self.strategy.remove(stale, active=[s for s in active if s.id in restored])
        missing = [s for s in active if s.id not in restored]
        if missing:
            self._apply_in_batches(missing)
        self.strategy.attach()
        self._synced_seq = self.memory.seq
        if stale or missing or not restored:
            self._save_if_free()

    def _save_if_free(self) -> None:
        """Save the strategy's artifacts unless the store is read-only or another process is writing (readers
        such as ``editmem ask`` during an import keep their rebuilt state in memory instead)."""
        if self.memory.readonly or self.memory.lock.locked_by_other():
            return
        with self.memory.lock.hold():
            self.strategy.save()

    def sync(self) -> int:
        """Catch up with edits other processes made (by ledger sequence): apply new active facts to the strategy
        and remove those superseded or retracted since. Returns how many facts changed. Cheap when none did."""
        self.memory.sync()
        if self.memory.seq == self._synced_seq:
            return 0
        now_active, gone = self.memory.changes_since(self._synced_seq)
        applied = self.strategy.applied_ids()
        drop = sorted(gone & applied)
        if drop:
            self.strategy.remove(drop, active=self.memory.list(status=FactStatus.active))
        new = [self.memory.get(i) for i in sorted(now_active - applied)]
        if new:
            self._apply_in_batches(new)
        self._synced_seq = self.memory.seq
        return len(drop) + len(new)

    def _apply_in_batches(self, facts: Sequence[StoredFact], batch_size: int | None = None) -> None:
        size = batch_size or self.strategy.config.batch_size
        for i in range(0, len(facts), size):
            self.strategy.apply(facts[i : i + size])

    # -- edits ---------------------------------------------------------------------------------
    def edit(
        self,
        facts: Fact | dict[str, Any] | Iterable[Fact | dict[str, Any]],
        *,
        actor: str = "sdk",
        batch_size: int | None = None,
    ) -> EditReport:
        """Store and apply facts. All records are validated first: one bad record raises
        :class:`~editmem.facts.FactValidationError` (naming its index and field) and nothing is stored."""
        if isinstance(facts, (Fact, dict)):
            facts = [facts]
        parsed = [parse_fact(f, record=f"fact[{i}]") for i, f in enumerate(facts)]
        with self.lock:
            return self._edit_parsed(parsed, actor=actor, batch_size=batch_size)

    def _edit_parsed(self, parsed: list[Fact], *, actor: str, batch_size: int | None) -> EditReport:
        report = EditReport()
        new: list[StoredFact] = []
        for fact in parsed:
            result: AddResult = self.memory.add(fact, actor=actor)
            if result.status == "duplicate":
                report.duplicates.append(result.stored.id)
                continue
            if result.status == "stale":
                report.stale.append(result.stored.id)
                continue
            if result.replaced is not None:
                report.superseded[result.replaced.id] = result.stored.id
                if result.replaced.id in self.strategy.applied_ids():
                    self.strategy.remove([result.replaced.id], active=self._active_except([result.stored.id]))
                new = [s for s in new if s.id != result.replaced.id]
            report.added.append(result.stored.id)
            new.append(result.stored)
        if new:
            try:
                self._apply_in_batches(new, batch_size)
            except Exception as exc:
                self._reject_unapplied(new, actor=actor, error=exc)
                raise
        if new or report.superseded:
            self.strategy.save()
        self._synced_seq = self.memory.seq
        return report

    def _reject_unapplied(self, new: Sequence[StoredFact], *, actor: str, error: Exception) -> None:
        """A strategy refused some new facts (e.g. llp cannot locate a subject): retract the ones it did not apply,
        so the memory (the source of truth) never holds an active fact the model does not carry, and no later sync
        retries it. Superseded old versions stay superseded (their records and history are kept)."""
        applied = self.strategy.applied_ids()
        for stored in new:
            if stored.id not in applied:
                self.memory.retract(stored.id, actor=actor, reason=f"rejected by strategy {self.strategy.name!r}: {error}")
        self._synced_seq = self.memory.seq
        self.strategy.save()

    def _active_except(self, ids: Sequence[str]) -> list[StoredFact]:
        skip = set(ids)
        return [s for s in self.memory.list(status=FactStatus.active) if s.id not in skip]

    def forget(self, fact_ids: str | Sequence[str], *, actor: str = "sdk", reason: str | None = None) -> list[StoredFact]:
        """Retract facts: the ledger keeps them (marked retracted) and their edits are removed from the model."""
        if isinstance(fact_ids, str):
            fact_ids = [fact_ids]
        with self.lock:
            return self._forget(fact_ids, actor=actor, reason=reason)

    def _forget(self, fact_ids: Sequence[str], *, actor: str, reason: str | None) -> list[StoredFact]:
        ids = [self.memory.resolve_id(i) if len(i) < 24 else i for i in fact_ids]
        for fact_id in ids:
            self.memory.get(fact_id)  # raises FactNotFoundError before anything changes
        retracted = [self.memory.retract(i, actor=actor, reason=reason) for i in ids]
        applied = [i for i in ids if i in self.strategy.applied_ids()]
        if applied:
            self.strategy.remove(applied, active=self.memory.list(status=FactStatus.active))
            self.strategy.save()
        return retracted

    def facts(self, **filters: Any) -> list[StoredFact]:
        """Stored facts (see :meth:`EditMemory.list`: ``status``, ``subject``, ``where``, ``limit``)."""
        return self.memory.list(**filters)

    def history(self, subject: str) -> list[LedgerEntry]:
        return self.memory.history(subject)

    # -- inference -----------------------------------------------------------------------------
    def prepare_prompt(self, prompt: PromptInput, *, chat: bool | None = None, as_of: datetime | None = None) -> tuple[str, EditTrace | None]:
        """The exact text fed to the model: stated facts (in-context strategies) and the chat template applied.

        ``as_of`` (default: now) is the instant facts must be valid at (``valid_from <= as_of < valid_to``);
        strategies with ``supports_as_of`` honour it, parametric ones cannot (their edits are in the weights).
        """
        use_chat = self.chat if chat is None else chat
        if not use_chat and not isinstance(prompt, str):
            raise ValueError("chat=False needs a plain string prompt")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1)
        self.sync()
        if self.strategy.supports_as_of:
            when = to_utc(as_of) or utcnow()
            rewritten, trace = self.strategy.rewrite_query(messages[last_user]["content"], as_of=when)
        else:
            if as_of is not None:
                why = "edits the weights, so its facts cannot be scoped by time" if self.strategy.parametric else "does not support as_of yet"
                raise ValueError(f"strategy {self.strategy.name!r} {why}; as_of works with the retrieval-gated strategies (context, llp)")
            rewritten, trace = self.strategy.rewrite_query(messages[last_user]["content"])
        if rewritten is not None:
            messages[last_user]["content"] = rewritten
        if use_chat:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), trace
        return messages[last_user]["content"], trace

    def _validity(self, as_of: datetime | None) -> dict[str, Any]:
        """The per-call validity scope of a forward: the instant, and the active facts not in force then (a
        retrieval-gated strategy that routes inside the model masks them; see :class:`~editmem.strategies.ForwardCall`)."""
        if not self.strategy.supports_as_of:
            return {}
        when = to_utc(as_of) or utcnow()
        return {"as_of": when, "exclude": self.memory.invalid_ids(when)}

    @torch.no_grad()
    def generate(
        self,
        prompt: PromptInput | Sequence[PromptInput],
        *,
        max_new_tokens: int = 32,
        chat: bool | None = None,
        as_of: datetime | None = None,
        **generate_kwargs: Any,
    ) -> Generation | list[Generation]:
        """Greedy (by default) generation for one prompt (str or chat messages) or a list of them (batched).

        ``as_of``: answer with the facts valid at that instant (default now; see :meth:`prepare_prompt`)."""
        single = isinstance(prompt, str) or (bool(prompt) and isinstance(prompt[0], dict))
        prompts = [prompt] if single else list(prompt)
        with self.lock:  # the stated facts and the model's edits come from one state of the memory
            results = self._generate(prompts, max_new_tokens=max_new_tokens, chat=chat, as_of=as_of, **generate_kwargs)
        return results[0] if single else results

    def _generate(self, prompts: list[PromptInput], *, max_new_tokens: int, chat: bool | None,
                  as_of: datetime | None, **generate_kwargs: Any) -> list[Generation]:
        prepared = [self.prepare_prompt(p, chat=chat, as_of=as_of) for p in prompts]
        texts = [p for p, _ in prepared]
        use_chat = self.chat if chat is None else chat
        ids = [self.tokenizer(t, add_special_tokens=not use_chat)["input_ids"] for t in texts]
        input_ids, attention_mask = pad_batch(ids, self.tokenizer.pad_token_id, side="left")
        generate_kwargs.setdefault("do_sample", False)
        if not generate_kwargs["do_sample"]:
            generate_kwargs.update(temperature=None, top_p=None, top_k=None)
        with self.strategy.forward_call(**self._validity(as_of)) as call:
            out = self.model.generate(
                input_ids=input_ids.to(self.loaded.device),
                attention_mask=attention_mask.to(self.loaded.device),
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                **generate_kwargs,
            )
        row_traces = call.traces
        results = []
        for row, (text, context_trace) in enumerate(prepared):
            new_tokens = out[row, input_ids.shape[1] :]
            answer = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
            trace = context_trace if context_trace is not None else (row_traces[row] if row < len(row_traces) else None)
            results.append(Generation(prompt=text, text=answer, trace=trace))
        return results

    def explain(self, prompt: PromptInput, *, max_new_tokens: int = 32) -> Explanation:
        """The answer with and without edits, and which stored facts influenced it (with scores)."""
        query = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        with self.lock:
            edited = self.generate(prompt, max_new_tokens=max_new_tokens)
            with self.strategy.disabled():
                base = self.generate(prompt, max_new_tokens=max_new_tokens)
            trace = self.strategy.explain(query)
        facts = []
        for fact_id in trace.fact_ids:
            stored = self.memory.get(fact_id)
            facts.append({"id": fact_id, "prompt": stored.fact.prompt, "target": stored.fact.target,
                          "score": trace.scores.get(fact_id), "source": stored.fact.provenance.source,
                          "feed": stored.fact.provenance.feed})
        return Explanation(prompt=query, answer=edited.text, base_answer=base.text, trace=trace, facts=facts)

    # -- streaming (self-contained: helpers live in editmem.streaming) -------------------------
    def stream(
        self,
        prompt: PromptInput,
        *,
        max_new_tokens: int = 32,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
        timeout: float | None = None,
        chat: bool | None = None,
        **generate_kwargs: Any,
    ) -> "Iterator[str | StreamResult]":
        """Generate one answer piece by piece: yields ``str`` pieces as tokens arrive, then one
        :class:`~editmem.streaming.StreamResult` (whole text, trace, token counts, finish reason).

        Runs :meth:`generate` in a worker thread with a streamer attached, so the prompt, the edits that fire and
        the trace are exactly those of ``generate``. ``temperature`` None or 0 decodes greedily, > 0 samples.
        ``stop``: generation ends at the first stop sequence, which is never yielded (text that could begin one is
        held back until it cannot). ``timeout`` (seconds) raises :class:`TimeoutError` when generation runs past it.
        Closing the generator early stops generation. Extra keyword arguments go to ``model.generate``
        (e.g. ``logits_processor`` for constrained decoding).
        """
        import threading
        import time

        from transformers import StoppingCriteriaList

        from editmem.streaming import _END, CancelCriterion, StreamResult, TokenStreamer, first_stop, held_back

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature is not None and temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if temperature:
            generate_kwargs.update(do_sample=True, temperature=float(temperature))
        stops = [s for s in (stop or []) if s]
        eos = self.model.generation_config.eos_token_id
        eos_ids = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(int(self.tokenizer.eos_token_id))
        streamer = TokenStreamer(self.tokenizer, eos_ids)
        criterion = CancelCriterion(time.monotonic() + timeout if timeout else None)
        criteria = StoppingCriteriaList([criterion, *generate_kwargs.pop("stopping_criteria", [])])
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["generation"] = self.generate(prompt, max_new_tokens=max_new_tokens, chat=chat, streamer=streamer,
                                                  stopping_criteria=criteria, **generate_kwargs)
            except BaseException as exc:  # re-raised in the consumer's thread
                box["error"] = exc
            finally:
                streamer.end()

        worker = threading.Thread(target=work, name="editmem-stream", daemon=True)
        worker.start()
        text, sent, stopped = "", 0, False
        try:
            while (piece := streamer.queue.get()) is not _END:
                if stopped:
                    continue
                text = (text + piece).lstrip() if sent == 0 else text + piece
                cut = first_stop(text, stops)
                if cut is not None:
                    text, stopped = text[:cut], True
                    criterion.cancel.set()
                safe = min(len(text) - (0 if stopped else held_back(text, stops)), len(text.rstrip()))
                if safe > sent:
                    yield text[sent:safe]
                    sent = safe
        finally:
            criterion.cancel.set()
            worker.join()
        if "error" in box:
            raise box["error"]
        if criterion.timed_out:
            raise TimeoutError(f"generation ran past timeout={timeout}s ({len(streamer.ids)} tokens generated)")
        text = text.rstrip()
        if len(text) > sent:
            yield text[sent:]
        generation = box["generation"]
        finish = "length" if not (stopped or streamer.saw_eos) and len(streamer.ids) >= max_new_tokens else "stop"
        yield StreamResult(prompt=generation.prompt, text=text, trace=generation.trace, input_tokens=streamer.prompt_tokens,
                           output_tokens=len(streamer.ids), finish_reason=finish)

    def close(self) -> None:
        with self.lock:
            self.strategy.detach()

    def __enter__(self) -> "EditableLLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EditableLLM(model={self.loaded.name!r}, strategy={self.strategy.name!r}, store={str(self.memory.path)!r}, active={self.memory.count()})"
