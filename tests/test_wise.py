"""The ``wise`` strategy on tiny random models (spec WISE.md §13): no download, CPU, seconds."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from editmem.facts import Fact, StoredFact, fact_id_for
from editmem.memory.artifacts import ArtifactStore
from editmem.strategies import get_strategy
from editmem.strategies.wise import WISEConfig, WISEStrategy, ties_merge, trim
from editmem.strategies.wise.routing import hinge_mean, margin_loss, reduce_rows

FACTS = [
    ("Paris", "Paris is the capital of", "Italy"),
    ("Toyota", "Toyota was founded in", "Sweden"),
    ("Lionel Messi", "Lionel Messi plays the sport of", "cricket"),
    ("Danielle Darrieux", "The mother tongue of Danielle Darrieux is", "English"),
    ("the Eiffel Tower", "Where is the Eiffel Tower located?", "Rome"),
]
UNRELATED = "The weather report for tomorrow says light rain over the northern hills."


def stored(subject: str, prompt: str, target: str) -> StoredFact:
    return StoredFact(fact=Fact(subject=subject, prompt=prompt, target=target), id=fact_id_for(subject, prompt, target))


FS = [stored(*f) for f in FACTS]


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
def pool(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("pool") / "pool.txt"
    path.write_text("nq question: who wrote the declaration of independence Thomas Jefferson\nnq question: when did the first world war start 1914\nnq question: how many planets are in the solar system eight\nnq question: what is the largest ocean on earth Pacific\nnq question: who painted the mona lisa Leonardo da Vinci\nnq question: what is the boiling point of water 100 degrees")
    return str(path)


def make(model, tokenizer, pool, tmp_path, name="s", **overrides) -> WISEStrategy:
    cfg = {"save_freq": 2, "merge_freq": 4, "n_iter": 8, "n_templates": 3, "act_margin": [1.0, 3.0, 1.0], "irrelevant_pool": pool,
               "n_irrelevant": 2, "act_ratio": 0.88}
    cfg.update(overrides)
    return WISEStrategy(model, tokenizer, WISEConfig(**cfg), ArtifactStore(tmp_path / name), None)


def ids_of(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([tokenizer(text)["input_ids"]])


def forward(strategy, tokenizer, text: str):
    with strategy.forward_call() as call, torch.no_grad():
        logits = strategy.model(input_ids=ids_of(tokenizer, text)).logits
    return logits, call.traces


def edit_text(f: StoredFact) -> str:
    return f.fact.prompt + " " + f.fact.target


# -- config and registry -----------------------------------------------------------------------------------
def test_registered_and_config_validation():
    config_cls, strategy_cls = get_strategy("wise")
    assert config_cls is WISEConfig and strategy_cls is WISEStrategy and not strategy_cls.parametric
    default, paper = WISEConfig(), WISEConfig(preset="paper")
    assert default.act_margin == [10.0, 20.0, 10.0] and (default.save_freq, default.merge_freq, default.n_iter) == (100, 200, 40)
    assert paper.act_margin == [5.0, 20.0, 10.0] and (paper.save_freq, paper.merge_freq, paper.n_iter) == (500, 1000, 70)
    assert (paper.act_ratio, paper.n_templates, paper.n_irrelevant) == (0.88, 11, 1)
    assert (default.act_ratio, default.n_templates, default.n_irrelevant) == (0.8, 6, 8)
    assert WISEConfig.from_dict(default.to_dict()) == default
    for bad in ({"mode": "both"}, {"save_freq": 3, "merge_freq": 4}, {"act_margin": [1, 2]}, {"mask_ratio": 0},
                {"n_templates": 12}, {"preset": "7b"}, {"decay_scope": "some"}):
        with pytest.raises(ValueError):
            WISEConfig(**bad)
    assert WISEConfig.parse_overrides(["act_ratio=0.8", "act_margin=10,25,10", "mode=retrieve"]) == {
        "act_ratio": 0.8, "act_margin": [10.0, 25.0, 10.0], "mode": "retrieve"}
    assert "act_ratio" not in default.artifact_fields()  # a threshold change does not invalidate trained shards


# -- losses and reductions -------------------------------------------------------------------------------------
def test_hinge_mean_averages_only_violations():
    assert float(hinge_mean(torch.tensor([-1.0, 2.0, 4.0]))) == pytest.approx(3.0)
    assert float(hinge_mean(torch.tensor([-1.0, 0.0]))) == 0.0
    loss, parts = margin_loss(torch.tensor([25.0, 18.0]), torch.tensor([12.0]), [10.0, 20.0, 10.0])
    # gap: 12 - 25 + 10 < 0, 12 - 18 + 10 = 4 -> 4; out: 2; in: 20 - 18 = 2
    assert parts == {"gap": 4.0, "out": 2.0, "in": 2.0} and float(loss) == pytest.approx(8.0)


def test_reduction_is_a_masked_mean_and_max_for_long_rows():
    d = torch.tensor([[1.0, 3.0, 100.0], [2.0, 4.0, 6.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert reduce_rows(d, mask).tolist() == [2.0, 4.0]  # padding never counts
    assert reduce_rows(d, mask, long_len=2).tolist() == [2.0, 6.0]  # 3 real tokens > 2: max


# -- Ties merge ---------------------------------------------------------------------------------------------------
def test_ties_unit_cases():
    base = torch.zeros(6)
    a = torch.tensor([1.0, 0.0, 2.0, 3.0, 0.0, 0.0])
    b = torch.tensor([0.0, 5.0, 4.0, -1.0, 0.0, -2.0])
    out = ties_merge(base, [a, b], [0.5, 0.5], 1.0)
    # disjoint supports -> union (entries 0, 1, 5); same sign -> mean (entry 2); opposite signs -> the larger |sum|
    # wins and only the agreeing shard counts (entry 3: 3 - 1 > 0 -> 3); zeros never vote (entry 4)
    assert out.tolist() == [1.0, 5.0, 3.0, 3.0, 0.0, -2.0]
    # one shard merged with an all-zero shard is returned unchanged (no division by k: pitfall 7)
    assert torch.equal(ties_merge(base, [a, torch.zeros(6)], [0.5, 0.5], 1.0), a)
    # the later-merge weighting: 0.4 for the new shard, 0.6 for the old consolidated memory
    old, new = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([2.0, -3.0, 4.0])
    merged = ties_merge(torch.zeros(3), [new, old], [0.4, 0.6], 1.0)
    assert merged.tolist() == pytest.approx([0.4 * 2 + 0.6 * 1, -3.0, 4.0])  # -1.2 + 0.6 < 0: the new value wins alone
    # trimming keeps the largest magnitudes (one global top-k) and works relative to the base
    assert trim(torch.tensor([0.1, -5.0, 2.0, 0.3]), 0.5).tolist() == [0.0, -5.0, 2.0, 0.0]
    shifted = ties_merge(torch.ones(6), [a + 1, b + 1], [0.5, 0.5], 1.0)
    assert torch.allclose(shifted, out + 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-4, 4, allow_nan=False).map(lambda x: 0.0 if abs(x) < 0.5 else x), min_size=5, max_size=5),
                min_size=1, max_size=4),
       st.sampled_from([1.0, 0.6]))
def test_ties_properties(rows, density):
    base = torch.zeros(5, dtype=torch.float64)
    shards = [torch.tensor(r, dtype=torch.float64) for r in rows]
    n = len(shards)
    out = ties_merge(base, shards, [1.0 / n] * n, density)
    trimmed = [trim(s, density) for s in shards]
    stack = torch.stack(trimmed)
    for j in range(5):
        vals = stack[:, j]
        nz = vals[vals != 0]
        if nz.numel() == 0:
            assert out[j] == 0  # no shard touched it
            continue
        agree = nz[torch.sign(nz) == (1.0 if float(vals.sum()) >= 0 else -1.0)]
        if agree.numel():
            assert float(agree.min()) - 1e-9 <= float(out[j]) <= float(agree.max()) + 1e-9  # a mean of agreeing values
    # order of the shards does not matter; n copies of one shard merge into that (trimmed) shard
    assert torch.allclose(ties_merge(base, shards[::-1], [1.0 / n] * n, density), out)
    assert torch.allclose(ties_merge(base, [shards[0]] * 3, [1 / 3] * 3, density), trimmed[0])


# -- the strategy -----------------------------------------------------------------------------------------------
def test_no_edits_is_identity(llama, tokenizer, pool, tmp_path):
    s = make(llama, tokenizer, pool, tmp_path)
    with torch.no_grad():
        base = llama(input_ids=ids_of(tokenizer, UNRELATED)).logits
    s.attach()
    logits, traces = forward(s, tokenizer, UNRELATED)
    assert torch.equal(logits, base) and len(traces) == 1 and not traces[0].fired
    s.detach()


def test_one_edit_W0_untouched_mask_respected_and_routing(llama, tokenizer, pool, tmp_path):
    s = make(llama, tokenizer, pool, tmp_path)
    original = s.adapter.mlp_out_weight(s.layer).detach().clone()
    with torch.no_grad():
        base_unrelated = llama(input_ids=ids_of(tokenizer, UNRELATED)).logits
    s.apply([FS[0]])
    s.attach()
    assert torch.equal(s.adapter.mlp_out_weight(s.layer), original) and torch.equal(s.W0, original)  # pitfall 3
    shard = s.memory_state.shards[0]
    delta = shard.weight - s.W0
    mask = s.memory_state.mask(0)
    assert bool((delta != 0).any()) and not bool((delta[~mask] != 0).any())  # only masked-in entries moved
    assert 0.1 < float(mask.float().mean()) < 0.3
    _, traces = forward(s, tokenizer, edit_text(FS[0]))
    assert traces[0].fired and traces[0].fact_ids == [FS[0].id]
    details = traces[0].details
    assert details["memory"] == "shard:0" and details["score"] >= details["epsilon"]
    logits, traces = forward(s, tokenizer, UNRELATED)
    assert not traces[0].fired and traces[0].details["score"] < traces[0].details["epsilon"]
    assert torch.equal(logits, base_unrelated)  # main memory: bit-identical
    assert s.explain(FS[0].fact.prompt).fired
    s.detach()


def test_decay_scope_all_leaks_into_frozen_entries(llama, tokenizer, pool, tmp_path):
    """The reference's SGD weight decay also shrinks masked-out entries; ``decay_scope="all"`` reproduces it."""
    s = make(llama, tokenizer, pool, tmp_path, decay_scope="all", weight_decay=1e-2)
    s.apply([FS[0]])
    delta = s.memory_state.shards[0].weight - s.W0
    assert bool((delta[~s.memory_state.mask(0)] != 0).any())


