"""Tests of the ``llp`` strategy (Layer-Level Prompting).

Most tests run on tiny random Llama / GPT-2 models built locally (no download) with the SmolLM2 tokenizer; the
``embedded`` ones use SmolLM2-135M-Instruct. No test asserts on timings.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from editmem.facts import Fact, StoredFact
from editmem.memory.artifacts import ArtifactStore
from editmem.strategies import get_strategy
from editmem.strategies.llp import LLPConfig, LLPStrategy
from editmem.tokens import encode_prompt_target, pad_batch

FACT_A = Fact(subject="Watts Humphrey", prompt="What university did Watts Humphrey attend?", target="University of Michigan",
              rephrases=["What university did Watts Humphrey take part in?"])
FACT_B = Fact(subject="Lahti Town Hall", prompt="Who was the architect of Lahti Town Hall?", target="Eliel Saarinen")
FACT_C = Fact(subject="Gerald Kelly", prompt="Which school did Gerald Kelly go to?", target="Eton College")
FACT_A2 = Fact(subject="Watts Humphrey", prompt="In which year was Watts Humphrey born?", target="1927")
UNRELATED = "The capital city of France is famous for the Eiffel tower and"

TINY = dict(retrieval_layers=[0, 1], injection_layer=2, value_steps=8, value_lr=0.05, value_weight_decay=0.0, key_lr=0.005, t_layer=0.7,
            t_vote=2, n_prefixes=2, prefix_tokens=4, prefix_bank=3, generic_samples=4, generic_tokens=6,
            query_gate="off")  # the key vote alone (the paper's mechanism); the query gate: tests/test_llp_gate.py


def stored(fact: Fact) -> StoredFact:
    return StoredFact(fact=fact, id=fact.id)


def _tiny_llama(tokenizer, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


def _tiny_gpt2(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=4, n_head=4, n_positions=256,
                        attn_implementation="sdpa", tie_word_embeddings=False)
    return GPT2LMHeadModel(config).eval()


def _strategy(model, tokenizer, tmp_path, **overrides) -> LLPStrategy:
    config = LLPConfig(**{**TINY, **overrides})
    strategy = LLPStrategy(model, tokenizer, config, ArtifactStore(tmp_path / "artifacts"))
    strategy.attach()
    return strategy


def _logits(model, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def _target_acc(model, tokenizer, prompt: str, target: str) -> float:
    pt = encode_prompt_target(tokenizer, prompt, target)
    ids = torch.tensor([pt.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    pred = logits[pt.start - 1 : len(pt.input_ids) - 1].argmax(-1)
    return float((pred == ids[0, pt.start :]).float().mean())


def _greedy(model, tokenizer, prompts: list[str], *, use_cache: bool = True, n: int = 6) -> list[list[int]]:
    seqs = [tokenizer(p)["input_ids"] for p in prompts]
    ids, mask = pad_batch(seqs, tokenizer.pad_token_id, side="left")
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, use_cache=use_cache,
                             pad_token_id=tokenizer.pad_token_id)
    return out[:, ids.shape[1] :].tolist()


# ---------------------------------------------------------------------------------------------------- config
def test_registered_and_config_validation():
    config_cls, strategy_cls = get_strategy("llp")
    assert config_cls is LLPConfig and strategy_cls is LLPStrategy
    with pytest.raises(ValueError, match="injection_layer"):
        LLPConfig(retrieval_layers=[0, 1, 2, 8], injection_layer=8)
    with pytest.raises(ValueError, match="t_vote"):
        LLPConfig(retrieval_layers=[0, 1, 2], injection_layer=5, t_vote=4)
    with pytest.raises(ValueError, match="preset"):
        LLPConfig(preset="nope")
    with pytest.raises(TypeError):
        LLPConfig.from_dict({"nonsense": 1})


def test_defaults_derive_from_layer_count():
    default = LLPConfig().resolve(30)
    assert default.retrieval_layers == list(range(6, 14)) and default.injection_layer == 20 and default.t_vote == 6
    assert default.t_layer == 0.85 and default.key_objective == "infonce+generic_hinge"
    assert (default.partial_subject_weight, default.tie_break, default.key_prefixes, default.key_bare_context) == (10.0, "score", 6, True)
    paper = LLPConfig.paper().resolve(32)
    assert paper.retrieval_layers == list(range(8)) and paper.injection_layer == 10 and paper.t_vote == 4
    assert (paper.t_layer, paper.value_lr, paper.key_lr, paper.key_objective) == (0.7, 5e-2, 5e-3, "infonce")
    assert (paper.partial_subject_weight, paper.tie_break, paper.key_prefixes, paper.key_bare_context) == (0.0, "first", 3, False)
    small = LLPConfig().resolve(4)
    assert max(small.retrieval_layers) < small.injection_layer < 4
    assert LLPConfig(t_layer=0.5).resolve(30).t_layer == 0.5  # overridable
    assert "t_layer" not in LLPConfig().artifact_fields() and "tie_break" not in LLPConfig().artifact_fields()  # runtime-only


# ---------------------------------------------------------------------------------------------------- tiny model
@pytest.fixture
def tiny(tokenizer, tmp_path):
    model = _tiny_llama(tokenizer)
    strategy = _strategy(model, tokenizer, tmp_path)
    yield model, strategy
    strategy.detach()


def test_empty_memory_and_no_hit_are_bit_identical(tiny, tokenizer):
    model, strategy = tiny
    with strategy.disabled():
        base = _logits(model, tokenizer, UNRELATED)
        base_prompt = _logits(model, tokenizer, FACT_A.prompt)
    assert torch.equal(_logits(model, tokenizer, UNRELATED), base)  # empty memory
    strategy.apply([stored(FACT_A)])
    with strategy.forward_call() as call:
        out = _logits(model, tokenizer, UNRELATED)
    assert not call.traces[0].fired
    assert torch.equal(out, base)  # below threshold: exactly the base forward
    with strategy.forward_call() as call:
        edited = _logits(model, tokenizer, FACT_A.prompt)
    assert call.traces[0].fact_ids == [FACT_A.id]
    assert edited.shape == base_prompt.shape  # the b value positions are dropped
    assert not torch.allclose(edited, base_prompt)


def test_retrieval_compares_layer_outputs(tiny, tokenizer):
    """A key equal to ``hidden_states[r+1]`` (output of layer r) at the subject token scores cos = 1 at every layer of
    R on the bare prompt (catches hidden_states[r] / [r+1] mix-ups)."""
    model, strategy = tiny
    strategy.apply([stored(FACT_A)])
    assert strategy.explain(FACT_A.prompt).fact_ids == [FACT_A.id]
    from editmem.tokens import subject_last_token_index

    ids = tokenizer(FACT_A.prompt, return_tensors="pt")["input_ids"]
    idx = subject_last_token_index(tokenizer, FACT_A.prompt, FACT_A.subject)
    with strategy.disabled(), torch.no_grad():
        states = model(input_ids=ids, output_hidden_states=True).hidden_states
    entry = next(iter(strategy._entries.values()))
    entry.key = torch.stack([states[r + 1][0, idx] for r in strategy.cfg.retrieval_layers])
    strategy._invalidate()
    trace = strategy.explain(FACT_A.prompt)
    assert set(trace.details["layer_scores"]) == {"0", "1"}
    for scores in trace.details["layer_scores"].values():
        assert scores[0][1] > 0.9999
    assert trace.fact_ids == [FACT_A.id] and trace.details["vote_count"] == 2


def test_forget_restores_base_and_readd_fires(tiny, tokenizer):
    model, strategy = tiny
    with strategy.disabled():
        base = _logits(model, tokenizer, FACT_A.prompt)
    strategy.apply([stored(FACT_A)])
    assert not torch.allclose(_logits(model, tokenizer, FACT_A.prompt), base)
    strategy.remove([FACT_A.id], active=[])
    assert strategy.applied_ids() == set()
    assert torch.equal(_logits(model, tokenizer, FACT_A.prompt), base)
    strategy.apply([stored(FACT_A)])  # re-add: fires again
    with strategy.forward_call() as call:
        _logits(model, tokenizer, FACT_A.prompt)
    assert call.traces[0].fact_ids == [FACT_A.id]


def test_cached_generation_equals_uncached_with_frozen_decision(tiny, tokenizer):
    model, strategy = tiny
    strategy.apply([stored(FACT_A)])
    with strategy.forward_call() as call:
        cached = _greedy(model, tokenizer, [FACT_A.prompt], use_cache=True)
    assert call.traces[0].fired
    # uncached reference: re-run the full sequence each step, with the decision frozen to the same entry
    ids = tokenizer(FACT_A.prompt)["input_ids"]
    n_prompt = len(ids)
    tokens = list(ids)
    for _ in range(6):
        with strategy.query_positions([n_prompt]):  # retrieval on the prompt only = the prefill decision
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0, -1]
        tokens.append(int(logits.argmax()))
    assert cached[0] == tokens[n_prompt:]


def test_batched_generation_mixed_rows(tiny, tokenizer):
    model, strategy = tiny
    strategy.apply([stored(FACT_A), stored(FACT_B)])
    prompts = [UNRELATED, FACT_A.prompt, "Hello there, how", FACT_B.prompt]
    with strategy.forward_call() as call:
        batched = _greedy(model, tokenizer, prompts)
    traces = call.traces
    assert [t.fact_ids for t in traces] == [[], [FACT_A.id], [], [FACT_B.id]]
    singles = [_greedy(model, tokenizer, [p])[0] for p in prompts]
    assert batched == singles
    with strategy.disabled():
        base = [_greedy(model, tokenizer, [p])[0] for p in prompts]
    assert batched[0] == base[0] and batched[2] == base[2]
    assert batched[1] != base[1] or batched[3] != base[3]


def test_key_queries_include_the_bare_prompt(tokenizer, tmp_path):
    """``key_bare_context`` adds the prompt without a prefix to the key positives (a key fitted to prefixed
    contexts alone can miss the bare question); a subject on the first token is left out (attention sink)."""
    from editmem.strategies.llp import _FactRec

    model = _tiny_llama(tokenizer)
    fact = _FactRec(FACT_A.id, FACT_A.prompt, FACT_A.target)
    first = _FactRec("f", "Paris is the capital of", "France")
    for bare in (False, True):
        strategy = _strategy(model, tokenizer, tmp_path / str(bare), key_prefixes=2, key_bare_context=bare)
        assert strategy._key_queries(FACT_A.subject, [fact], seed=3).shape[1] == 2 + bare
        assert strategy._key_queries("Paris", [first], seed=3).shape[1] == 2
        strategy.detach()


def test_chat_value_context_ends_the_turn(tokenizer, tmp_path):
    """The chat-templated value context supervises the target, then (``value_chat_end_turn``) the template's
    end-of-turn token, so a greedy chat answer stops after the target; a template that puts no special token after
    the answer adds nothing."""
    import copy

    from editmem.strategies.llp import _FactRec
    from editmem.tokens import encode_chat_answer

    model = _tiny_llama(tokenizer)
    fact = _FactRec(FACT_A.id, FACT_A.prompt, FACT_A.target)
    answer = tokenizer(FACT_A.target, add_special_tokens=False)["input_ids"]
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for end in (False, True):
        strategy = _strategy(model, tokenizer, tmp_path / str(end), value_bare_context=True, value_chat_context=True,
                             value_chat_end_turn=end)
        contexts = strategy._value_contexts([fact], seed=3)
        ids, start, bare = contexts[-1]
        assert ids[start:] == answer + ([end_of_turn] if end else [])
        assert tokenizer.decode(ids[:start]).endswith("assistant\n")
        assert [c[2] for c in contexts] == [True] + [False] * (len(contexts) - 1)  # the bare string, flagged
        strategy.detach()
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                           "{% if add_generation_prompt %}assistant: {% endif %}")
    pt = encode_chat_answer(plain, FACT_A.prompt, FACT_A.target)
    assert pt.input_ids[pt.start :] == plain(FACT_A.target, add_special_tokens=False)["input_ids"]


def test_value_starts_from_the_bare_strings_states(tokenizer, tmp_path, monkeypatch):
    """Training reads the value initialisation from the bare strings' cached layer-z states; it equals the
    initialisation's own forward pass (:meth:`_value_init`), for an entry with two facts."""
    from editmem.strategies.llp import _FactRec

    model = _tiny_llama(tokenizer)
    strategy = _strategy(model, tokenizer, tmp_path, value_bare_context=True, value_chat_context=True, n_value_tokens=2)
    facts = [_FactRec(f.id, f.prompt, f.target) for f in (FACT_A, FACT_A2)]
    seen = {}
    loop = strategy._value_loop

    def spy(n_jobs, buckets, nctx, v0, *rest):
        seen["v0"] = v0.clone()
        return loop(n_jobs, buckets, nctx, v0, *rest)

    monkeypatch.setattr(strategy, "_value_loop", spy)
    strategy._train_values([(facts, 5)])
    assert torch.allclose(seen["v0"][0], strategy._value_init(facts), atol=1e-5)


