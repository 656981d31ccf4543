"""Quick teacher-forced ZsRE check (EVALUATION.md §3/§4) used for tuning, without the Chroma/embedding overhead.

    python bench/lyaplock_zsre_quick.py VARIANT T '{"config": "overrides"}'

Edits the first T ZsRE eval records one at a time through the strategy, then scores Rel./Gen. (teacher-forced token
accuracy on src/rephrase against alt) and Loc. (agreement with the pre-edit argmax on loc/loc_ans) on the final
model, and prints one JSON line with the per-edit value loss and preservation loss. 1 thread.
"""
import sys, json, tempfile, time, torch
torch.set_num_threads(1)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from bench_lyaplock import DATA, _load, _strategy, _stored
from editmem.tokens import encode_prompt_target, pad_batch
from pathlib import Path
variant, T = sys.argv[1], int(sys.argv[2]); over = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
loaded = _load(1); model, tok = loaded.model, loaded.tokenizer
recs = json.load(open(DATA / "zsre_eval_1000.json"))[:T]
@torch.no_grad()
def preds(pairs):
    encs = [encode_prompt_target(tok, p, a) for p, a in pairs]
    ids, mask = pad_batch([e.input_ids for e in encs], tok.pad_token_id, side="right")
    am = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
    return [(am[r, e.start-1:len(e.input_ids)-1].tolist(), e.input_ids[e.start:]) for r, e in enumerate(encs)]
loc_pairs = [(r["loc"], r["loc_ans"]) for r in recs]
pre_loc = preds(loc_pairs)
st = _strategy(loaded, variant, Path(tempfile.mkdtemp(prefix=f"zq_{variant}_")), over)
st.attach()
t = time.time()
for r in recs:
    st.apply([_stored(r["subject"], r["src"], r["alt"])])
el = time.time() - t
acc = lambda ps: sum(sum(a == b for a, b in zip(p, g)) / len(g) for p, g in ps) / len(ps)
rel = acc(preds([(r["src"], r["alt"]) for r in recs]))
gen = acc(preds([(r["rephrase"], r["alt"]) for r in recs]))
post_loc = preds(loc_pairs)
loc = sum(sum(a == b for a, b in zip(p[0], q[0])) / len(p[0]) for p, q in zip(post_loc, pre_loc)) / len(recs)
tel = st.telemetry
print(json.dumps({"variant": variant, "T": T, "over": over, "lambda": st.lam, "rel": rel, "gen": gen, "loc": loc, "s_per_edit": el / T,
                  "z_loss": [round(x["z_loss"], 3) for x in tel], "D_sum": [round(x["D_sum"], 4) for x in tel], "w": [round(x["layers"]["7"]["w_used"], 2) for x in tel]}), flush=True)
