"""Evaluation datasets: ZsRE, CounterFact, hallucination (SelfCheckGPT) and the project's own feeds.

Every record becomes an :class:`EvalRecord`: the :class:`~editmem.facts.Fact` to edit plus the probes the metrics
need (paraphrase, locality pair, the answer being overwritten). The field mapping follows EVALUATION.md §2:

==============  ===================  ==================  =========================  ===============
kind            fact (prompt→target)  rephrase            locality (prompt, answer)  true_target
==============  ===================  ==================  =========================  ===============
zsre            src → alt             rephrase            loc, loc_ans               answers[0]
counterfact     prompt → target_new   rephrase_prompt     locality_prompt, _gt       ground_truth
hallucination   prompt → target_new   —                   locality_prompt, _gt       —
feed            prompt → target       rephrases[0]        locality_prompts[0], —     —
realistic       prompt → target       paraphrases[0]      unrelated_probe, _answer   —
==============  ===================  ==================  =========================  ===============

Every record also gets same-subject probes and alias paraphrases (:attr:`EvalRecord.same_subject_probes`,
:attr:`EvalRecord.alias_rephrases`): the realistic benchmark brings its own; the other formats get them from the
template bank and the mechanical aliases of :mod:`editmem.eval.probes` (``probe_source`` says which).

Names (``zsre``, ``counterfact``, ``hallucination``) resolve to the evaluation splits in ``$EDITMEM_DATA_DIR``
(default ``../shared/data`` next to the repository root). Data files are read in place, never copied.
``realistic`` is the project's own benchmark, shipped as package data (:mod:`editmem.eval.realistic`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from editmem.eval.probes import DEFAULT_K, alias_rephrases, derive_aliases, subject_kind, template_probes
from editmem.eval.realistic import REALISTIC_FILE, RealisticRecord, is_realistic
from editmem.facts import Fact, FactValidationError, parse_fact

DatasetKind = Literal["zsre", "counterfact", "hallucination", "feed", "realistic"]

#: dataset name -> evaluation file in the data folder
DATASET_FILES: dict[str, str] = {
    "zsre": "zsre_eval_1000.json",
    "counterfact": "counterfact_eval_2000.json",
    "hallucination": "hallucination_eval_600.json",
}

#: required string fields per benchmark format (extra keys such as ``pred``/``cond`` are ignored)
_REQUIRED: dict[str, tuple[str, ...]] = {
    "zsre": ("subject", "src", "alt", "rephrase", "loc", "loc_ans"),
    "counterfact": ("subject", "prompt", "target_new", "ground_truth", "rephrase_prompt", "locality_prompt",
                    "locality_ground_truth"),
    "hallucination": ("subject", "prompt", "target_new", "locality_prompt", "locality_ground_truth"),
}


#: locality fields are probes, not the edit: an empty one drops that probe for the record (hallucination_eval_600
#: record 86 has an empty locality_ground_truth) instead of rejecting the record; its edit is still evaluated
_PROBE_FIELDS = frozenset({"loc", "loc_ans", "locality_prompt", "locality_ground_truth"})


def _probe(value: str) -> str | None:
    return value if value.strip() else None


class EvalRecord(BaseModel):
    """One evaluation case: the fact to edit and the probes measured before and after editing."""

    model_config = ConfigDict(extra="forbid")

    fact: Fact
    """The edit request (``fact.prompt`` is the Reliability probe, ``fact.target`` the new answer)."""
    rephrase: str | None = None
    """Paraphrase of the prompt (Generality probe); None for hallucination."""
    loc_prompt: str | None = None
    """An unrelated prompt whose answer must not change (Locality probe)."""
    loc_answer: str | None = None
    """Continuation used as teacher-forcing context for token-level locality (never scored as ground truth)."""
    true_target: str | None = None
    """The answer being overwritten (CounterFact ``ground_truth``, ZsRE ``answers[0]``)."""
    alias_rephrases: list[str] = []
    """Paraphrases naming the subject differently (alias generality); may be empty."""
    same_subject_probes: list[str] = []
    """Questions about the same subject on other relations (same-subject specificity)."""
    probe_source: Literal["record", "template"] = "template"
    """Where the two lists above come from: the record itself, or :mod:`editmem.eval.probes`."""
    subject_kind: str | None = None
    case_id: int | str
    kind: DatasetKind


def repo_root() -> Path:
    """The folder that holds the ``editmem`` package (the repository root for an editable install)."""
    return Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """``$EDITMEM_DATA_DIR``, else ``../shared/data`` relative to the repository root."""
    env = os.environ.get("EDITMEM_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return (repo_root() / ".." / "shared" / "data").resolve()


#: the realistic benchmark with each fact's aliases declared in the fact (a feed that knows its subjects' other
#: names, e.g. from Wikidata); the plain name edits with subject, prompt and target only
REALISTIC_WITH_ALIASES = "realistic+aliases"


def resolve_dataset(name_or_path: str | Path) -> Path:
    """Map a dataset name to its file in :func:`data_dir`, or return an existing path unchanged.

    Raises ``FileNotFoundError`` naming what was looked for.
    """
    text = str(name_or_path)
    key = text.lower()
    if key in ("realistic", REALISTIC_WITH_ALIASES):
        return REALISTIC_FILE
    if key in DATASET_FILES:
        path = data_dir() / DATASET_FILES[key]
        if not path.is_file():
            raise FileNotFoundError(f"dataset {text!r} resolves to {path}, which does not exist (set EDITMEM_DATA_DIR)")
        return path
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no dataset file {path} (and {text!r} is not one of {sorted(DATASET_FILES) + ['realistic']})")
    return path


def file_sha256(path: str | Path) -> str:
    """Hash of a data file, recorded in every result for reproducibility."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detect_kind(record: Any) -> DatasetKind:
    """Which format a raw record is in, from its keys."""
    if is_realistic(record):
        return "realistic"
    if isinstance(record, dict):
        keys = set(record)
        if {"src", "alt", "loc"} <= keys:
            return "zsre"
        if {"target_new", "ground_truth"} <= keys:
            return "counterfact"
        if {"target_new", "locality_prompt"} <= keys:
            return "hallucination"
    return "feed"


