"""Evaluation harness: datasets, metrics, the lifelong protocol, reports (spec: ../shared/spec/EVALUATION.md).

>>> from editmem.eval import run_eval
>>> result = run_eval("context", "zsre", n=100, out_dir="results/zsre-context")
>>> result.metrics["reliability"], result.metrics["locality"]
"""

from editmem.eval.datasets import EvalRecord, load_records
from editmem.eval.runner import CurvePoint, EvalResult, RecordOutcome, run_eval

__all__ = ["CurvePoint", "EvalRecord", "EvalResult", "RecordOutcome", "load_records", "run_eval"]