@pytest.mark.parametrize("tie_break, winner", [("first", 0), ("score", 1)])
def test_vote_tie_break(tokenizer, tmp_path, tie_break, winner):
    """Two entries with equal votes: REF's rule takes the one voted first (layer 0's top slot); ``score`` takes the
    one whose voting similarities sum higher (layer 0 is token identity: a shared last word ties it there)."""
    from editmem.strategies.llp import _ForwardState

    model = _tiny_llama(tokenizer)
    strategy = _strategy(model, tokenizer, tmp_path, tie_break=tie_break)
    strategy.apply([stored(FACT_A), stored(FACT_B)])
    strategy._state = _ForwardState(attn2d=torch.ones(1, 3, dtype=torch.long), q_len=3, prefill=True)
    strategy._state.scores = {0: torch.tensor([[0.99, 0.90]]), 1: torch.tensor([[0.75, 0.98]])}
    with strategy.forward_call() as call:
        strategy._decide()
    trace = call.traces[0]
    assert trace.details["vote_count"] == 2
    assert trace.details["entry"] == strategy._order[winner]
    strategy.detach()


def test_partial_subject_hinge_moves_key_away_from_the_last_word(tokenizer, tmp_path):
    """With ``partial_subject_weight`` the key of "Watts Humphrey" ends less similar to "Humphrey" alone (what made
    keys fire on a subject's last word elsewhere) and still closest to its own subject states."""
    import torch.nn.functional as F

    from editmem.strategies.llp import _FactRec

    fact = _FactRec(FACT_A.id, FACT_A.prompt, FACT_A.target)
    cos = {}
    for weight in (0.0, 10.0):
        model = _tiny_llama(tokenizer)
        strategy = _strategy(model, tokenizer, tmp_path / f"w{weight}", key_lr=0.2, key_steps=32,
                             partial_subject_weight=weight, partial_subject_mu=0.3)
        key, _ = strategy._refine_key(FACT_A.subject, [fact], seed=7)
        partial = strategy._partial_queries(FACT_A.subject, [fact], seed=7)
        own = strategy._key_queries(FACT_A.subject, [fact], seed=7)
        kn = F.normalize(key, dim=-1)
        cos[weight] = (float(torch.einsum("md,mpd->mp", kn, F.normalize(partial, dim=-1)).mean()),
                       float(torch.einsum("md,mpd->mp", kn, F.normalize(own, dim=-1)).mean()))
        strategy.detach()
    assert strategy._partial_queries("Humphrey", [fact], seed=7) is None  # one-word subjects have no partial form
    (partial_off, own_off), (partial_on, own_on) = cos[0.0], cos[10.0]
    assert partial_on < partial_off - 0.02, cos
    assert own_on > partial_on, cos