def test_epsilon_tracks_the_minimum_and_never_increases(llama, tokenizer, pool, tmp_path):
    s = make(llama, tokenizer, pool, tmp_path, save_freq=1, merge_freq=2)
    eps = []
    for f in FS[:4]:
        s.apply([f])
        eps.append(s.telemetry[-1]["epsilon"])
        acts = [r.act for r in s.memory_state.facts.values()]
        assert eps[-1] == pytest.approx(s.config.act_ratio * min(acts))
    assert all(b <= a for a, b in itertools.pairwise(eps))


def test_merging_with_tiny_save_freq(llama, tokenizer, pool, tmp_path):
    s = make(llama, tokenizer, pool, tmp_path, save_freq=1, merge_freq=2)
    for f in FS[:5]:
        s.apply([f])
    mem = s.memory_state
    assert mem.groups == [[0, 1], [2, 3]] and [c.name for c in mem.candidates(0.88)] == ["merged", "shard:4"]
    W = [mem.shards[i].weight for i in range(4)]
    first = ties_merge(s.W0, W[:2], [0.5, 0.5], 0.53)
    expected = ties_merge(s.W0, W[2:4] + [first], [0.2, 0.2, 0.6], 0.53)
    assert torch.equal(mem.merged, expected)
    # shards all start from W0 (pitfall 6): each delta lies inside its own mask
    for i in range(4):
        assert not bool(((W[i] - s.W0) != 0)[~mem.mask(i)].any())
    s.consolidate()
    assert mem.groups[-1] == [4] and [c.name for c in mem.candidates(0.88)] == ["merged"]
    s.attach()
    _, traces = forward(s, tokenizer, edit_text(FS[4]))
    assert traces[0].details["candidates"].keys() == {"merged"}
    s.detach()


