"""Shared locate-then-edit machinery (MEMIT family): keys, target values, layer statistics, solvers.

One code path serves every variant (``memit``, ``memit_seq``, ``alphaedit``, ``lyaplock``); only the closed-form
solve and the cross-batch state differ (see :mod:`editmem.strategies.locate.editor`). Reference: LYAPLOCK.md.
"""

from editmem.strategies.locate.editor import VARIANTS, LayerState, LocateEditor, SolverParams
from editmem.strategies.locate.keys import compute_keys
from editmem.strategies.locate.requests import EditRequest, build_rows, context_templates, make_request
from editmem.strategies.locate.solvers import (
    QueueState,
    alphaedit_update,
    lyaplock_update,
    memit_update,
    nullspace_projector,
    preservation_loss,
    preservation_loss_traces,
)
from editmem.strategies.locate.stats import LayerStats, StatsSource, collect_stats, corpus_split, default_corpus_path, load_or_collect_stats
from editmem.strategies.locate.values import ValueParams, ValueResult, compute_values

__all__ = [
    "VARIANTS", "EditRequest", "LayerState", "LayerStats", "LocateEditor", "QueueState", "SolverParams", "StatsSource",
    "ValueParams", "ValueResult", "alphaedit_update", "build_rows", "collect_stats", "compute_keys", "compute_values",
    "context_templates", "corpus_split", "default_corpus_path", "load_or_collect_stats", "lyaplock_update", "make_request",
    "memit_update", "nullspace_projector", "preservation_loss", "preservation_loss_traces",
]
