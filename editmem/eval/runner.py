"""The lifelong editing protocol (EVALUATION.md §1) behind :func:`run_eval` and ``editmem eval``.

::

    f0 = unedited model
    pre[i]  = measurements of record i on f0, for ALL T records, before the first edit
    edit records 1..T through EditableLLM.edit (batch_size per call, never restoring between edits)
    post[i] = measurements of record i on the final model fT
    metrics = mean over records (locality compares post with pre)

``mode="immediate"`` (record scored right after its own edit, EasyEdit's 2026 default; hides forgetting) and
``mode="single"`` (edit, score, retract: the classic T=1 setting) are offered as clearly labelled extras.
``checkpoints`` add points to the curve: after c edits, the records edited so far are scored (teacher-forced
metrics only) on the model at that point.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from editmem.eval.datasets import REALISTIC_WITH_ALIASES, EvalRecord, data_dir, file_sha256, load_records, resolve_dataset
from editmem.eval.measure import (
    Measurement,
    compare_to_pre,
    measure_fluency,
    measure_generation,
    measure_record,
    summarize,
)
from editmem.eval.scoring import Scorer
from editmem.eval.user_probes import USER_METRIC_INFO, generate_probes, teacher_force_probes

Mode = Literal["final", "immediate", "single"]
NO_STRATEGY = "none"
#: bump when a measurement definition changes: invalidates cached pre-edit measurements
MEASURE_VERSION = 2


class RecordOutcome(BaseModel):
    """Raw pre- and post-edit measurements of one record."""

    index: int
    case_id: int | str
    fact_id: str
    prompt: str
    target: str
    pre: dict[str, Any] = Field(default_factory=dict)
    post: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    """Why the strategy rejected this record's edit (the record stays in the metrics, unedited); None if applied."""


class CurvePoint(BaseModel):
    """Metrics of the records edited so far, on the model after ``n_edits`` edits."""

    n_edits: int
    n_records: int
    metrics: dict[str, float]


