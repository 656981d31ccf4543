"""``llp``: Layer-Level Prompting ("Think and Recall", Wang et al.), a retrieval-gated key/value edit memory.

An *entry* (one per subject) is a key and a value:

* **key** ``[m, d]``: for each retrieval layer ``r`` in ``R``, a vector resembling the output of layer ``r`` at
  the last subject token. Initialised as the mean of that state over random context prefixes, then refined by
  InfoNCE against the keys already stored (negatives capped), optionally with hinge terms against a pool of
  generic token states sampled from the model itself (the measured fix for "hub" keys on small models,
  ``docs/strategies/llp.md``).
* **value** ``[b, d]``: ``b`` continuous vectors prepended to the hidden sequence entering layer ``z``, trained
  with the edit loss through layers ``z..L-1`` only (the frozen bottom is computed once per edit).

At inference the outputs of the retrieval layers are compared (cosine) with that layer's keys; every layer votes
for its top-k entries above ``t_layer``; the entry with the most votes is injected at the input of layer ``z``
iff it has at least ``t_vote`` votes. The decision is made once, on the prompt (prefill), and holds for every
generated token: the value's key/value states stay in the KV cache of layers ``>= z``, so the injected prefix is
computed once per generation. With no hit, no tensor of the forward pass is touched (bit-identical to the base
model).

Layout: the shared prefix injection (:class:`editmem.injection.PrefixInjection`): value positions ``-b..-1`` in
layers ``>= z``, ``b`` extra key columns allowed for rows that hit.

Modules: ``config`` (presets, :class:`LLPConfig`), ``records``, ``resources`` (bottom pass, prefix bank, generic
pool), ``values`` / ``keys`` (training), ``router`` (inference hooks, vote, explain), ``strategy`` (the class).
"""

from editmem.strategies.llp.config import PRESETS, LLPConfig, ResolvedLLP
from editmem.strategies.llp.records import (  # noqa: F401  (tests, bench)
    _Entry,
    _FactRec,
    _ForwardState,
    _subject_index,
)
from editmem.strategies.llp.strategy import LLPStrategy

__all__ = ["PRESETS", "LLPConfig", "LLPStrategy", "ResolvedLLP"]
