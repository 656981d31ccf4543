"""Strategy interface, config base class and registry (PEFT style).

A strategy turns active facts into model-side artifacts and intervenes in the forward pass. A method is a
triple registered in one call::

    register_strategy(name="llp", config_cls=LLPConfig, strategy_cls=LLPStrategy)

Subclasses implement (template method):

=====================  ========  ===============================================================
method                 required  what it does
=====================  ========  ===============================================================
``apply(facts)``       yes       write new active facts (train keys/values, solve weights, ...)
``remove(ids, active)`` yes      revert facts; ``active`` = the facts that stay (for replay)
``state_dict()``       yes       tensors + JSON-able state that restore the strategy without recompute
``load_state_dict()``  yes       inverse of ``state_dict``; returns the fact ids it restored
``attach()/detach()``  no        install / remove hooks or weight deltas (detach = base model, bit for bit)
``rewrite_query()``    no        the query restated with retrieved facts (in-context strategies only)
``explain(prompt)``    no        which stored facts influence an answer to ``prompt``, with scores
``telemetry_rows()``   no        per-write diagnostics for reports (one flat row per write)
``consolidate()``      no        fold pending edits into their long-term form (e.g. WISE's merge); no-op default
=====================  ========  ===============================================================

Per-call state. What one forward (or one ``generate``) decides and reports belongs to that call, not to the
strategy: callers open ``with strategy.forward_call() as call:`` around the model call and read ``call.traces``
(one per batch row) afterwards. The call object is thread-local; :class:`~editmem.EditableLLM` also serialises
model calls and writes with a lock, since hooks on a shared model cannot run two forwards at once.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import typing
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, Field

from editmem.facts import StoredFact
from editmem.memory.artifacts import ArtifactStore

CONFIG_FILE = "strategy_config.json"
STATE_FILE = "state"


class EditTrace(BaseModel):
    """What a strategy did for one query: which facts fired, with scores, plus method-specific details."""

    strategy: str
    fact_ids: list[str] = Field(default_factory=list)
    scores: dict[str, float] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def fired(self) -> bool:
        return bool(self.fact_ids)


@dataclasses.dataclass
class ForwardCall:
    """The state of one user-facing forward or generation: filled by the strategy's hooks, read by the caller."""

    traces: list[EditTrace | None] = dataclasses.field(default_factory=list)
    """One trace per batch row (retrieval strategies); empty when the strategy reports none."""
    as_of: datetime | None = None
    """The instant the call's facts must be in force at (None: no temporal scope was asked for)."""
    exclude: frozenset[str] = frozenset()
    """Active facts not in force at ``as_of``: a retrieval-gated strategy never fires them in this call."""


@dataclasses.dataclass
class StrategyConfig:
    """Base class of every strategy config.

    Args:
        batch_size: facts applied per ``apply`` call when an import hands over many facts at once.
    """

    #: fields that can change on reopen without invalidating stored artifacts (thresholds, runtime knobs)
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"batch_size"})

    batch_size: int = dataclasses.field(default=1, metadata={"help": "facts per apply() call on bulk imports"})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"{type(self).__name__}.batch_size must be >= 1, got {self.batch_size}")

    # -- serialisation (PeftConfigMixin style) --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StrategyConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"{cls.__name__} got unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def save_pretrained(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "StrategyConfig":
        return cls.from_dict(json.loads((Path(directory) / CONFIG_FILE).read_text()))

    def replace(self, **overrides: Any) -> "StrategyConfig":
        return type(self).from_dict({**self.to_dict(), **overrides})

    def artifact_fields(self) -> dict[str, Any]:
        """The fields whose change invalidates stored artifacts."""
        return {k: v for k, v in self.to_dict().items() if k not in self.runtime_fields}

    @classmethod
    def parse_overrides(cls, pairs: Sequence[str]) -> dict[str, Any]:
        """Turn CLI ``key=value`` strings into typed values using the field types."""
        hints = typing.get_type_hints(cls)
        out: dict[str, Any] = {}
        for pair in pairs:
            if "=" not in pair:
                raise ValueError(f"config override {pair!r} is not key=value")
            key, raw = pair.split("=", 1)
            if key not in hints or key == "runtime_fields":
                raise ValueError(f"{cls.__name__} has no option {key!r}; known: {sorted(f.name for f in dataclasses.fields(cls))}")
            out[key] = _coerce(raw, hints[key], key)
        return out


