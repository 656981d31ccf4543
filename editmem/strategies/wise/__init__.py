"""``wise``: WISE (Wang et al., NeurIPS 2024), a side memory with activation routing, knowledge shards and Ties-merge.

* **Side memory** (:mod:`.memory`): copies of one MLP value matrix (``mlp_out`` at ~80 % depth) next to the frozen
  original ``W0``. Edits are written into the open *shard*, each shard under its own random gradient mask (ρ = 0.2)
  and starting from ``W0``; full shards are Ties-merged (:mod:`.ties`) in groups of ``k`` into one consolidated
  memory (WISE-Merge) or one memory per group (WISE-Retrieve).
* **Editing** (:mod:`.training`): per fact, 11 templated rows plus one irrelevant row, plain SGD (lr 1.0) on
  ``L_ft + L_act``; the margin loss pushes the side memory's activation distance up on the edit and down on the
  irrelevant text, and records the threshold ``ε``. The frozen bottom runs once per edit.
* **Routing** (:mod:`.routing`, :mod:`.inference`): the distance ``‖σ(aW'ᵀ) − σ(aW0ᵀ)‖`` averaged over the prompt's
  tokens decides, once per request at prefill, whether (and which) side memory answers; the choice is kept for every
  generated token. Below ``ε`` the model is the base model, bit for bit.

Modules: ``config`` (:class:`WISEConfig`, presets), ``ties``, ``memory``, ``routing``, ``samples`` (templates,
irrelevant pool), ``training``, ``inference``, ``strategy`` (the class). See ``docs/strategies/wise.md``.
"""

from editmem.strategies.wise.config import PRESETS, WISEConfig, default_layer
from editmem.strategies.wise.memory import SideMemory
from editmem.strategies.wise.strategy import WISEStrategy
from editmem.strategies.wise.ties import ties_merge, trim

__all__ = ["PRESETS", "SideMemory", "WISEConfig", "WISEStrategy", "default_layer", "ties_merge", "trim"]
