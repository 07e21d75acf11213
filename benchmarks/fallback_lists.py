"""Popularity fallback lists: seconds of baselines.fallback_lists, which every scoring run (full or
incremental) and the cold-start evaluation compute from every user's history.

    python -m benchmarks.fallback_lists --out RESULT.json [--users 100000] [--items 5000]
        [--history 20] [--repeats 5]

Builds a seeded table of users (Zipf-distributed histories of 1 to 2 x `history` items, 3 declared
attributes of 2-7 values), persists it as scoring does, then times fallback_lists `repeats` times
after one warm-up run and prints the median. To compare two versions of the code, run it from each
checkout in turn on the same machine.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks import harness
from recsys_spark import config as config_mod


def _users(spark, n_users: int, n_items: int, history: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 2 * history + 1, n_users)
    items = np.minimum(rng.zipf(1.3, lengths.sum()), n_items - 1).astype(int) + 1
    cuts = np.cumsum(lengths)[:-1]
    cards = (2, 7, 5)
    attrs = np.stack([rng.integers(0, c, n_users) for c in cards], axis=1)
    rows = [(u, h.tolist(), a.tolist()) for u, (h, a) in enumerate(zip(np.split(items, cuts), attrs))]
    return spark.createDataFrame(rows, "user_idx long, input array<int>, profile_cat array<int>").repartition(8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--history", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    from recsys_spark.baselines import fallback_lists

    with harness.spark_session(config_mod.load(None, [])) as spark:
        users = _users(spark, args.users, args.items, args.history).persist()
        users.count()
        popular, segments = fallback_lists(users)  # warm-up: the JIT, the first jobs' set-up
        seconds = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fallback_lists(users)
            seconds.append(time.perf_counter() - t)
    med = statistics.median(seconds)
    print(f"fallback_lists over {args.users} users: median {med:.2f}s of {args.repeats} "
          f"({', '.join(f'{s:.2f}' for s in seconds)}); {len(segments)} segments, top item {popular[0]}", flush=True)
    harness.write_result(args.out, {"benchmark": "fallback_lists", "users": args.users, "items": args.items,
                            "history": args.history, "seconds": seconds, "median_s": med,
                            "segments": len(segments), "global_top10": popular[:10].tolist(),
                            "segment_tops": {k: v[:5].tolist() for k, v in sorted(segments.items())}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
