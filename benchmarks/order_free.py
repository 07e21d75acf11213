"""An order-free copy of a dataset: the same users and interactions, each user's order shuffled.

    python -m benchmarks.order_free SRC DST [--seed 0]
    e.g. python -m benchmarks.order_free ../shared/datasets/movielens-small/ratings.csv data/order-free/ratings.csv
    (data/ is git-ignored: the copy is never committed)

The next item then carries no sequential signal, only which items go together: the case, named in
issue 19, of weakly sequential data where a collaborative model (ALS) is strong. Running the quality
benchmark on the copy (`scripts/bench_quality.sh DST --out F.json`) says whether the product still
beats ALS there with the same `conf/bench.yaml`.

Formats: MovieLens `ratings.csv` (userId,movieId,rating,timestamp: each user's timestamps are
permuted among that user's rows) and SASRec text (`user item item ...` or `user item` per line:
each user's items are permuted). The copy is written to DST; SRC is only read. Keep the file name
(ingest recognises MovieLens ratings by it). The side files the benchmark reads with SRC
(benchmarks.datasets.side_file_paths: movies, users, item attributes) carry no order and are copied
beside DST unchanged, so the copy differs from the dataset in its order alone.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np
import pandas as pd

from benchmarks.datasets import side_file_paths


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def shuffle_ratings_csv(src: str, dst: str, seed: int) -> int:
    """MovieLens ratings.csv with each user's timestamps permuted among the user's rows; the rows."""
    ratings = pd.read_csv(src)
    missing = {"userId", "movieId", "timestamp"} - set(ratings.columns)
    if missing:
        raise ValueError(f"{src}: not a MovieLens ratings.csv, missing column(s) {', '.join(sorted(missing))}")
    rng = np.random.default_rng(seed)
    ratings["timestamp"] = ratings.groupby("userId")["timestamp"].transform(lambda t: rng.permutation(t.to_numpy()))
    ratings.to_csv(dst, index=False)
    return len(ratings)


def shuffle_sasrec(src: str, dst: str, seed: int) -> int:
    """SASRec text with each user's items in a random order, written one line per user
    (`user item item ...`) whether SRC had one line per user or per interaction; the interactions."""
    users: dict[str, list[str]] = {}
    with open(src) as fh:
        for line in fh:
            parts = line.split()
            if parts:
                users.setdefault(parts[0], []).extend(parts[1:])
    rng = np.random.default_rng(seed)
    n = 0
    with open(dst, "w") as out:
        for user, items in users.items():
            items = [items[i] for i in rng.permutation(len(items))]
            out.write(" ".join([user] + items) + "\n")
            n += len(items)
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        print("error: DST must differ from SRC (the dataset is only read)", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    shuffle = shuffle_ratings_csv if args.src.endswith(".csv") else shuffle_sasrec
    n = shuffle(args.src, args.dst, args.seed)
    side = side_file_paths(args.src)
    for path in side:
        shutil.copyfile(path, os.path.join(os.path.dirname(os.path.abspath(args.dst)),
                                           os.path.basename(path).replace(_stem(args.src), _stem(args.dst), 1)))
    print(f"{args.dst}: {n} interactions of {args.src}, each user's order shuffled (seed {args.seed}); "
          f"side files copied: {', '.join(os.path.basename(p) for p in side) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
