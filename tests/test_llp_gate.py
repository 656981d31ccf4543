"""The query-aware gate of ``llp`` (issue #18, part 4): an entry fires for its relation, not for every question that
names its subject; aliases reach it through the name route; a generated target releases the value.

Tiny random Llama (the llp unit tests' model) with the real local sentence encoder in the gate."""

from __future__ import annotations

import pytest
import torch

from editmem.facts import Fact
from editmem.strategies.gate import GateItem, QueryGate, names_of
from editmem.strategies.llp import LLPConfig
from tests.test_llp import TINY, _strategy, _tiny_llama, stored

CEO = Fact(subject="Nike", prompt="Who is the CEO of Nike?", target="Elliott Hill")
ECB = Fact(subject="European Central Bank", prompt="Who is the president of the European Central Bank?",
           target="Christine Lagarde")
GATED = {**TINY, "query_gate": "relation"}


@pytest.fixture()
def gated(tokenizer, tmp_path):
    strategy = _strategy(_tiny_llama(tokenizer), tokenizer, tmp_path, **GATED)
    strategy.apply([stored(CEO), stored(ECB)])
    yield strategy
    strategy.detach()


def test_presets_gate_and_release():
    assert LLPConfig().resolve(30).query_gate == "relation" and LLPConfig().resolve(30).release_after_target
    paper = LLPConfig.paper().resolve(30)
    assert paper.query_gate == "off" and not paper.release_after_target  # the published recipe is kept
    with pytest.raises(ValueError, match="query_gate"):
        LLPConfig(query_gate="maybe")


def test_other_questions_about_the_subject_do_not_fire(gated):
    """The key proposes the entry for every question naming "Nike" (gate off fires them all); the gate lets only the
    entry's relation through."""
    other = ["What is Nike's famous slogan?", "Where is Nike headquartered?", "Who founded Nike?"]
    gated.config.query_gate = "off"
    gated.cfg = gated.config.resolve(gated.adapter.num_layers)
    ungated = gated.retrieve(other)
    assert all(t.fact_ids == [CEO.id] for t in ungated)  # the failure the gate is for
    gated.config.query_gate = "relation"
    gated.cfg = gated.config.resolve(gated.adapter.num_layers)
    for trace in gated.retrieve(other):
        assert not trace.fired
        gate = trace.details["gate"]
        assert gate["key_proposed"] and gate["relation"] < gate["threshold"]
    own = gated.retrieve([CEO.prompt, "Who is Nike's chief executive officer?"])
    assert [t.fact_ids for t in own] == [[CEO.id], [CEO.id]]
    assert own[0].details["gate"]["route"] == "key" and own[0].details["gate"]["relation"] > 0.99


def test_name_route_reaches_an_alias_the_key_does_not_know(gated):
    trace = gated.retrieve(["Who is the ECB president?"])[0]
    assert trace.fact_ids == [ECB.id]
    assert trace.details["gate"]["mention"] == "ECB"
    off = gated.retrieve(["Where is the ECB headquartered?"])[0]
    assert not off.fired


def test_gate_blocks_facts_out_of_force(gated):
    """A fact not in force at the call's as_of never fires, whichever route proposes it."""
    gated._state = type(gated._state)()
    dead = torch.tensor([ECB.id in gated._entries[eid].fact_ids for eid in gated._order])
    gated._state.input_ids = torch.tensor([gated.tokenizer("Who is the ECB president?")["input_ids"]])
    gated._state.query_mask = torch.ones_like(gated._state.input_ids, dtype=torch.bool)
    winner, details = gated._gate_decision(gated._gate(), 0, torch.zeros(len(gated._order), dtype=torch.long),
                                           torch.zeros(len(gated._order)), dead)
    assert winner is None and details["route"] == "name"  # proposed by the name route, then refused


def test_gated_cached_generation_equals_uncached(gated, tokenizer):
    """The gate decides once at prefill; cached decoding keeps the decision (release off here)."""
    from tests.test_llp import _greedy

    gated.config.release_after_target = False
    gated.cfg = gated.config.resolve(gated.adapter.num_layers)
    model = gated.model
    with gated.forward_call() as call:
        cached = _greedy(model, tokenizer, [CEO.prompt], use_cache=True)
    assert call.traces[0].fact_ids == [CEO.id]
    ids = tokenizer(CEO.prompt)["input_ids"]
    tokens = list(ids)
    for _ in range(6):
        with gated.query_positions([len(ids)]), torch.no_grad():
            tokens.append(int(model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0, -1].argmax()))
    assert cached[0] == tokens[len(ids):]


def test_release_after_target(gated, tokenizer):
    """Feeding the target back (and one token after it) releases the row: from then on decode steps no longer
    attend to the value, and before that the forward is exactly the unreleased one."""
    from editmem.adapters import compat

    model = gated.model
    prompt = tokenizer(CEO.prompt)["input_ids"]
    target = tokenizer(" " + CEO.target, add_special_tokens=False)["input_ids"]

    def run(release: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        gated.config.release_after_target = release
        gated.cfg = gated.config.resolve(gated.adapter.num_layers)
        outs = []
        with gated.forward_call() as call, torch.no_grad():
            out = model(input_ids=torch.tensor([prompt]), use_cache=True)
            cache, seen = compat.output_cache(out), list(prompt)
            for tok in target + target[:1]:
                seen.append(tok)
                logits, cache = compat.decode_step(model, torch.tensor([[tok]]), cache,
                                                   attention_mask=torch.ones(1, len(seen), dtype=torch.long))
                outs.append(logits[0, -1])
        assert call.traces[0].fact_ids == [CEO.id]
        return outs, gated._state.released

    kept, released_off = run(False)
    freed, released_on = run(True)
    assert released_off is None or not bool(released_off.any())
    assert bool(released_on[0])
    n = len(target)
    for k in range(n):  # up to the step fed the target's last token (it predicts the end of the answer) the value acts
        assert torch.equal(kept[k], freed[k])
    assert not torch.allclose(kept[n], freed[n])  # from the token after the target on it is released


def test_gate_unit_with_a_fake_encoder():
    """The gate's logic on a bag-of-words encoder: masking, the name route, the threshold, no candidates."""
    vocab: dict[str, int] = {}

    def embed(texts: list[str]):
        import numpy as np

        out = np.zeros((len(texts), 64), dtype=np.float32)
        for r, text in enumerate(texts):
            for w in text.lower().replace("?", " ").split():
                out[r, vocab.setdefault(w, len(vocab) % 64)] += 1.0
        return out + 1e-3

    gate = QueryGate(0.9, 0.9, name_route=True, embed=embed, similar_names=True)
    gate.set_items([GateItem("a", "Acme", names_of("Acme", [], ["ACM"]), ("who runs Acme?",)),
                    GateItem("b", "Zeta Corp", names_of("Zeta Corp", [], []), ("where is Zeta Corp?",))])
    assert gate.decide("who runs ACM?", proposed=[]).winner == 0  # alias masked, name route proposes it
    assert gate.decide("who founded Acme?", proposed=[0]).winner is None  # another relation
    hit = gate.decide("where is Zeta Corp?", proposed=[])
    assert hit.winner == 1 and hit.route == "name"
    gate.name_route = False
    assert gate.decide("where is Zeta Corp?", proposed=[]).route == "similar"  # the embedding route alone
    assert gate.decide("hello there", proposed=[]).winner is None
    gate.set_items([])
    assert gate.decide("who runs Acme?", proposed=[]).winner is None