def _coerce(raw: str, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if raw.lower() in ("none", "null") and type(None) in typing.get_args(hint):
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        hint, origin, args = args[0], typing.get_origin(args[0]), list(typing.get_args(args[0]))
    try:
        if hint is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return raw.lower() in ("true", "1", "yes")
        if hint in (int, float, str):
            return hint(raw)
        if origin in (list, tuple):
            item = args[0] if args else str
            values = [_coerce(x.strip(), item, key) for x in raw.strip("[]()").split(",") if x.strip()]
            return values if origin is list else tuple(values)
        return json.loads(raw)
    except (ValueError, json.JSONDecodeError):
        raise ValueError(f"option {key!r}: cannot parse {raw!r} as {hint}") from None


class Strategy(ABC):
    """Base class of every editing strategy (see the module docstring for what to override)."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[StrategyConfig]] = StrategyConfig
    #: True for strategies that write into the model's own weights (edits are global, not scoped)
    parametric: ClassVar[bool] = False
    #: True when a batched forward gives every row what it would get alone (per-row retrieval decisions, or edits
    #: in the weights); the evaluation harness then batches generations. False for strategies that decide once per
    #: forward call.
    batch_safe: ClassVar[bool] = False
    #: True for retrieval-gated strategies that honour temporal validity: facts outside ``[valid_from, valid_to)``
    #: at the call's ``as_of`` do not fire (``rewrite_query(..., as_of=)`` for in-context strategies,
    #: ``ForwardCall.exclude`` for strategies that route inside the model). Parametric edits cannot be scoped.
    supports_as_of: ClassVar[bool] = False

    def __init__(self, model: torch.nn.Module, tokenizer, config: StrategyConfig, artifacts: ArtifactStore, memory=None):
        from editmem.adapters import get_adapter

        self.model = model
        self.tokenizer = tokenizer
        self.adapter = get_adapter(model)
        self.config = config
        self.artifacts = artifacts
        self.memory = memory
        self.attached = False
        self._calls = threading.local()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __getstate__(self) -> dict[str, Any]:  # copies get their own (empty) per-thread call state
        state = self.__dict__.copy()
        state.pop("_calls", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._calls = threading.local()

    # -- write path ----------------------------------------------------------------------------
    @abstractmethod
    def apply(self, facts: Sequence[StoredFact]) -> None:
        """Write ``facts`` (new, active) into the strategy's state."""

    @abstractmethod
    def remove(self, fact_ids: Sequence[str], *, active: Sequence[StoredFact]) -> None:
        """Revert ``fact_ids``. ``active`` are the facts that remain in force (for strategies that replay)."""

    @abstractmethod
    def applied_ids(self) -> set[str]:
        """Ids of the facts currently written into the strategy."""

    # -- persistence ---------------------------------------------------------------------------
    @abstractmethod
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(tensors, json_state)`` that restore the strategy exactly, without recomputation."""

    @abstractmethod
    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> set[str]:
        """Restore from :meth:`state_dict` output; returns the fact ids restored."""

    def save(self) -> None:
        """Persist state and config to the artifact folder (called after every change)."""
        tensors, state = self.state_dict()
        self.artifacts.save_tensors(STATE_FILE, tensors)
        self.artifacts.save_json(STATE_FILE, state)
        self.config.save_pretrained(self.artifacts.root)

    def load(self) -> set[str] | None:
        """Restore from the artifact folder; None when there is nothing (or nothing compatible) stored."""
        state = self.artifacts.load_json(STATE_FILE)
        if state is None or not (self.artifacts.root / CONFIG_FILE).is_file():
            return None
        stored_config = type(self.config).from_pretrained(self.artifacts.root)
        if stored_config.artifact_fields() != self.config.artifact_fields():
            return None  # built with other settings: rebuild from the memory
        tensors = self.artifacts.load_tensors(STATE_FILE, device=self.device) or {}
        return self.load_state_dict(tensors, state)

    # -- inference -----------------------------------------------------------------------------
    def attach(self) -> None:
        """Install the strategy's interventions (hooks, weight deltas)."""
        self.attached = True

    def detach(self) -> None:
        """Remove every intervention: the model computes exactly what the base model computes."""
        self.attached = False

    @contextmanager
    def disabled(self):
        """``with strategy.disabled():`` runs the base model (PEFT's ``disable_adapter``)."""
        was = self.attached
        if was:
            self.detach()
        try:
            yield
        finally:
            if was:
                self.attach()

    def rewrite_query(self, query: str, *, as_of: datetime | None = None) -> tuple[str | None, EditTrace | None]:
        """``query`` restated with the facts it needs (in-context strategies; those in force at ``as_of`` when the
        strategy ``supports_as_of``); None when nothing changes.

        Strategies acting inside the model keep the default (no rewrite) and report what fired in the traces of
        their :meth:`forward_call`.
        """
        return None, None

    @contextmanager
    def forward_call(self, *, as_of: datetime | None = None, exclude: frozenset[str] = frozenset()):
        """``with strategy.forward_call() as call: model(...)``: the per-call state of one user-facing forward or
        generation (``call.traces``; ``as_of`` / ``exclude`` scope it in time); calls nest (the inner one is its own
        call)."""
        outer = getattr(self._calls, "current", None)
        call = ForwardCall(as_of=as_of, exclude=frozenset(exclude))
        self._calls.current = call
        self.begin_forward()
        try:
            yield call
        finally:
            self._calls.current = outer

    def current_call(self) -> ForwardCall:
        """The call being run in this thread; a throw-away one for a forward run outside :meth:`forward_call`
        (its traces are then not reported to anyone)."""
        call = getattr(self._calls, "current", None)
        return call if call is not None else ForwardCall()

    def begin_forward(self) -> None:
        """Called at the start of each :meth:`forward_call` (strategies that keep per-forward state reset it)."""

    def consolidate(self) -> None:
        """Fold pending edits into their long-term form (WISE merges side memories); a no-op for strategies that
        keep nothing pending."""

    def explain(self, prompt: str) -> EditTrace:
        """Which stored facts influence an answer to ``prompt``, with scores."""
        return EditTrace(strategy=self.name, details={"note": "this strategy does not implement explain()"})

    def telemetry_rows(self) -> list[dict[str, Any]]:
        """One flat row (scalars only) per write since the strategy was built or last replayed, for evaluation
        reports; ``[]`` for strategies that keep no per-write diagnostics."""
        return []


# -- registry --------------------------------------------------------------------------------------
_STRATEGIES: dict[str, tuple[type[StrategyConfig], type[Strategy]]] = {}


def register_strategy(*, name: str, config_cls: type[StrategyConfig], strategy_cls: type[Strategy]) -> None:
    """Register a strategy under a unique lower-case ``name``."""
    if not name or name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"strategy name must be lower-case alphanumeric/underscore, got {name!r}")
    if name in _STRATEGIES:
        raise ValueError(f"strategy {name!r} is already registered")
    if not (isinstance(config_cls, type) and issubclass(config_cls, StrategyConfig)):
        raise TypeError(f"config_cls for {name!r} must subclass StrategyConfig")
    if not (isinstance(strategy_cls, type) and issubclass(strategy_cls, Strategy)):
        raise TypeError(f"strategy_cls for {name!r} must subclass Strategy")
    strategy_cls.name = name
    strategy_cls.config_cls = config_cls
    _STRATEGIES[name] = (config_cls, strategy_cls)


def get_strategy(name: str) -> tuple[type[StrategyConfig], type[Strategy]]:
    if name not in _STRATEGIES:
        raise KeyError(f"unknown strategy {name!r}; available: {', '.join(available_strategies())}")
    return _STRATEGIES[name]


def available_strategies() -> list[str]:
    return sorted(_STRATEGIES)
