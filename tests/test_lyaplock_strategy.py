"""The ``lyaplock`` strategy and its shared machinery on tiny random models (no download, CPU, seconds)."""

from __future__ import annotations

import pytest
import torch

from editmem.facts import Fact, StoredFact, fact_id_for
from editmem.memory.artifacts import ArtifactStore
from editmem.strategies import get_strategy
from editmem.strategies.locate import StatsSource, build_rows, compute_values, load_or_collect_stats, make_request
from editmem.strategies.locate.values import ValueParams
from editmem.strategies.lyaplock import LyapLockConfig, LyapLockStrategy

FACTS = [
    ("Paris", "Paris is the capital of", "Italy"),
    ("Barack Obama", "The wife of Barack Obama is", "Angela Merkel"),
    ("the Eiffel Tower", "Where is the Eiffel Tower located?", "Rome"),
    ("Danielle Darrieux", "The mother tongue of Danielle Darrieux is", "English"),
    ("Toyota", "Toyota was founded in", "Sweden"),
    ("Lionel Messi", "Lionel Messi plays the sport of", "cricket"),
]


def stored(subject: str, prompt: str, target: str) -> StoredFact:
    return StoredFact(fact=Fact(subject=subject, prompt=prompt, target=target), id=fact_id_for(subject, prompt, target))


def _tiny(kind: str, tokenizer):
    torch.manual_seed(0)
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          tie_word_embeddings=True, initializer_range=0.2)
        model = LlamaForCausalLM(cfg)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_inner=128, n_layer=4, n_head=4, n_positions=256,
                         initializer_range=0.2)
        model = GPT2LMHeadModel(cfg)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def llama(tokenizer):
    return _tiny("llama", tokenizer)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    words = "the a city river painter sport language capital company founded plays wife mother tongue located".split()
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(words[int(i)] for i in torch.randint(len(words), (40,), generator=g)) + "." for _ in range(120)]
    path.write_text("\n".join(lines))
    return str(path)


@pytest.fixture(autouse=True)
def _home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EDITMEM_HOME", str(tmp_path_factory.getbasetemp() / "editmem_home"))


def make_strategy(model, tokenizer, corpus, tmp_path, name="x", **overrides) -> LyapLockStrategy:
    cfg = dict(layers=[1, 2], stats_corpus=corpus, v_num_grad_steps=8, v_lr=0.5, mom2_update_weight=5.0)
    cfg.update(overrides)
    return LyapLockStrategy(model, tokenizer, LyapLockConfig(**cfg), ArtifactStore(tmp_path / name), None)


def target_logprob(model, tokenizer, prompt: str, target: str) -> float:
    from editmem.tokens import encode_prompt_target

    enc = encode_prompt_target(tokenizer, prompt, target)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([enc.input_ids])).logits[0].double(), -1)
    return float(sum(lp[enc.start - 1 + j, t] for j, t in enumerate(enc.target_ids)))


def weights(strategy) -> dict[int, torch.Tensor]:
    return {l: strategy.adapter.mlp_out_weight(l).detach().clone() for l in strategy.layers}


# -- token bookkeeping ---------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt,subject", [
    ("Paris is the capital of", "Paris"),
    ("The wife of Barack Obama is", "Barack Obama"),
    ("Which city hosts the Eiffel Tower", "the Eiffel Tower"),
])
def test_lookup_is_the_subject_last_token(tokenizer, prompt, subject):
    req = make_request(tokenizer, "f", prompt, subject, "x")
    # a prefix that itself contains the subject must not capture the lookup
    templates = [["{}"], [f"{subject} said. {{}}", "Because nothing. {}"]]
    rows = build_rows(tokenizer, req, templates, with_target=True)
    expected_count = [1, 2, 1, 1]  # bare prompt, prefix holding the subject, other prefix, KL row
    for row, count in zip(rows, expected_count):
        text_before = tokenizer.decode(row.ids[: row.lookup + 1])
        assert text_before.endswith(subject), (text_before, subject)
        assert text_before.count(subject) == count


def test_label_span_predicts_the_target_tokens(tokenizer):
    req = make_request(tokenizer, "f", "The wife of Barack Obama is", "Barack Obama", "Angela Merkel")
    rows = build_rows(tokenizer, req, [["{}"]], with_target=True)
    row = rows[0]
    # the position predicting target[j] holds target[j-1] (or the last prompt token), and the row ends with target[-2]
    assert [row.ids[p + 1] for p in row.label_pos[:-1]] == list(req.target_ids[:-1])
    assert row.label_pos[-1] == len(row.ids) - 1
    assert rows[-1].group == -1 and tokenizer.decode(rows[-1].ids).endswith("is a")


