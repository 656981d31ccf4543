"""Run every speed benchmark with its defaults (``make bench``); ``--quick`` for a small smoke run.

Results land in ``bench/results/`` as JSON + Markdown, one pair per benchmark.
"""

from __future__ import annotations

import argparse

import edit_latency
import feed_import
import inference_overhead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="context")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes instead of an hour)")
    args = parser.parse_args()
    common = ["--strategy", args.strategy, "--threads", args.threads]
    edit_latency.main(common + ["--n", "20" if args.quick else "200"])
    feed_import.main(common + ["--n", "100" if args.quick else "1000"])
    inference_overhead.main(common + ["--sizes", "0,10,100" if args.quick else "0,100,1000,10000"])


if __name__ == "__main__":
    main()