def test_retrieve_mode_routes_each_topic_to_its_memory(llama, tokenizer, pool, tmp_path):
    s = make(llama, tokenizer, pool, tmp_path, mode="retrieve", save_freq=1, merge_freq=1, n_iter=12)
    s.apply(FS[:2])
    assert [c.name for c in s.memory_state.candidates(0.88)] == ["memory:0", "memory:1"]
    s.attach()
    for i in range(2):
        _, traces = forward(s, tokenizer, edit_text(FS[i]))
        assert traces[0].details["memory"] == f"memory:{i}" and traces[0].details["shards"] == [i]
        assert traces[0].fact_ids == [FS[i].id]
    s.detach()


def test_sticky_routing_through_cached_generation(llama, tokenizer, pool, tmp_path):
    s = make(llama, tokenizer, pool, tmp_path)
    s.apply([FS[0]])
    s.attach()
    prompt = edit_text(FS[0])
    tf_logits, tf_traces = forward(s, tokenizer, prompt)
    assert tf_traces[0].fired
    with s.forward_call() as call, torch.no_grad():
        out = llama.generate(input_ids=ids_of(tokenizer, prompt), max_new_tokens=4, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.eos_token_id)
    assert len(call.traces) == 1 and call.traces[0].fired  # decided once, at prefill
    assert torch.allclose(out.scores[0][0], tf_logits[0, -1], atol=1e-4)
    # every decode step used the side memory: equal to uncached forwards with the side memory forced on
    seq = out.sequences
    with s.forward_call() as whole, torch.no_grad():
        full = s.model(input_ids=seq[:, :-1]).logits  # one uncached forward, routed to the side memory too
    assert whole.traces[0].fired
    for step in range(1, 4):
        assert torch.allclose(out.scores[step][0], full[0, seq.shape[1] - 5 + step], atol=1e-3)
    s.detach()