# -- shared machinery ------------------------------------------------------------------------------------
def test_batched_values_equal_one_at_a_time(llama, tokenizer):
    from editmem.adapters import get_adapter

    reqs = [make_request(tokenizer, str(i), p, s, t) for i, (s, p, t) in enumerate(FACTS[:3])]
    templates = [["{}"], ["The day. {}", "I see. {}"]]
    params = ValueParams(v_lr=0.5, v_num_grad_steps=6)
    adapter = get_adapter(llama)
    together = compute_values(llama, tokenizer, adapter, reqs, templates, 2, params, chunk=3)
    apart = compute_values(llama, tokenizer, adapter, reqs, templates, 2, params, chunk=1)
    assert torch.allclose(together.z, apart.z, atol=1e-4)
    assert together.steps == apart.steps
    assert max(together.loss) < max(together.nll[i] for i in range(3)) + 1  # sanity: finite and comparable
    # δ moved and respected the clamp
    ratio = torch.tensor(together.delta_ratio)
    assert (ratio > 0).all() and (ratio <= params.clamp_norm_factor + 1e-5).all()


def test_statistics_are_cached_with_token_count(llama, tokenizer, corpus):
    from editmem.adapters import get_adapter
    from editmem.strategies.locate.stats import corpus_split, stats_dir

    adapter = get_adapter(llama)
    source = StatsSource(corpus=corpus, holdout_every=10)
    stats = load_or_collect_stats(llama, tokenizer, adapter, [1, 2], source, fingerprint="tiny")
    train, held = corpus_split(corpus, 10)
    assert len(held) == 12 and len(train) == 108
    expected = sum(min(len(tokenizer(x)["input_ids"]), 256) for x in train)
    assert stats[1].n_tokens == expected
    assert (stats_dir("tiny", source) / "layer2.safetensors").is_file()
    again = load_or_collect_stats(llama, tokenizer, adapter, [2], source, fingerprint="tiny")
    assert torch.equal(again[2].C, stats[2].C) and again[2].n_tokens == expected
    C = stats[1].C
    assert C.dtype == torch.float64 and torch.allclose(C, C.T) and torch.linalg.eigvalsh(C).min() > -1e-9


# -- the strategy -----------------------------------------------------------------------------------------
def test_edit_raises_target_probability_and_detach_is_exact(llama, tokenizer, corpus, tmp_path):
    strategy = make_strategy(llama, tokenizer, corpus, tmp_path)
    base = weights(strategy)
    facts = [stored(*f) for f in FACTS[:3]]
    before = [target_logprob(llama, tokenizer, f.fact.prompt, f.fact.target) for f in facts]
    strategy.apply(facts)
    strategy.attach()
    after = [target_logprob(llama, tokenizer, f.fact.prompt, f.fact.target) for f in facts]
    assert all(a > b + 0.5 for a, b in zip(after, before)), (before, after)
    edited = weights(strategy)
    assert any(not torch.equal(edited[l], base[l]) for l in strategy.layers)
    strategy.detach()
    assert all(torch.equal(strategy.adapter.mlp_out_weight(l), base[l]) for l in strategy.layers)
    assert all(torch.equal(strategy.W0[l], base[l]) for l in strategy.layers)
    tel = strategy.telemetry[-1]
    assert set(tel["layers"]) == {"1", "2"} and tel["D_sum"] > 0 and tel["threshold_sum"] == pytest.approx(60 * (100 / 3) * tel["D_sum"])
    trace = strategy.explain("Where is Paris these days?")
    assert trace.fact_ids == [] and [c["subject"] for c in trace.details["subject_candidates"]] == ["Paris"]


def test_lyaplock_first_batch_equals_memit_with_same_lambda(llama, tokenizer, corpus, tmp_path):
    facts = [stored(*f) for f in FACTS[:2]]
    out = {}
    for variant in ("lyaplock", "memit"):
        s = make_strategy(llama, tokenizer, corpus, tmp_path, name=variant, variant=variant, mom2_update_weight=5.0)
        s.apply(facts)
        s.attach()
        out[variant] = weights(s)
        s.detach()
    for l in out["memit"]:
        assert torch.allclose(out["lyaplock"][l], out["memit"][l], atol=1e-6)


