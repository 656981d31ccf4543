"""The lifelong protocol on a tiny random model (EVALUATION.md §1, §8 pitfalls 1-2).

A spy strategy logs, at every forward the harness makes, how many facts were applied at that moment, and once
it holds any fact it forces one token everywhere. That makes the protocol observable: pre-edit measurements see
the base model, post-edit measurements all see the model after the T-th edit, and locality compares with the
*pre-edit* tokens (against itself it would be 1.0).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from click.testing import CliRunner

from editmem.eval.cli import eval_command
from editmem.eval.metrics import token_agreement
from editmem.eval.runner import run_eval
from editmem.strategies import Strategy, StrategyConfig, available_strategies, register_strategy

FORCED_TOKEN = 17


@dataclasses.dataclass
class SpyConfig(StrategyConfig):
    """No options."""


class SpyStrategy(Strategy):
    """Counts applied facts; when attached with >= 1 fact, the LM head puts all mass on FORCED_TOKEN."""

    log: list[tuple[bool, int]] = []

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._ids: set[str] = set()
        self._handle = None

    def apply(self, facts):
        self._ids.update(f.id for f in facts)

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
            output[..., FORCED_TOKEN] += 1e4
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

    def begin_forward(self):
        super().begin_forward()
        SpyStrategy.log.append((self.attached, len(self._ids)))


if "evalspy" not in available_strategies():
    register_strategy(name="evalspy", config_cls=SpyConfig, strategy_cls=SpyStrategy)

RECORDS = [
    {"subject": f"Entity{i}", "src": f"Where was Entity{i} born?", "rephrase": f"What is the birthplace of Entity{i}?",
     "alt": f"Town {i}", "answers": ["Nowhere"], "loc": f"nq question: who wrote book number {i}",
     "loc_ans": "Jane Austen", "case_id": i}
    for i in range(4)
]


@pytest.fixture()
def zsre_file(tmp_path):
    path = tmp_path / "tiny_zsre.json"
    path.write_text(json.dumps(RECORDS))
    return path


def run(strategy, zsre_file, tiny_loaded, **kwargs):
    SpyStrategy.log.clear()
    return run_eval(strategy, str(zsre_file), n=4, model=tiny_loaded, max_new_tokens=3, **kwargs)


def test_final_mode_scores_every_record_on_the_model_after_all_edits(zsre_file, tiny_loaded, tmp_path):
    result = run("evalspy", zsre_file, tiny_loaded, out_dir=tmp_path / "out")
    n = 4
    pre_calls = [c for c in SpyStrategy.log if not c[0]]
    post_calls = [c for c in SpyStrategy.log if c[0]]
    # pre-edit: detached, nothing applied; post-edit: every single forward/generate sees all T edits
    assert pre_calls and all(count == 0 for _, count in pre_calls)
    assert SpyStrategy.log[: len(pre_calls)] == pre_calls  # all pre-edit calls come before any post-edit call
    assert post_calls and all(count == n for _, count in post_calls)
    assert result.counters["added"] == n and len(result.timings["edit_call_latency_s"]) == n

    for outcome in result.per_record:
        pre_tok, post_tok = outcome.pre["locality_tokens"], outcome.post["locality_tokens"]
        assert set(post_tok) == {FORCED_TOKEN}
        # locality is agreement with the PRE-edit tokens, not with the edited model itself
        assert outcome.post["locality_acc"] == token_agreement(pre_tok, post_tok)
    assert result.pre_metrics["locality"] == 1.0
    expected_loc = sum(o.post["locality_acc"] for o in result.per_record) / n
    assert result.metrics["locality"] == pytest.approx(expected_loc)
    assert result.metrics["locality"] < 1.0
    assert result.metrics["gen_locality"] == pytest.approx(
        sum(o.pre["gen_loc"] == o.post["gen_loc"] for o in result.per_record) / n)

    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"results.json", "report.md", "curve.png", "latency.png"} <= files
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"reliability", "generality", "locality"} <= set(saved["metrics"])
    assert saved["model_fingerprint"] == tiny_loaded.fingerprint and len(saved["per_record"]) == n
    assert "| locality |" in (tmp_path / "out" / "report.md").read_text()


def test_immediate_mode_scores_each_record_right_after_its_edit(zsre_file, tiny_loaded):
    result = run("evalspy", zsre_file, tiny_loaded, mode="immediate", generation=False)
    counts = [count for attached, count in SpyStrategy.log if attached]
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == 4
    assert any("immediate" in note for note in result.notes)


def test_checkpoints_and_batches(zsre_file, tiny_loaded):
    result = run("evalspy", zsre_file, tiny_loaded, batch_size=2, checkpoints=(2,), generation=False)
    assert result.timings["edit_call_latency_s"].__len__() == 2  # two calls of two facts
    assert [p.n_edits for p in result.curve] == [0, 2, 4]
    assert [p.n_records for p in result.curve] == [4, 2, 4]
    with pytest.raises(ValueError, match="checkpoints"):
        run("evalspy", zsre_file, tiny_loaded, checkpoints=(4,))


def test_none_is_the_unedited_model(zsre_file, tiny_loaded):
    result = run("none", zsre_file, tiny_loaded, generation=False)
    assert result.counters["added"] == 0 and result.timings["edit_call_latency_s"] == []
    assert result.metrics == result.pre_metrics and result.metrics["locality"] == 1.0
    with pytest.raises(ValueError, match="no config"):
        run("none", zsre_file, tiny_loaded, config={"top_k": 1})


def test_pre_cache_reuses_pre_edit_measurements(zsre_file, tiny_loaded, tmp_path):
    first = run("none", zsre_file, tiny_loaded, generation=False, pre_cache=tmp_path / "cache")
    second = run("evalspy", zsre_file, tiny_loaded, generation=False, pre_cache=tmp_path / "cache")
    assert not first.timings["pre_from_cache"] and second.timings["pre_from_cache"]
    assert any(attached for attached, _ in SpyStrategy.log)  # post-edit still measured, with the edits
    assert [o.pre for o in first.per_record] == [o.pre for o in second.per_record]


def test_context_strategy_states_facts_in_teacher_forced_prompts(zsre_file, tiny_loaded):
    result = run("context", zsre_file, tiny_loaded, generation=False)
    from editmem.strategies import ContextConfig

    assert result.config == ContextConfig().to_dict()  # the full strategy config is recorded
    # the tiny model is random, but stating "prompt target" right before the prompt changes its predictions
    assert [o.pre["rewrite_nll"] for o in result.per_record] != [o.post["rewrite_nll"] for o in result.per_record]


def test_cli_run_and_compare(tiny_checkpoint, zsre_file, tmp_path):
    runner = CliRunner()
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    common = ["--dataset", str(zsre_file), "--n", "2", "--model", str(tiny_checkpoint), "--no-generation"]
    res = runner.invoke(eval_command, ["--strategy", "none", "--out", str(out_a), *common])
    assert res.exit_code == 0, res.output
    assert (out_a / "results.json").is_file() and "| reliability |" in res.output
    store = tmp_path / "kept"
    res = runner.invoke(eval_command, ["--strategy", "context", "--config", "top_k=1", "--checkpoints", "1",
                                       "--out", str(out_b), "--store", str(store), *common])
    assert res.exit_code == 0, res.output
    assert json.loads((out_b / "results.json").read_text())["config"]["top_k"] == 1
    from editmem.memory.store import EditMemory

    assert EditMemory(store).count() == 2  # the kept store holds the run's edits
    again = runner.invoke(eval_command, ["--strategy", "context", "--out", str(tmp_path / "c"), "--store", str(store), *common])
    assert again.exit_code == 2 and "not empty" in again.output  # never evaluates on top of an old memory
    res = runner.invoke(eval_command, ["compare", str(out_a), str(out_b), "--out", str(tmp_path / "cmp.md")])
    assert res.exit_code == 0, res.output
    table = (tmp_path / "cmp.md").read_text()
    assert "none · zsre · T=2" in table and "context · zsre · T=2" in table and "| locality |" in table
    bad = runner.invoke(eval_command, ["--strategy", "context", "--config", "nope=1", *common])
    assert bad.exit_code == 2 and "nope" in bad.output
    missing = runner.invoke(eval_command, ["--strategy", "none", "--dataset", str(tmp_path / "x.json"), "--n", "1"])
    assert missing.exit_code == 2


def test_batched_generation_only_where_safe(zsre_file, tiny_loaded):
    batched = run("none", zsre_file, tiny_loaded, gen_batch_size=3)
    assert batched.generation["batch"] == 3
    assert all({"gen_rewrite", "gen_rephrase", "gen_loc"} <= set(o.pre) for o in batched.per_record)
    # the spy strategy hooks every forward (a router would decide per call): it is never batched
    spy = run("evalspy", zsre_file, tiny_loaded, gen_batch_size=3)
    assert spy.generation["batch"] == 1
    assert spy.counters["gen_loc_changed_without_fact_stated"] == 0  # no trace -> not counted
