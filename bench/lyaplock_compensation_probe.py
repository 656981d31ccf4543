"""Probe of a deviation from the papers (not in the library): a preservation term that sees the edits below a layer.

    python bench/lyaplock_compensation_probe.py [THREADS] [LAMBDA] [CLAMP]

MEMIT / LyapLock preserve ``E‖(W − W0) k0‖²`` on the keys ``k0`` of the *unedited* model, but when layer ``l`` is
solved the layers below it are already edited, so on plain text its keys are ``k1`` and its output moves by
``E‖W k1 − W0 k0‖²`` — 2.7x (passages) to 3.4x (fact sentences) more than ``D`` after one batch (``bench_lyaplock.py
drift``). This probe solves each layer against that real drift instead::

    min_W ‖W K − (W K + R)‖² + λ E‖W k1 − W0 k0‖²   ⇒   W_new = ((W K + R) Kᵀ + λ E[v0 k1ᵀ]) (K Kᵀ + λ E[k1 k1ᵀ])⁻¹

with ``v0 = W0 k0`` recorded once per statistics token on the unedited model and ``E[k1 k1ᵀ]``, ``E[v0 k1ᵀ]``
re-collected on the model as edited so far before each layer's solve (one truncated pass per layer). With
``k1 = k0`` it is MEMIT's solve, so at the first batch (LyapLock's queue weight is 1 there) it compares with
``cf-curve --variant lyaplock --n 100`` at the same λ. One CounterFact batch of 100, layers 2-9; the probe swaps the
editor's ``memit_update`` for the compensating solve (variant ``memit``). Writes ``results/lyaplock/compensation_*.json``.
"""
import json, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lyaplock as B
import editmem.strategies.locate.editor as E
from editmem.strategies.locate.stats import statistics_rows, token_batches
from editmem.strategies.locate.forward import pad_id_of, read_activations, right_pad

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
lam_over = float(sys.argv[2]) if len(sys.argv) > 2 else 100.0
clamp = float(sys.argv[3]) if len(sys.argv) > 3 else 0.75
out = Path(f"results/lyaplock/compensation_lam{lam_over:g}_clamp{clamp:g}")
out.mkdir(parents=True, exist_ok=True)  # the strategy's artifacts (not saved)
loaded = B._load(threads)
model, tok = loaded.model, loaded.tokenizer
st = B._strategy(loaded, "memit", out, {"layers": [2, 3, 4, 5, 6, 7, 8, 9], "mom2_update_weight": lam_over, "clamp_norm_factor": clamp})
st.attach()
held = B.heldout_lines(st)
batches = token_batches(statistics_rows(model, tok, st.stats_source()))  # the tokens C was collected on
pad, layers, adapter = pad_id_of(tok), st.layers, st.adapter
W0 = {l: adapter.mlp_out_weight(l).detach().clone().float() for l in layers}
t = time.time()
v0 = {l: [] for l in layers}
for b in batches:  # unedited outputs of every edited layer at every statistics token
    ids, mask = right_pad(b, pad, model.device)
    k, _ = read_activations(model, adapter, ids, mask, key_layers=layers)
    m = mask.bool()
    for l in layers:
        v0[l].append((k[l][m].float() @ W0[l].T).half())
print("unedited pass", round(time.time() - t), "s", flush=True)
C_to_layer = {}


def compensating_update(R, K, C, lam, S_KK=None):
    l = C_to_layer[id(C)]
    t = time.time()
    C1 = torch.zeros(C.shape, dtype=torch.float64)
    X = torch.zeros(W0[l].shape[0], C.shape[0], dtype=torch.float64)
    n = 0
    for b, v in zip(batches, v0[l]):
        ids, mask = right_pad(b, pad, model.device)
        k, _ = read_activations(model, adapter, ids, mask, key_layers=[l])
        k1 = k[l][mask.bool()].float()
        C1 += (k1.T @ k1).double(); X += (v.float().T @ k1).double(); n += k1.shape[0]
    C1 /= n; X /= n
    W = adapter.mlp_out_weight(l).detach().double()
    K, R = K.double(), R.double()
    A = K @ K.T + lam * C1
    N = (W @ K + R) @ K.T + lam * X
    W_new = torch.linalg.solve(A, N.T).T
    print(f"layer {l}: pass {time.time() - t:.0f}s, tr C1/tr C {float(torch.trace(C1) / torch.trace(C)):.3f}", flush=True)
    return W_new - W


E.memit_update = compensating_update
records = json.loads((B.DATA / "counterfact_eval_2000.json").read_text())[:100]
base = B.heldout_ppls(model, tok, held)
facts = [B._stored(r["subject"], r["prompt"], r["target_new"]) for r in records]
for l, C in st.editor().C.items():  # each layer's C tensor as the editor holds it -> layer index
    C_to_layer[id(C)] = l
t = time.time(); st.apply(facts); print("apply", round(time.time() - t), flush=True)
tel = st.telemetry[-1]
after = B.heldout_ppls(model, tok, held)
res = {"lam": lam_over, "clamp": clamp, "D_sum": tel["D_sum"], "ppl_ratio": {k: after[k] / base[k] for k in base}, "batch": B.cf_metrics(model, tok, records)}
print(json.dumps(res), flush=True)
out.with_suffix(".json").write_text(json.dumps(res, indent=1))