def test_queue_grows_when_preservation_loss_exceeds_threshold(llama, tokenizer, corpus, tmp_path):
    # tight threshold with the paper's rule: D_bar = D_base of the first (one-edit) batch
    s = make_strategy(llama, tokenizer, corpus, tmp_path, alpha=1.0, queue_reference_batch=None)
    for f in FACTS[:4]:
        s.apply([stored(*f)])
    ws = [t["layers"]["2"]["w_used"] for t in s.telemetry]
    assert ws[0] == 1.0 and ws[1] == 1.0
    assert max(ws[2:]) > 1.0, ws
    s.detach()


def test_queue_threshold_refers_to_the_reference_batch(llama, tokenizer, corpus, tmp_path):
    """One edit at a time with ``queue_reference_batch=50``: the threshold is 50·α·D_base, so the same four edits
    that bind the paper's rule (previous test) leave the weight at 1."""
    s = make_strategy(llama, tokenizer, corpus, tmp_path, alpha=1.0, queue_reference_batch=50)
    for f in FACTS[:4]:
        s.apply([stored(*f)])
    first = s.telemetry[0]["layers"]["2"]
    assert first["threshold"] == pytest.approx(50.0 * first["D"])
    assert [t["layers"]["2"]["w_used"] for t in s.telemetry] == [1.0] * 4
    s.detach()


def test_forget_by_replay_equals_never_edited(llama, tokenizer, corpus, tmp_path):
    facts = [stored(*f) for f in FACTS[:5]]
    s = make_strategy(llama, tokenizer, corpus, tmp_path, name="a")
    s.apply(facts[:2])
    s.apply(facts[2:4])
    s.apply(facts[4:])
    s.attach()
    s.remove([facts[2].id], active=[f for f in facts if f.id != facts[2].id])
    replayed = weights(s)
    untouched = [target_logprob(llama, tokenizer, f.fact.prompt, f.fact.target) for f in facts if f.id != facts[2].id]
    assert s.applied_ids() == {f.id for f in facts} - {facts[2].id}
    assert s.telemetry[-1]["reused_batches"] == 1
    s.detach()

    ref = make_strategy(llama, tokenizer, corpus, tmp_path, name="b")
    ref.apply(facts[:2])
    ref.apply([facts[3]])
    ref.apply(facts[4:])
    ref.attach()
    expected = [target_logprob(llama, tokenizer, f.fact.prompt, f.fact.target) for f in facts if f.id != facts[2].id]
    for l in ref.layers:
        assert torch.allclose(replayed[l], ref.adapter.mlp_out_weight(l), atol=1e-6)
    assert untouched == pytest.approx(expected, abs=1e-4)
    ref.detach()


@pytest.mark.parametrize("variant", ["lyaplock", "memit_seq", "alphaedit"])
def test_reopen_continues_like_never_closed(llama, tokenizer, corpus, tmp_path, variant):
    facts = [stored(*f) for f in FACTS[:4]]
    kwargs = dict(variant=variant, alpha=1.0, queue_reference_batch=None, nullspace_variance_share=0.3)
    one = make_strategy(llama, tokenizer, corpus, tmp_path, name="one", **kwargs)
    for f in facts:
        one.apply([f])
    one.attach()
    straight = weights(one)
    queues = one.editor().state_json()["queues"]
    one.detach()

    two = make_strategy(llama, tokenizer, corpus, tmp_path, name="two", **kwargs)
    for f in facts[:2]:
        two.apply([f])
    two.save()
    two.detach()
    three = make_strategy(llama, tokenizer, corpus, tmp_path, name="two", **kwargs)
    assert three.load() == {f.id for f in facts[:2]}
    three.attach()
    assert all(torch.equal(three.adapter.mlp_out_weight(l), two.edited[l]) for l in three.layers)  # no recomputation
    for f in facts[2:]:
        three.apply([f])
    for l in three.layers:
        assert torch.allclose(three.adapter.mlp_out_weight(l), straight[l], atol=1e-6)
    q3 = three.editor().state_json()["queues"]
    for l in queues:
        assert q3[l]["D_base"] == pytest.approx(queues[l]["D_base"]) and q3[l]["Z"] == pytest.approx(queues[l]["Z"])
    if variant == "lyaplock":
        assert max(q["Z"] * q["a"] for q in q3.values()) > 1.0  # the queue did grow, and was carried over
    three.detach()