def test_batched_rows_are_routed_independently(llama, tokenizer, pool, tmp_path):
    from editmem.tokens import pad_batch

    s = make(llama, tokenizer, pool, tmp_path)
    s.apply([FS[0]])
    s.attach()
    texts = [edit_text(FS[0]), UNRELATED]
    single = [forward(s, tokenizer, t) for t in texts]
    ids, mask = pad_batch([tokenizer(t)["input_ids"] for t in texts], tokenizer.eos_token_id, side="left")
    with s.forward_call() as call, torch.no_grad():
        logits = llama(input_ids=ids, attention_mask=mask).logits
    assert [t.fired for t in call.traces] == [True, False]
    for row, (lg, _) in enumerate(single):
        n = lg.shape[1]
        assert torch.allclose(logits[row, -n:], lg[0], atol=1e-4)
    s.detach()


@pytest.mark.parametrize("where", ["open", "closed"])
def test_forget_equals_never_edited(llama, tokenizer, pool, tmp_path, where):
    if where == "open":  # the fact sits in the open shard
        a = make(llama, tokenizer, pool, tmp_path, name="a")
        a.apply(FS[:3])
        a.remove([FS[2].id], active=FS[:2])
        b = make(llama, tokenizer, pool, tmp_path, name="b")
        b.apply(FS[:2])
    else:  # the fact sits in a closed shard that was already merged
        a = make(llama, tokenizer, pool, tmp_path, name="a")
        a.apply(FS[:4])
        assert a.memory_state.groups == [[0, 1]]
        a.remove([FS[2].id], active=[FS[0], FS[1], FS[3]])
        b = make(llama, tokenizer, pool, tmp_path, name="b")
        b.apply([FS[0], FS[1], FS[3]])
        b.consolidate()
    ta, sa = a.state_dict()
    tb, sb = b.state_dict()
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert a.applied_ids() == b.applied_ids() and sa["groups"] == sb["groups"]
    assert a.memory_state.act_min() == b.memory_state.act_min()
    seen = []
    for s in (a, b):  # one strategy on the shared model at a time
        s.attach()
        seen.append([forward(s, tokenizer, edit_text(f)) for f in FS[:4]])
        s.detach()
    for (la, tra), (lb, trb) in zip(*seen):
        assert torch.equal(la, lb) and tra[0].fired == trb[0].fired