def test_same_subject_shares_one_entry(tiny, tokenizer):
    model, strategy = tiny
    strategy.apply([stored(FACT_A)])
    strategy.apply([stored(FACT_A2)])
    entries = strategy.entries()
    assert len(entries) == 1 and set(entries[0]["facts"]) == {FACT_A.id, FACT_A2.id}
    strategy.remove([FACT_A.id], active=[stored(FACT_A2)])  # retrain the shared value without the retracted fact
    entries = strategy.entries()
    assert len(entries) == 1 and entries[0]["facts"] == [FACT_A2.id]
    with strategy.forward_call() as call:
        _logits(model, tokenizer, FACT_A2.prompt)
    assert call.traces[0].fact_ids == [FACT_A2.id]


def test_save_reload_restores_without_retraining(tiny, tokenizer, tmp_path, monkeypatch):
    model, strategy = tiny
    strategy.apply([stored(FACT_A), stored(FACT_B)])
    edited = _logits(model, tokenizer, FACT_B.prompt)
    strategy.save()
    strategy.detach()
    fresh = LLPStrategy(model, tokenizer, LLPConfig(**TINY), ArtifactStore(tmp_path / "artifacts"))
    monkeypatch.setattr(fresh, "_train_values", lambda *a, **k: pytest.fail("reload must not retrain"))
    assert fresh.load() == {FACT_A.id, FACT_B.id}
    fresh.attach()
    assert torch.equal(_logits(model, tokenizer, FACT_B.prompt), edited)
    fresh.detach()
    # another layout: the stored memory is refused, not silently reused
    other = LLPStrategy(model, tokenizer, LLPConfig(**{**TINY, "injection_layer": 3}), ArtifactStore(tmp_path / "artifacts"))
    assert other.load() is None  # config changed -> base class asks for a rebuild
    tensors, state = strategy.state_dict()
    with pytest.raises(ValueError, match="layout"):
        other.load_state_dict(tensors, state)