class EvalResult(BaseModel):
    """Everything one evaluation run produced; written to ``results.json``."""

    strategy: str
    dataset: str
    dataset_path: str
    dataset_sha256: str
    kind: str
    n: int
    batch_size: int
    mode: Mode
    checkpoints: list[int] = Field(default_factory=list)
    seed: int
    model: str
    model_fingerprint: str
    config: dict[str, Any] = Field(default_factory=dict)
    """The strategy's full config (defaults included)."""
    generation: dict[str, Any] = Field(default_factory=dict)
    """Generation-metric settings: enabled, chat template, max_new_tokens, decoding."""
    metrics: dict[str, float]
    """Post-edit metrics (see ``editmem.eval.measure.METRIC_INFO``)."""
    pre_metrics: dict[str, float] = Field(default_factory=dict)
    """The same metrics on the unedited model (the "w/o editing" row)."""
    curve: list[CurvePoint] = Field(default_factory=list)
    timings: dict[str, Any] = Field(default_factory=dict)
    counters: dict[str, int] = Field(default_factory=dict)
    probes: dict[str, Any] = Field(default_factory=dict)
    """How many same-subject probes and alias paraphrases were asked, and where they came from."""
    strategy_telemetry: list[dict[str, Any]] = Field(default_factory=list)
    """The strategy's per-write diagnostics (``Strategy.telemetry_rows``), e.g. LyapLock's preservation loss
    against its threshold; empty for strategies that keep none."""
    per_record: list[RecordOutcome] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("editmem", "torch", "transformers", "chromadb", "sentence-transformers", "nltk", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else None


def _optional_available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_eval(
    strategy: str,
    dataset: str,
    *,
    n: int,
    config: dict[str, Any] | None = None,
    batch_size: int = 1,
    checkpoints: Sequence[int] = (),
    mode: Mode = "final",
    generation: bool = True,
    out_dir: Path | str | None = None,
    model: Any = "smollm2-135m-instruct",
    store_dir: Path | str | None = None,
    seed: int = 42,
    max_new_tokens: int = 32,
    gen_batch_size: int = 1,
    fluency: bool = True,
    chat_teacher_forced: bool = False,
    pre_cache: Path | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvalResult:
    """Edit the first ``n`` records of ``dataset`` with ``strategy`` and measure them (see the module docstring).

    Args:
        strategy: a registered strategy name, or ``"none"`` for the unedited model.
        dataset: ``zsre``/``counterfact``/``hallucination`` or a file path (benchmark JSON or a JSONL/CSV feed).
        n: number of records T (the first ``n``, in file order).
        config: overrides of the strategy's config fields.
        batch_size: facts per ``llm.edit`` call (1 = one edit at a time, the WISE/LLP protocol).
        checkpoints: edit counts (< n) after which the records edited so far are scored (teacher-forced only).
        mode: ``final`` (default, the papers' protocol), ``immediate`` or ``single``.
        generation: also measure greedy generations (success = target contained; locality = answer unchanged).
        out_dir: write ``results.json``, ``report.md`` and plots there.
        model: a model name/path or an already loaded :class:`~editmem.models.LoadedModel` (loaded once).
        store_dir: edit-memory folder; a fresh temporary one by default (must be empty or new).
        seed: seeds Python, NumPy and torch (and the fluency sampler per record).
        max_new_tokens: length budget of the generation metrics.
        gen_batch_size: greedy generations per ``generate`` call in ``final`` mode (left-padded batches, the same
            chunks before and after editing). 1 (default) is exact; larger batches are much faster on CPU but can
            flip a near-tied greedy token, and are used only where batching is safe (the pre-edit model, and
            strategies that act per prompt: ``context`` or ``batch_safe = True``); others get 1.
        fluency: CounterFact only: sample two texts per record for the n-gram entropy (needs ``nltk``).
        chat_teacher_forced: wrap Rel./Gen. prompts in the chat template for teacher forcing (§3 step 1).
        pre_cache: folder caching pre-edit measurements, keyed by model fingerprint, data hash, n and settings,
            so several strategies on the same records measure the unedited model once.
        progress: called with short status lines (the CLI prints them; the library stays quiet).
    """
    from editmem.editable import EditableLLM
    from editmem.models import LoadedModel, load_model
    from editmem.strategies import get_strategy

    say = progress or (lambda _msg: None)
    if mode not in ("final", "immediate", "single"):
        raise ValueError(f"mode must be final, immediate or single, got {mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    config = dict(config or {})
    if strategy == NO_STRATEGY and config:
        raise ValueError("strategy 'none' takes no config")
    if strategy != NO_STRATEGY:
        get_strategy(strategy)  # unknown names fail before anything loads
    bad = [c for c in checkpoints if not 0 < c < n]
    if bad:
        raise ValueError(f"checkpoints must be between 1 and n-1={n - 1}, got {bad}")
    checkpoints = sorted(set(int(c) for c in checkpoints))
    started = time.perf_counter()
    _seed_everything(seed)

    path = resolve_dataset(dataset)
    records = load_records(dataset if str(dataset).lower() == REALISTIC_WITH_ALIASES else path, n)
    kind = records[0].kind
    notes: list[str] = []
    if len(records) < n:
        notes.append(f"dataset has only {len(records)} records; T = {len(records)}")
    n = len(records)
    t0 = time.perf_counter()
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    load_s = time.perf_counter() - t0

    fluency = fluency and kind == "counterfact"
    if fluency and not _optional_available("nltk"):
        fluency = False
        notes.append("fluency skipped: nltk is not installed (pip install 'editmem[dev]')")
    consistency = None
    if fluency and _optional_available("sklearn"):
        from editmem.eval.consistency import ConsistencyProxy

        consistency = ConsistencyProxy.from_files(path, path.parent)
    elif fluency:
        notes.append("consistency_proxy skipped: scikit-learn is not installed")

    tmp = tempfile.TemporaryDirectory(prefix="editmem-eval-") if store_dir is None else None
    store = Path(tmp.name) / "store" if tmp is not None else Path(store_dir)
    if store.exists() and any(store.iterdir()):
        raise ValueError(f"store_dir {store} is not empty: evaluation needs a fresh edit memory")
    open_strategy = "context" if strategy == NO_STRATEGY else strategy
    try:
        llm = EditableLLM.open(store, model=loaded, strategy=open_strategy, actor="eval", **config)
        scorer = Scorer(llm, chat_teacher_forced=chat_teacher_forced, max_new_tokens=max_new_tokens)
        settings = {"kind": kind, "n": n, "generation": generation, "max_new_tokens": max_new_tokens,
                    "fluency": fluency, "chat_teacher_forced": chat_teacher_forced, "seed": seed, "chat": llm.chat}

        # Fluency samples are drawn as batches of `sample_rows` prompts, the same chunks before and after editing.
        # Batching is safe for the base model and for strategies that act per prompt (context, or any strategy
        # that sets `batch_safe = True`); router strategies that decide per forward call get one prompt a call.
        batch_safe = strategy == NO_STRATEGY or llm.strategy.batch_safe
        sample_rows = 20 if batch_safe else 1
        gen_rows = gen_batch_size if batch_safe and mode == "final" else 1
        settings["gen_rows"] = gen_rows
        if fluency:
            settings["sample_rows"] = sample_rows

        def measure(i: int, *, gen: bool = generation, flu: bool = fluency) -> Measurement:
            return measure_record(scorer, records[i], generation=gen, fluency=flu, seed=seed, index=i)

        def probe_pass(idx: Sequence[int], pre_ms: Sequence[Measurement] | None, rows: int) -> list[Measurement]:
            """Same-subject and alias probes of records ``idx``: greedy answers (when generation is on), then
            teacher-forced passes over the pre-edit answers (``pre_ms``; the fresh ones on the pre-edit model)."""
            idx = list(idx)
            gens = (generate_probes(scorer, [records[i] for i in idx], rows=rows) if generation
                    else [{} for _ in idx])
            for i, g in zip(idx, gens):
                answers = (g if pre_ms is None else pre_ms[i]).get("gen_same", [])
                g.update(teacher_force_probes(scorer, records[i], answers))
            return gens

        # ---- pre-edit: every record on f0, before the first edit ----------------------------------
        t0 = time.perf_counter()
        pre, cached = _load_pre_cache(pre_cache, loaded.fingerprint, file_sha256(path), settings)
        if pre is None:
            say(f"pre-edit measurements of {n} records")
            with llm.strategy.disabled():
                pre = []
                for i in range(n):
                    pre.append(measure(i, gen=generation and gen_rows == 1, flu=False))
                    if (i + 1) % 25 == 0:
                        say(f"  pre {i + 1}/{n}")
                if generation and gen_rows > 1:
                    say(f"  pre generations ({gen_rows} per batch)")
                    for m, g in zip(pre, measure_generation(scorer, records, rows=gen_rows)):
                        m.update(g)
                if fluency:
                    say("  pre fluency samples")
                    for m, f in zip(pre, measure_fluency(scorer, records, seed=seed * 1000, rows=sample_rows)):
                        m.update(f)
                say("  pre same-subject and alias probes")
                for m, g in zip(pre, probe_pass(range(n), None, gen_rows)):
                    m.update(g)
            _save_pre_cache(pre_cache, loaded.fingerprint, file_sha256(path), settings, pre)
        pre = [compare_to_pre(m, m) for m in pre]
        pre_s = time.perf_counter() - t0

        # ---- edits (and, for the extra modes, measurements between them) -------------------------
        edit_latencies: list[float] = []
        edit_sizes: list[int] = []
        counters = {"added": 0, "duplicates": 0, "superseded": 0}
        rejected: dict[int, str] = {}
        post: list[Measurement | None] = [None] * n
        curve = [_curve_point(0, pre, kind)]
        checkpoint_s = 0.0
        if strategy == NO_STRATEGY:
            post = [dict(m) for m in pre]
            notes.append("strategy 'none': no edits, so the final model is f0 and post-edit = pre-edit measurements")
        else:
            say(f"editing {n} facts with {strategy} (batch {batch_size}, mode {mode})")
            done = 0
            for lo in range(0, n, batch_size):
                batch = list(range(lo, min(lo + batch_size, n)))
                t0 = time.perf_counter()
                report = _edit_or_reject(llm, records, batch, batch_size, rejected)
                edit_latencies.append(time.perf_counter() - t0)
                edit_sizes.append(len(batch))
                if report is not None:
                    counters["added"] += len(report.added)
                    counters["duplicates"] += len(report.duplicates)
                    counters["superseded"] += len(report.superseded)
                else:
                    say(f"  rejected by {strategy}: records {[i for i in batch if i in rejected]}")
                done = batch[-1] + 1
                if mode != "final":
                    for i in batch:
                        m = measure(i)
                        m.update(probe_pass([i], pre, 1)[0])
                        post[i] = compare_to_pre(m, pre[i])
                    if mode == "single" and report is not None and report.added:
                        llm.forget(report.added, actor="eval", reason="single-edit protocol: restore")
                for c in checkpoints:
                    if lo < c <= done and mode == "final":
                        t1 = time.perf_counter()
                        say(f"  checkpoint after {c} edits")
                        scored = [compare_to_pre(measure(i, gen=False, flu=False), pre[i]) for i in range(c)]
                        curve.append(_curve_point(done, scored, kind))
                        checkpoint_s += time.perf_counter() - t1
                if done % 25 == 0 or done == n:
                    say(f"  edited {done}/{n}")
            if mode == "final":
                llm.strategy.consolidate()  # pitfall 9: pending state is merged before scoring
                say(f"post-edit measurements of {n} records on the final model")
        t0 = time.perf_counter()
        todo = [i for i in range(n) if post[i] is None]
        batched_gen = generation and gen_rows > 1 and bool(todo)
        for i in todo:
            post[i] = measure(i, gen=generation and not batched_gen, flu=False)
            if (i + 1) % 25 == 0:
                say(f"  post {i + 1}/{n}")
        if batched_gen:
            say(f"  post generations ({gen_rows} per batch)")
            for i, g in zip(todo, measure_generation(scorer, [records[i] for i in todo], rows=gen_rows)):
                post[i].update(g)
        if todo:
            say("  post same-subject and alias probes")
            for i, g in zip(todo, probe_pass(todo, pre, gen_rows)):
                post[i].update(g)
        for i in todo:
            post[i] = compare_to_pre(post[i], pre[i])
        if fluency and todo:
            say("  post fluency samples")
            for m, f in zip(post, measure_fluency(scorer, records, seed=seed * 1000, rows=sample_rows)):
                m.update(f)
        post_s = time.perf_counter() - t0
        if consistency is not None:
            for i, m in enumerate(post):
                for phase in (m, pre[i]):
                    value = consistency.score(phase.get("fluency_texts", []), records[i].fact.target, (path.name, i))
                    if value is not None:
                        phase["consistency_proxy"] = value
        final_metrics = summarize(post, kind)
        curve.append(_curve_point(n if strategy != NO_STRATEGY else 0, post, kind, n_records=n))
        if strategy == NO_STRATEGY:
            curve = curve[:1]
        strategy_config = {} if strategy == NO_STRATEGY else llm.strategy.config.to_dict()
        counters["rejected"] = len(rejected)
        counters["gen_batch_fallbacks"] = scorer.batch_fallbacks
        if scorer.batch_fallbacks:
            notes.append(f"{scorer.batch_fallbacks} batched generate calls raised and were answered one prompt at a "
                         "time (exact, slower); the strategy is not safe on padded batches")
        if rejected:
            first = min(rejected)
            notes.append(f"{len(rejected)} of {n} edits were rejected by the strategy and stay in the metrics as "
                         f"unedited records (per_record[].error); first: record {first}: {rejected[first][:200]}")
        counters["tokenization_mismatches"] = sum(m.get("tokenization_mismatches", 0) for m in post)
        counters["gen_loc_changed_without_fact_stated"] = sum(
            1 for m in post if m.get("gen_loc_fired") is False and m.get("gen_loc_unchanged") is False)
        counters["tokenization_mismatches_pre"] = sum(m.get("tokenization_mismatches", 0) for m in pre)
        per_fact = [lat / size for lat, size in zip(edit_latencies, edit_sizes)]
        timings = {
            "model_load_s": load_s,
            "pre_eval_s": pre_s,
            "pre_from_cache": cached,
            "edit_total_s": float(sum(edit_latencies)),
            "edit_call_latency_s": edit_latencies,
            "edit_latency_per_fact_median_s": _percentile(per_fact, 50),
            "edit_latency_per_fact_p95_s": _percentile(per_fact, 95),
            "checkpoint_eval_s": checkpoint_s,
            "post_eval_s": post_s,
            "total_s": time.perf_counter() - started,
            "torch_threads": torch.get_num_threads(),
        }
        if mode != "final":
            notes.append(f"mode={mode}: each record was scored right after its own edit "
                         "(not the papers' final-model protocol; forgetting is not visible)")
        result = EvalResult(
            strategy=strategy, dataset=str(dataset), dataset_path=str(path), dataset_sha256=file_sha256(path),
            kind=kind, n=n, batch_size=batch_size, mode=mode, checkpoints=list(checkpoints), seed=seed,
            model=loaded.name, model_fingerprint=loaded.fingerprint, config=strategy_config,
            generation={"enabled": generation, "chat": llm.chat, "max_new_tokens": max_new_tokens,
                        "decoding": "greedy", "batch": gen_rows},
            metrics=final_metrics, pre_metrics=summarize(pre, kind), curve=curve, timings=timings,
            counters=counters, versions=_versions(), notes=notes, probes=_probe_counts(records),
            strategy_telemetry=[] if strategy == NO_STRATEGY else llm.strategy.telemetry_rows(),
            per_record=[
                RecordOutcome(index=i, case_id=r.case_id, fact_id=r.fact.id, prompt=r.fact.prompt,
                              target=r.fact.target, pre=pre[i], post=post[i], error=rejected.get(i))
                for i, r in enumerate(records)
            ],
        )
        llm.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    if out_dir is not None:
        from editmem.eval.report import write_outputs

        write_outputs(result, Path(out_dir))
    return result


def _probe_counts(records: Sequence[EvalRecord]) -> dict[str, Any]:
    """Probe totals for the report: same-subject probes and alias paraphrases, by source, and subject kinds."""
    kinds: dict[str, int] = {}
    sources: dict[str, int] = {}
    for r in records:
        kinds[r.subject_kind or "unknown"] = kinds.get(r.subject_kind or "unknown", 0) + 1
        sources[r.probe_source] = sources.get(r.probe_source, 0) + 1
    return {
        "same_subject_probes": sum(len(r.same_subject_probes) for r in records),
        "alias_paraphrases": sum(len(r.alias_rephrases) for r in records),
        "records_with_alias": sum(1 for r in records if r.alias_rephrases),
        "source": sources,
        "subject_kinds": kinds,
        "probes_without_verbatim_subject": sum(
            1 for r in records for p in [r.rephrase or "", *r.alias_rephrases, *r.same_subject_probes]
            if p and r.fact.subject not in p),
    }


def _edit_or_reject(llm: Any, records: Sequence[EvalRecord], batch: Sequence[int], batch_size: int,
                    rejected: dict[int, str]) -> Any:
    """``llm.edit`` of one batch; a strategy error rejects the batch's unapplied records instead of ending the run.

    A strategy may refuse a fact it cannot represent (llp, a prompt where it cannot locate the subject). From a
    user's view that is a failed edit, so the record is kept, unedited, in every metric and its error recorded in
    ``rejected`` (index -> message). Facts the strategy applied before it raised are not rejected.
    """
    try:
        return llm.edit([records[i].fact for i in batch], actor="eval", batch_size=batch_size)
    except Exception as exc:  # noqa: BLE001 - any strategy error: record it and go on with the next batch
        applied = llm.strategy.applied_ids()
        for i in batch:
            if records[i].fact.id not in applied:
                rejected[i] = f"{type(exc).__name__}: {exc}"
        return None


def _curve_point(n_edits: int, measurements: Sequence[Measurement], kind: str, n_records: int | None = None) -> CurvePoint:
    keep = {k: v for k, v in summarize(measurements, kind).items()
            if not k.startswith(("gen_", "fluency", "consistency")) and k not in USER_METRIC_INFO}
    return CurvePoint(n_edits=n_edits, n_records=n_records or len(measurements), metrics=keep)


def _cache_file(cache: Path | str, fingerprint: str, data_sha: str, settings: dict[str, Any]) -> Path:
    key = json.dumps({"fp": fingerprint, "data": data_sha, "v": MEASURE_VERSION, **settings}, sort_keys=True)
    return Path(cache) / f"pre-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def _load_pre_cache(cache, fingerprint, data_sha, settings) -> tuple[list[Measurement] | None, bool]:
    if cache is None:
        return None, False
    path = _cache_file(cache, fingerprint, data_sha, settings)
    if not path.is_file():
        return None, False
    return json.loads(path.read_text())["pre"], True


def _save_pre_cache(cache, fingerprint, data_sha, settings, pre: list[Measurement]) -> None:
    if cache is None:
        return
    path = _cache_file(cache, fingerprint, data_sha, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "pre": pre}))


__all__ = ["CurvePoint", "EvalRecord", "EvalResult", "RecordOutcome", "run_eval", "data_dir"]