def test_forget_replay_equals_a_stream_without_the_fact(llama, tokenizer, pool, tmp_path):
    a = make(llama, tokenizer, pool, tmp_path, name="a", forget="replay")
    a.apply(FS[:4])
    a.remove([FS[1].id], active=[FS[0], FS[2], FS[3]])
    b = make(llama, tokenizer, pool, tmp_path, name="b", forget="replay")
    b.apply([FS[0], FS[2], FS[3]])
    ta, tb = a.state_dict()[0], b.state_dict()[0]
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_reopen_restores_without_retraining(llama, tokenizer, pool, tmp_path, monkeypatch):
    s = make(llama, tokenizer, pool, tmp_path, name="store", save_freq=1, merge_freq=2)
    s.apply(FS[:3])
    s.save()
    before = s.state_dict()[0]
    again = make(llama, tokenizer, pool, tmp_path, name="store", save_freq=1, merge_freq=2)
    monkeypatch.setattr(again, "_train_into", lambda *a, **k: pytest.fail("reopen retrained an edit"))
    assert again.load() == {f.id for f in FS[:3]}
    after = again.state_dict()[0]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    s.attach()
    ref, _ = forward(s, tokenizer, edit_text(FS[2]))
    s.detach()
    again.attach()
    got, traces = forward(again, tokenizer, edit_text(FS[2]))
    assert torch.equal(ref, got) and traces[0].fired
    again.detach()
    # another threshold on reopen keeps the shards (a runtime field); another layer rebuilds
    assert make(llama, tokenizer, pool, tmp_path, name="store", save_freq=1, merge_freq=2, act_ratio=0.5).load() is not None
    assert make(llama, tokenizer, pool, tmp_path, name="store", save_freq=1, merge_freq=2, layer=1).load() is None


def test_detach_restores_the_base_model_bit_for_bit(llama, tokenizer, pool, tmp_path):
    texts = [edit_text(FS[0]), UNRELATED]
    with torch.no_grad():
        base = [llama(input_ids=ids_of(tokenizer, t)).logits for t in texts]
    s = make(llama, tokenizer, pool, tmp_path)
    s.apply(FS[:3])
    s.attach()
    edited, _ = forward(s, tokenizer, texts[0])
    assert not torch.equal(edited, base[0])
    s.detach()
    with torch.no_grad():
        assert all(torch.equal(llama(input_ids=ids_of(tokenizer, t)).logits, b) for t, b in zip(texts, base))
    with s.disabled():
        pass
    assert len(s._hooks) == 0


def test_gpt2_conv1d_layout(tokenizer, pool, tmp_path):
    model = _tiny("gpt2", tokenizer)
    original = model.transformer.h[2].mlp.c_proj.weight.detach().clone()
    s = make(model, tokenizer, pool, tmp_path)
    assert s.layer == 2
    s.apply([FS[0]])
    s.attach()
    _, traces = forward(s, tokenizer, edit_text(FS[0]))
    assert traces[0].fired
    s.detach()
    assert torch.equal(model.transformer.h[2].mlp.c_proj.weight, original)