def _first_line_is_realistic(path: Path) -> bool:
    """Whether a JSONL file's first record is in the realistic format (other JSONL files are editmem feeds)."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    return is_realistic(json.loads(line))
                except json.JSONDecodeError:
                    return False
    return False


def _raw_records(path: Path) -> list[tuple[str, Any]]:
    """``(label, raw record)`` pairs: labels name the record index (and line for JSONL/CSV feeds)."""
    if path.suffix.lower() == ".jsonl" and _first_line_is_realistic(path):
        from editmem.eval.realistic import iter_realistic

        return [(f"{path.name} record {index} (line {line})", raw)
                for index, (line, raw) in enumerate(iter_realistic(path))]
    if path.suffix.lower() in (".jsonl", ".csv"):
        from editmem.feeds import read_feed

        items = []
        for index, (line, item) in enumerate(read_feed(path)):
            label = f"{path.name} record {index} (line {line})"
            if isinstance(item, Exception):
                raise FactValidationError(label, [("<record>", str(item), None)])
            items.append((label, item))
        return items
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):  # {"data": [...]} style wrappers
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        raise FactValidationError(path.name, [("<file>", "must be a JSON list of records", type(data).__name__)])
    return [(f"{path.name} record {index}", item) for index, item in enumerate(data)]


def _check_fields(label: str, raw: Any, kind: str) -> None:
    if not isinstance(raw, dict):
        raise FactValidationError(label, [("<record>", "must be an object", raw)])
    errors = []
    for field in _REQUIRED[kind]:
        value = raw.get(field)
        if value is None:
            errors.append((field, "field required", None))
        elif not isinstance(value, str):
            errors.append((field, "must be a string", value))
        elif not value.strip() and field not in _PROBE_FIELDS:
            errors.append((field, "must be a non-empty string", value))
    if kind == "zsre" and raw.get("answers") is not None:
        answers = raw["answers"]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            errors.append(("answers", "must be a list of strings", answers))
    if errors:
        raise FactValidationError(label, errors)


def _with_template_probes(record: EvalRecord, k: int = DEFAULT_K) -> EvalRecord:
    """Fill same-subject probes and alias paraphrases from the template bank (records that bring none)."""
    subject = record.fact.subject
    kind, relation = subject_kind(record.fact.prompt, subject)
    aliases = derive_aliases(subject, kind)
    prompts = [p for p in [record.rephrase, record.fact.prompt] if p]
    return record.model_copy(update={
        "subject_kind": kind,
        "same_subject_probes": template_probes(subject, kind, relation, k),
        "alias_rephrases": alias_rephrases(subject, prompts, aliases)[:1],
        "probe_source": "template",
    })


def _realistic_record(label: str, raw: Any, index: int, provenance: dict[str, Any], declare_aliases: bool = False
                      ) -> EvalRecord:
    try:
        rec = RealisticRecord.model_validate(raw)
    except ValueError as exc:
        raise FactValidationError(label, [("<record>", str(exc), None)]) from None
    # Paraphrases stay out of fact.rephrases: a user states a fact once, and a strategy that trained on them
    # would see the alias probes before they are scored.
    fact = parse_fact({"subject": rec.subject, "prompt": rec.prompt, "target": rec.target, "relation": rec.relation,
                       "tags": [rec.subject_kind, rec.id], **({"aliases": list(rec.aliases)} if declare_aliases else {})},
                      record=label, provenance={**provenance, "source_uri": rec.source})
    return EvalRecord(fact=fact, rephrase=rec.paraphrases[0], loc_prompt=rec.unrelated_probe,
                      loc_answer=rec.unrelated_answer, true_target=rec.previous,
                      alias_rephrases=list(rec.alias_paraphrases), same_subject_probes=list(rec.same_subject_probes),
                      probe_source="record", subject_kind=rec.subject_kind, case_id=rec.id, kind="realistic")


def _to_record(label: str, raw: Any, kind: DatasetKind, index: int, provenance: dict[str, Any],
               declare_aliases: bool = False) -> EvalRecord:
    if kind == "realistic":
        return _realistic_record(label, raw, index, provenance, declare_aliases)
    return _with_template_probes(_to_record_plain(label, raw, kind, index, provenance))


def _to_record_plain(label: str, raw: Any, kind: DatasetKind, index: int, provenance: dict[str, Any]) -> EvalRecord:
    if kind == "feed":
        fact = parse_fact(raw, record=label, provenance={**provenance, "source": "eval"})
        return EvalRecord(
            fact=fact,
            rephrase=fact.rephrases[0] if fact.rephrases else None,
            loc_prompt=fact.locality_prompts[0] if fact.locality_prompts else None,
            case_id=index,
            kind="feed",
        )
    _check_fields(label, raw, kind)
    case_id = raw.get("case_id", index)
    prov = {**provenance, "source_uri": f"{provenance['feed']}#{case_id}"}
    if kind == "zsre":
        fact_data = {"subject": raw["subject"], "prompt": raw["src"], "target": raw["alt"],
                     "rephrases": [raw["rephrase"]], "locality_prompts": [p for p in [_probe(raw["loc"])] if p]}
        answers = raw.get("answers") or []
        extra = {"rephrase": raw["rephrase"], "loc_prompt": _probe(raw["loc"]), "loc_answer": _probe(raw["loc_ans"]),
                 "true_target": answers[0] if answers else None}
    else:
        fact_data = {"subject": raw["subject"], "prompt": raw["prompt"], "target": raw["target_new"],
                     "locality_prompts": [p for p in [_probe(raw["locality_prompt"])] if p]}
        extra = {"loc_prompt": _probe(raw["locality_prompt"]), "loc_answer": _probe(raw["locality_ground_truth"])}
        if kind == "counterfact":
            fact_data["rephrases"] = [raw["rephrase_prompt"]]
            extra.update(rephrase=raw["rephrase_prompt"], true_target=raw["ground_truth"])
    fact = parse_fact(fact_data, record=label, provenance=prov)
    return EvalRecord(fact=fact, case_id=case_id, kind=kind, **extra)


def load_records(name_or_path: str | Path, n: int | None = None) -> list[EvalRecord]:
    """The first ``n`` records (all when None) of a dataset, in file order, as :class:`EvalRecord`.

    The format is detected from the first record's keys; every record must have the same format. A malformed
    record raises :class:`~editmem.facts.FactValidationError` naming the record index and the field.
    """
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    path = resolve_dataset(name_or_path)
    raw_items = _raw_records(path)
    if not raw_items:
        raise FactValidationError(path.name, [("<file>", "contains no records", None)])
    kind = detect_kind(raw_items[0][1])
    provenance = {"source": "eval", "feed": path.name}
    selected = raw_items if n is None else raw_items[:n]
    declare = str(name_or_path).lower() == REALISTIC_WITH_ALIASES
    return [_to_record(label, raw, kind, index, provenance, declare) for index, (label, raw) in enumerate(selected)]