def test_gpt2_conv1d_layout(tokenizer, corpus, tmp_path):
    model = _tiny("gpt2", tokenizer)
    s = make_strategy(model, tokenizer, corpus, tmp_path)
    base = {l: model.transformer.h[l].mlp.c_proj.weight.detach().clone() for l in s.layers}
    f = stored(*FACTS[0])
    before = target_logprob(model, tokenizer, f.fact.prompt, f.fact.target)
    s.apply([f])
    s.attach()
    assert target_logprob(model, tokenizer, f.fact.prompt, f.fact.target) > before + 0.5
    s.detach()
    assert all(torch.equal(model.transformer.h[l].mlp.c_proj.weight, base[l]) for l in s.layers)


def test_registered_variants_and_config_validation():
    for name, variant in [("lyaplock", "lyaplock"), ("memit", "memit"), ("memit_seq", "memit_seq"), ("alphaedit", "alphaedit")]:
        config_cls, strategy_cls = get_strategy(name)
        assert config_cls().variant == variant and strategy_cls.parametric
    with pytest.raises(ValueError):
        LyapLockConfig(variant="rome")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LyapLockConfig(alpha=0)
    with pytest.raises(ValueError):
        LyapLockConfig(layers=[3, 3])
    assert LyapLockConfig.parse_overrides(["alpha=20", "layers=4,5,6"]) == {"alpha": 20.0, "layers": [4, 5, 6]}


# -- target-value speed-ups: prefix cache (exact up to rounding) and bf16 shadows ---------------------------------
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_prefix_cache_equals_full_rows(tokenizer, kind):
    from editmem.adapters import get_adapter

    model = _tiny(kind, tokenizer)
    reqs = [make_request(tokenizer, str(i), p, s, t) for i, (s, p, t) in enumerate(FACTS[:3])]
    templates = [["{}"], ["The day. {}", "I see it now. {}"]]
    adapter = get_adapter(model)
    full = compute_values(model, tokenizer, adapter, reqs, templates, 2, ValueParams(v_lr=0.5, v_num_grad_steps=6), chunk=3)
    cached = compute_values(model, tokenizer, adapter, reqs, templates, 2,
                            ValueParams(v_lr=0.5, v_num_grad_steps=6, prefix_cache=True), chunk=3)
    assert torch.allclose(cached.z, full.z, atol=1e-4, rtol=1e-5)
    assert cached.steps == full.steps and cached.loss == pytest.approx(full.loss, rel=1e-4, abs=1e-5)
    assert full.delta_ratio[0] > 0.01  # δ did move: the comparison is not between two zero updates