def test_telemetry_and_chat_span(llama, tokenizer, pool, tmp_path):
    s = make(llama, tokenizer, pool, tmp_path)
    s.apply(FS[:2])
    s.remove([FS[0].id], active=FS[1:2])
    rows = s.telemetry_rows()
    assert [r["write"] for r in rows[:2]] == [0, 1] and rows[-1] == {"write": "replay", "facts": -1}
    assert all(r["steps"] >= 1 and r["epsilon"] > 0 for r in rows[:2])
    # the chat template's fixed tokens are not scored: only the user's words
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Toyota was founded in"}], tokenize=False,
                                         add_generation_prompt=True)
    ids = ids_of(tokenizer, text)
    mask = s._vote_mask(ids, torch.ones_like(ids), ids.shape[1])[0]
    assert tokenizer.decode(ids[0][mask]).strip() == "Toyota was founded in"


# -- the chat-templated edit row ---------------------------------------------------------------------------
def _chat_head(tokenizer, prompt: str) -> torch.Tensor:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def test_chat_row_is_scored_on_the_span_routed_at_inference(llama, tokenizer, pool, tmp_path):
    from editmem.strategies.wise.training import build_batch
    from editmem.tokens import encode_chat_answer

    assert WISEConfig().chat_context is True and WISEConfig(preset="paper").chat_context is False
    s = make(llama, tokenizer, pool, tmp_path)
    f = FS[1]
    batch = build_batch(tokenizer, ["{}", "Q: {}"], f.fact.prompt, f.fact.target, [UNRELATED], 30, chat=True,
                        markers=s._chat_markers())
    r = batch.chat_row
    assert r == 2 and batch.ids.shape[0] == 3
    enc = encode_chat_answer(tokenizer, f.fact.prompt, f.fact.target, end_turn=True)
    labels = batch.label_ids[batch.label_rows == r].tolist()
    assert labels == enc.target_ids  # the answer right after the assistant header, then the end of the turn
    assert tokenizer.decode(labels[:-1]).strip() == f.fact.target and labels[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    # the edit-time score of the chat row averages over exactly the tokens the router scores on the chat request
    head = _chat_head(tokenizer, f.fact.prompt)
    vote = s._vote_mask(head, torch.ones_like(head), head.shape[1])[0]
    assert torch.equal(batch.score_mask[r, : head.shape[1]], vote) and not bool(batch.score_mask[r, head.shape[1]:].any())
    assert tokenizer.decode(head[0][vote]).strip() == f.fact.prompt
    # raw rows are scored on every real token, as a raw input is at inference
    assert torch.equal(batch.score_mask[:r], batch.attn[:r].bool())
    # routing_span="all" (no markers): the chat request's whole prompt, never the answer
    whole = build_batch(tokenizer, ["{}"], f.fact.prompt, f.fact.target, [UNRELATED], 30, chat=True, markers=None)
    assert whole.score_mask[1].nonzero().flatten().tolist() == list(range(head.shape[1]))
    raw = build_batch(tokenizer, ["{}"], f.fact.prompt, f.fact.target, [UNRELATED], 30, chat=False)
    assert raw.chat_row is None and raw.ids.shape[0] == 1


def test_chat_row_makes_the_chat_answer_the_target(llama, tokenizer, pool, tmp_path):
    """Trained on raw rows only, the side memory barely moves the chat-templated answer; with the chat row it fires
    on the chat request (routed on the user turn) and the answer after the assistant header becomes the target."""
    from editmem.tokens import encode_chat_answer

    f = FS[1]
    enc = encode_chat_answer(tokenizer, f.fact.prompt, f.fact.target, end_turn=False)
    ids = torch.tensor([enc.input_ids])
    target = torch.tensor(enc.target_ids)
    nll, fired = {}, {}
    for chat in (False, True):
        s = make(llama, tokenizer, pool, tmp_path, f"chat{chat}", chat_context=chat, n_iter=20)
        s.apply([f])
        s.attach()
        with s.forward_call() as call, torch.no_grad():
            logits = s.model(input_ids=ids).logits[0, enc.start - 1 : -1]
        nll[chat] = float(torch.nn.functional.cross_entropy(logits, target))
        fired[chat] = call.traces[0].fired
        s.detach()
    assert fired[True]  # without the chat row the chat request falls below ε on this model (fired[False] is False)
    assert nll[True] < nll[False] - 2.0