def test_chat_template_restricts_retrieval_to_user_turn(tiny, tokenizer):
    model, strategy = tiny
    strategy.apply([stored(FACT_A)])
    text = tokenizer.apply_chat_template([{"role": "user", "content": FACT_A.prompt}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    mask = strategy._query_mask(ids, torch.ones_like(ids), ids.shape[1])
    kept = tokenizer.decode(ids[0][mask[0]])
    assert "Watts Humphrey" in kept and "SmolLM" not in kept and "assistant" not in kept
    with torch.no_grad(), strategy.forward_call() as call:
        model(input_ids=ids)
    assert call.traces[0].fact_ids == [FACT_A.id]


def test_eager_attention_and_gpt2(tokenizer, tmp_path):
    for model, t_layer in ((_tiny_llama(tokenizer, attn="eager"), 0.7), (_tiny_gpt2(tokenizer), 0.4)):
        # random GPT-2 states carry their absolute position: prefixed keys match the bare prompt less closely
        strategy = _strategy(model, tokenizer, tmp_path / model.config.model_type, t_layer=t_layer)
        with strategy.disabled():
            base = _logits(model, tokenizer, UNRELATED)
        strategy.apply([stored(FACT_A)])
        assert torch.equal(_logits(model, tokenizer, UNRELATED), base)
        with strategy.forward_call() as call:
            _logits(model, tokenizer, FACT_A.prompt)
        assert call.traces[0].fact_ids == [FACT_A.id]
        cached = _greedy(model, tokenizer, [FACT_A.prompt, UNRELATED])
        assert cached == [_greedy(model, tokenizer, [p])[0] for p in (FACT_A.prompt, UNRELATED)]
        strategy.detach()


# ---------------------------------------------------------------------------------------------------- embedded
@pytest.mark.embedded
def test_embedded_edit_changes_answer_and_paraphrase(tmp_path, embedded):
    model, tok = embedded.model, embedded.tokenizer
    strategy = LLPStrategy(model, tok, LLPConfig(), ArtifactStore(tmp_path / "artifacts"))
    strategy.attach()
    try:
        with strategy.disabled():
            base_unrelated = _logits(model, tok, UNRELATED)
            assert _target_acc(model, tok, FACT_A.prompt, FACT_A.target) < 0.5
        strategy.apply([stored(FACT_A)])
        assert _target_acc(model, tok, FACT_A.prompt, FACT_A.target) == 1.0
        assert _target_acc(model, tok, FACT_A.rephrases[0], FACT_A.target) >= 0.66
        assert torch.equal(_logits(model, tok, UNRELATED), base_unrelated)
        strategy.remove([FACT_A.id], active=[])
        with strategy.forward_call() as call:
            _logits(model, tok, FACT_A.prompt)
        assert not any(t.fired for t in call.traces)  # an empty memory reports nothing and fires nothing
    finally:
        strategy.detach()


def test_keys_of_one_write_are_refined_against_the_earlier_ones(tokenizer, tmp_path):
    """A write with several new entries refines their keys in order, each against the stored keys and the write's
    earlier keys (they must not collide with each other either)."""
    import torch.nn.functional as F

    model = _tiny_llama(tokenizer)
    strategy = _strategy(model, tokenizer, tmp_path, key_steps=6)
    strategy.apply([stored(FACT_A)])
    strategy.apply([stored(FACT_B), stored(FACT_C)])
    first, *written = [strategy._entries[i] for i in strategy._order]
    negatives = F.normalize(first.key.float(), dim=-1).unsqueeze(1)
    for entry in written:
        key, _ = strategy._refine_key(entry.subject, entry.facts, entry.seed, negatives)
        assert torch.equal(entry.key, key)
        negatives = torch.cat([negatives, F.normalize(key.float(), dim=-1).unsqueeze(1)], dim=1)
    strategy.detach()


@pytest.mark.parametrize("train_dtype", ["float32", "bfloat16"])
def test_values_trained_together_equal_values_trained_alone(tokenizer, tmp_path, train_dtype):
    """One ``apply`` with several facts trains their values as one batch (length buckets, shared LM-head call); each
    value must come out as if its fact had been written alone (own vector, Adam state, early stop)."""
    from editmem.strategies.llp import _FactRec

    model = _tiny_llama(tokenizer)
    strategy = _strategy(model, tokenizer, tmp_path, train_dtype=train_dtype, value_stop_loss=2.0)
    jobs = [([_FactRec(f.id, f.prompt, f.target)], 11 + i) for i, f in enumerate((FACT_A, FACT_B, FACT_A2))]
    together = strategy._train_values(jobs)
    alone = [strategy._train_values([job])[0] for job in jobs]
    for (v_t, s_t), (v_a, s_a) in zip(together, alone):
        assert s_t["value_steps"] == s_a["value_steps"]
        tol = 1e-4 if train_dtype == "float32" else 2e-2
        assert torch.allclose(v_t, v_a, rtol=tol, atol=tol * float(v_a.abs().max()))
