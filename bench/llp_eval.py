"""Run the harness's lifelong protocol for ``llp`` with a persistent store (so the final memory can be reopened,
e.g. for ``bench_llp.py generation`` / ``snapshot``).

    python bench/llp_eval.py --dataset zsre --n 100 --checkpoints 10 --batch-size 10 --no-generation
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="zsre")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--checkpoints", default="")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--no-generation", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--config", default="{}", help="JSON overrides of LLPConfig")
    parser.add_argument("--out", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--pre-cache", default="results/pre-cache")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from editmem.eval.runner import run_eval

    checkpoints = [int(c) for c in args.checkpoints.split(",") if c]
    res = run_eval("llp", args.dataset, n=args.n, config=json.loads(args.config), checkpoints=checkpoints,
                   batch_size=args.batch_size, generation=not args.no_generation, store_dir=args.store,
                   pre_cache=args.pre_cache, out_dir=args.out, progress=lambda m: print(m, flush=True))
    print(json.dumps({"metrics": res.metrics, "curve": [c.model_dump() for c in res.curve],
                      "timings": {k: v for k, v in res.timings.items() if k != "edit_call_latency_s"}}, indent=1))


if __name__ == "__main__":
    main()