def test_prefix_runner_is_used_and_reproduces_the_top_blocks(llama, tokenizer):
    from editmem.adapters import get_adapter
    from editmem.interventions import hidden_of
    from editmem.strategies.locate.forward import right_pad
    from editmem.strategies.locate.values import _PrefixTop

    adapter = get_adapter(llama)
    rows = [build_rows(tokenizer, make_request(tokenizer, "f", p, s, t), [["{}"], ["I see it now. {}"]], with_target=True)
            for s, p, t in FACTS[:2]]
    rows = [r for group in rows for r in group]
    ids, mask = right_pad([r.ids for r in rows], tokenizer.eos_token_id, torch.device("cpu"))
    seen = {}
    handles = [
        llama.model.layers[2].register_forward_hook(lambda _m, _a, o: seen.__setitem__("h", hidden_of(o))),
        llama.model.layers[2].register_forward_pre_hook(lambda _m, _a, kw: seen.__setitem__("kw", dict(kw)), with_kwargs=True),
        llama.model.norm.register_forward_hook(lambda _m, _a, o: seen.__setitem__("final", o)),
    ]
    try:
        with torch.no_grad():
            llama(input_ids=ids, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    final = seen["final"]
    lookup = torch.tensor([r.lookup for r in rows])
    top = _PrefixTop.build(llama, adapter, seen["kw"], seen["h"], lookup, mask.sum(1), 2, torch.float32)
    assert top is not None
    real = mask.bool()
    assert torch.allclose(adapter.final_norm(top.full_out)[real], final[real], atol=1e-5)
    # the suffix run with δ = 0 gives the same states from the lookup token on
    sel = torch.arange(len(rows))
    with torch.no_grad():
        out = top.run(sel, torch.zeros(len(rows), llama.config.hidden_size))
    for b in range(len(rows)):
        n = int(mask[b].sum()) - int(lookup[b])
        assert torch.allclose(out[b, :n], top.full_out[b, lookup[b] : lookup[b] + n], atol=1e-5)


def test_bf16_shadows_reach_the_edit_like_fp32(llama, tokenizer, corpus, tmp_path):
    facts = [stored(*f) for f in FACTS[:3]]
    before = [target_logprob(llama, tokenizer, f.fact.prompt, f.fact.target) for f in facts]
    out = {}
    for dtype in ("float32", "bfloat16"):
        s = make_strategy(llama, tokenizer, corpus, tmp_path, name=dtype, train_dtype=dtype)
        s.apply(facts)
        s.attach()
        out[dtype] = ([target_logprob(llama, tokenizer, f.fact.prompt, f.fact.target) for f in facts], s.telemetry[-1]["z_loss"],
                      torch.stack([s.z_cache[f.id] for f in facts]))
        s.detach()
    for dtype, (after, _, _) in out.items():
        assert all(a > b + 0.5 for a, b in zip(after, before)), (dtype, before, after)
    (lp32, loss32, z32), (lp16, loss16, z16) = out["float32"], out["bfloat16"]
    assert loss16 == pytest.approx(loss32, rel=0.2, abs=0.05)
    assert ((z16 - z32).norm(dim=1) / z32.norm(dim=1)).max() < 0.05


def test_train_dtype_is_validated():
    with pytest.raises(ValueError):
        LyapLockConfig(train_dtype="float16")
    with pytest.raises(ValueError):
        ValueParams(train_dtype="half")


def test_telemetry_rows_report_drift_and_replays(llama, tokenizer, corpus, tmp_path):
    from editmem.eval.report import telemetry_section

    facts = [stored(*f) for f in FACTS[:3]]
    s = make_strategy(llama, tokenizer, corpus, tmp_path)
    s.apply(facts[:2])
    s.apply(facts[2:])
    rows = s.telemetry_rows()
    assert [r["write"] for r in rows] == [0, 1] and [r["facts"] for r in rows] == [2, 1]
    assert rows[1]["D_sum"] == pytest.approx(s.telemetry[-1]["D_sum"]) and rows[1]["D_sum"] > rows[0]["D_sum"] > 0
    drift = sum(float((s.edited[l].double() - s.W0[l].double()).norm()) ** 2 for l in s.layers) ** 0.5
    assert rows[1]["drift_fro"] == pytest.approx(drift, rel=1e-6)
    assert rows[0]["update_fro"] == pytest.approx(rows[0]["drift_fro"], rel=1e-6)  # the first write starts at W0
    assert rows[0]["w_used_max"] == 1.0 and rows[0]["z_loss"] is not None

    s.remove([facts[0].id], active=facts[1:])
    rows = s.telemetry_rows()
    assert [r["write"] for r in rows] == [0, 1, "replay"] and rows[-1]["facts"] == -1
    markdown = "\n".join(telemetry_section(rows))
    assert "## Strategy telemetry" in markdown and f"{rows[1]['D_sum']:.4g}" in markdown and "| replay |" in markdown


def test_eval_report_carries_the_strategy_telemetry(tiny_loaded, corpus, tmp_path):
    import json

    from editmem.eval.report import REPORT_FILE
    from editmem.eval.runner import run_eval

    records = [{"subject": f"Entity{i}", "src": f"Where was Entity{i} born?", "rephrase": f"Entity{i} was born in which town?",
                "alt": f"Town {i}", "answers": ["Nowhere"], "loc": "nq question: who wrote emma", "loc_ans": "Jane Austen",
                "case_id": i} for i in range(3)]
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(records))
    config = dict(layers=[0, 1], stats_corpus=corpus, v_num_grad_steps=4, mom2_update_weight=5.0)  # a 2-layer model
    result = run_eval("lyaplock", str(path), n=3, config=config, model=tiny_loaded, generation=False, fluency=False,
                      out_dir=tmp_path / "out", store_dir=tmp_path / "store")
    rows = result.strategy_telemetry
    assert [r["write"] for r in rows] == [0, 1, 2] and all(r["facts"] == 1 for r in rows)
    assert rows[0]["D_sum"] < rows[1]["D_sum"] < rows[2]["D_sum"]
    report = (tmp_path / "out" / REPORT_FILE).read_text()
    assert "## Strategy telemetry" in report and f"{rows[2]['D_sum']:.4g}" in report
