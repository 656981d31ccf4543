"""User-facing metrics through the whole harness, on a tiny random model.

A spy strategy forces one word everywhere once it holds a fact, and refuses facts whose subject starts with
"Reject" (as llp refuses prompts where it cannot locate the subject). So after editing every same-subject answer
changes and loops, the refused record is reported, and the run still finishes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from editmem.eval.runner import run_eval
from editmem.eval.scoring import Scorer
from editmem.strategies import Strategy, StrategyConfig, available_strategies, register_strategy


@dataclasses.dataclass
class LoopConfig(StrategyConfig):
    """No options."""


class LoopStrategy(Strategy):
    """Once it holds a fact, the LM head puts all mass on ``forced`` (set by the test to a word token)."""

    forced: int = 0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._ids: set[str] = set()
        self._handle = None

    def apply(self, facts):
        for stored in facts:
            if stored.fact.subject.startswith("Reject"):
                raise ValueError(f"cannot locate subject {stored.fact.subject!r}")
            self._ids.add(stored.id)

    def remove(self, fact_ids, *, active):
        self._ids.difference_update(fact_ids)

    def applied_ids(self):
        return set(self._ids)

    def state_dict(self):
        return {}, {"ids": sorted(self._ids)}

    def load_state_dict(self, tensors, state):
        self._ids = set(state["ids"])
        return set(self._ids)

    def _hook(self, _module, _inputs, output):
        if self._ids:
            output = output.clone()
            output[..., LoopStrategy.forced] += 1e4
        return output

    def attach(self):
        if self._handle is None:
            self._handle = self.model.get_output_embeddings().register_forward_hook(self._hook)
        self.attached = True

    def detach(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.attached = False


if "evalloop" not in available_strategies():
    register_strategy(name="evalloop", config_cls=LoopConfig, strategy_cls=LoopStrategy)


def _record(i: int, subject: str) -> dict:
    return {"id": f"rl-{i:04d}", "subject": subject, "subject_kind": "organisation", "relation": "chief_executive",
            "prompt": f"Who is the CEO of {subject}?", "target": f"Person {i}", "previous": f"Founder {i}",
            "aliases": [f"the firm number {i}"], "paraphrases": [f"Who runs {subject}?"],
            "alias_paraphrases": [f"Who is the chief executive of the firm number {i}?"],
            "same_subject_probes": [f"Where is {subject} based?", f"When was {subject} founded?",
                                    f"What does {subject} make?"],
            "unrelated_probe": "Who wrote Pride and Prejudice?", "unrelated_answer": "Jane Austen",
            "changed_on": "2024-10-14", "source": "test fixture"}


@pytest.fixture()
def realistic_file(tmp_path):
    path = tmp_path / "tiny_realistic.jsonl"
    rows = [_record(1, "Acme"), _record(2, "Reject Corp"), _record(3, "Globex")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_same_subject_alias_and_degeneration_metrics_through_the_harness(realistic_file, tiny_loaded, tmp_path):
    LoopStrategy.forced = tiny_loaded.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    result = run_eval("evalloop", str(realistic_file), n=3, model=tiny_loaded, max_new_tokens=4, out_dir=tmp_path / "out")

    # the refused record is recorded and reported; the others were edited and scored
    assert result.counters["rejected"] == 1 and result.counters["added"] == 2
    errors = [o.error for o in result.per_record]
    assert errors[0] is None and "cannot locate subject" in errors[1] and errors[2] is None
    assert any("rejected" in note for note in result.notes)

    # pre-edit row: every answer equals itself; post-edit: the forced word replaced the pre-edit answers
    assert result.pre_metrics["gen_same_subject_unchanged"] == 1.0
    assert result.pre_metrics["same_subject_agreement"] == 1.0
    post = result.per_record[0].post
    assert post["same_unchanged"] == [a == b for a, b in zip(result.per_record[0].pre["gen_same"], post["gen_same"])]
    assert result.metrics["gen_same_subject_unchanged"] < 1.0
    assert result.metrics["same_subject_agreement"] < 1.0
    assert result.metrics["degenerate_probes"] == 1.0 and result.metrics["degenerate_edit"] == 1.0
    assert "gen_alias_generality" in result.metrics and "alias_generality" in result.metrics
    assert result.probes["same_subject_probes"] == 9 and result.probes["alias_paraphrases"] == 3

    report = (tmp_path / "out" / "report.md").read_text()
    assert "| gen_same_subject_unchanged |" in report and "rejected=1" in report
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["per_record"][1]["error"].startswith("ValueError")


class _FlakyBatchLLM:
    """Fails on any batch of more than one prompt, like a strategy that is not safe on padded batches."""

    max_calls = 0

    def generate(self, prompt, **_kwargs):
        if isinstance(prompt, list) and len(prompt) > 1:
            raise RuntimeError("size mismatch")
        texts = prompt if isinstance(prompt, list) else [prompt]
        outs = [type("G", (), {"text": t.upper(), "trace": None})() for t in texts]
        return outs if isinstance(prompt, list) else outs[0]


def test_a_failing_batch_is_answered_prompt_by_prompt():
    scorer = Scorer(_FlakyBatchLLM())
    assert scorer.answers(["a", "b"]) == [("A", None), ("B", None)]
    assert scorer.batch_fallbacks == 1
