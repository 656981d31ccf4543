"""Quick teacher-forced ZsRE check (EVALUATION.md §3/§4) used for tuning, without the Chroma/embedding overhead.

    python bench/lyaplock_zsre_quick.py VARIANT T '{"config": "overrides"}' [CHECKPOINTS]

Edits the first T ZsRE eval records one at a time through the strategy, then scores Rel./Gen. (teacher-forced token
accuracy on src/rephrase against alt) and Loc. (agreement with the pre-edit argmax on loc/loc_ans) on the final
model, and prints one JSON line with the per-edit value loss and preservation loss. 1 thread. CHECKPOINTS (e.g.
``10,50``) also scores the records edited so far after those edit counts (one JSON line each, ``"checkpoint": n``), and
the final line carries per-record scores (``rel_by_rec`` …) to tell forgotten early edits from weak late ones.
"""
import sys, json, tempfile, time, torch
torch.set_num_threads(1)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from bench_lyaplock import DATA, _load, _strategy, _stored
from editmem.tokens import encode_prompt_target, pad_batch
from pathlib import Path
variant, T = sys.argv[1], int(sys.argv[2]); over = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
checkpoints = {int(x) for x in sys.argv[4].split(",")} if len(sys.argv) > 4 and sys.argv[4] else set()
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
per = lambda ps: [sum(a == b for a, b in zip(p, g)) / len(g) for p, g in ps]
mean = lambda xs: sum(xs) / len(xs)


def scores(k):
    rel = per(preds([(r["src"], r["alt"]) for r in recs[:k]]))
    gen = per(preds([(r["rephrase"], r["alt"]) for r in recs[:k]]))
    post_loc = preds(loc_pairs[:k])
    loc = [sum(a == b for a, b in zip(p[0], q[0])) / len(p[0]) for p, q in zip(post_loc, pre_loc[:k])]
    return rel, gen, loc


t = time.time()
for i, r in enumerate(recs, 1):
    st.apply([_stored(r["subject"], r["src"], r["alt"])])
    if i in checkpoints and i < T:
        rel, gen, loc = scores(i)
        print(json.dumps({"variant": variant, "over": over, "checkpoint": i, "rel": mean(rel), "gen": mean(gen), "loc": mean(loc)}), flush=True)
el = time.time() - t
rel, gen, loc = scores(T)
tel = st.telemetry
print(json.dumps({"variant": variant, "T": T, "over": over, "lambda": st.lam, "rel": mean(rel), "gen": mean(gen), "loc": mean(loc), "s_per_edit": el / T,
                  "z_loss": [round(x["z_loss"], 3) for x in tel], "D_sum": [round(x["D_sum"], 4) for x in tel],
                  "w": [round(x["layers"][str(max(st.layers))]["w_used"], 2) for x in tel],
                  "rel_by_rec": [round(x, 2) for x in rel], "gen_by_rec": [round(x, 2) for x in gen], "loc_by_rec": [round(x, 2) for x in loc]}), flush=True)
