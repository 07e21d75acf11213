"""How fast a training run got most of its quality: the time to reach a share (95%) of the kept
epoch's validation NDCG@10, from a run's per-epoch history.

    python -m benchmarks.convergence RESULT.json [RESULT.json ...] [--share 0.95]
    python -m benchmarks.convergence RESULT.json [...] --relative-patience 0.5 [--patience 5]

The second form replays each run's validation curve through the trainer's early stopping, with
fixed patience and with patience relative to the peak (train.relative_patience), and prints where
each would have stopped and which epoch each keeps. Stopping sooner only cuts a curve short (the
learning-rate cuts before the stop do not depend on patience), so the replay is exact, except that
the run's start ends at the rise alone (min_steps is not in the history).

Reads the quality benchmark's result files (their attention_history) and prints, per file, the
kept epoch (the best validation NDCG@10, which early stopping keeps), the first epoch within the
share of it, and the training seconds up to each. Seconds are the epochs' own (optimizer steps),
summed; validation, start-up and checkpoints are not in them, so compare them between runs of the
same machine, and read the train stage's wall time beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

METRIC = "valid_ndcg@10"


def time_to_share(history: list[dict], share: float = 0.95) -> dict:
    """{kept_epoch, kept_ndcg, kept_s, epoch, ndcg, seconds, share} for a history of epochs with
    "seconds" and METRIC (epochs without a validation are skipped); {} when none has one."""
    validated = [e for e in history if e.get(METRIC) is not None]
    if not validated:
        return {}
    kept = max(validated, key=lambda e: e[METRIC])
    elapsed, cumulative = 0.0, {}
    for e in history:
        elapsed += e["seconds"]
        cumulative[e["epoch"]] = elapsed
    first = next(e for e in validated if e[METRIC] >= share * kept[METRIC])
    return {"share": share, "kept_epoch": kept["epoch"], "kept_ndcg": round(kept[METRIC], 4),
            "kept_s": round(cumulative[kept["epoch"]], 1), "epoch": first["epoch"],
            "ndcg": round(first[METRIC], 4), "seconds": round(cumulative[first["epoch"]], 1)}


def replay_stopping(history: list[dict], patience: int, relative_patience: float = 0.0) -> dict:
    """{stop_epoch, kept_epoch, kept_ndcg, seconds}: where the trainer's early stopping, set up as
    conf/bench.yaml's but for the two patience settings, would have ended this history (its last
    epoch if never) and the epoch seconds up to there."""
    import torch

    from recsys_spark import config
    from recsys_spark.trainer import EarlyStopping

    # min_steps out of reach: a history's steps are not replayed, so only the rise ends the start.
    tc = config.load("bench", [f"train.patience={patience}", f"train.relative_patience={relative_patience}",
                               f"train.min_steps={2 ** 62}"]).train
    stopper = EarlyStopping.of(tc)
    model, elapsed, stop_epoch = torch.nn.Linear(1, 1), 0.0, history[-1]["epoch"]
    for e in history:
        elapsed += e["seconds"]
        if e.get(METRIC) is not None and stopper.update(model, e[METRIC], e["epoch"], 0,
                                                        e.get(METRIC + "_halfwidth")):
            stop_epoch = e["epoch"]
            break
    return {"stop_epoch": stop_epoch, "kept_epoch": stopper.best_epoch, "kept_ndcg": round(stopper.best_ndcg, 4),
            "seconds": round(elapsed, 1)}


def print_replays(paths: list[str], patience: int, relative_patience: float) -> None:
    print(f"| result | stop, patience {patience} | kept | epoch s | stop, relative {relative_patience} | kept "
          f"| epoch s | kept NDCG@10 change |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        with open(path) as fh:
            history = json.load(fh).get("attention_history") or []
        if not any(e.get(METRIC) is not None for e in history):
            continue
        fixed, relative = replay_stopping(history, patience), replay_stopping(history, patience, relative_patience)
        print(f"| {os.path.basename(path)} | {fixed['stop_epoch']} | {fixed['kept_epoch']} | {fixed['seconds']} "
              f"| {relative['stop_epoch']} | {relative['kept_epoch']} | {relative['seconds']} "
              f"| {relative['kept_ndcg'] - fixed['kept_ndcg']:+.4f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="result files of benchmarks.quality")
    p.add_argument("--share", type=float, default=0.95)
    p.add_argument("--relative-patience", type=float, default=None,
                   help="replay early stopping with this train.relative_patience against fixed patience")
    p.add_argument("--patience", type=int, default=5, help="train.patience for --relative-patience (default 5)")
    args = p.parse_args(argv)
    if args.relative_patience is not None:
        print_replays(args.results, args.patience, args.relative_patience)
        return 0
    print(f"| result | kept epoch | valid NDCG@10 | epoch seconds to it | first epoch within {args.share:.0%} "
          f"| its valid NDCG@10 | epoch seconds to it | train stage wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.results:
        with open(path) as fh:
            result = json.load(fh)
        c = time_to_share(result.get("attention_history") or [], args.share)
        if not c:
            print(f"| {os.path.basename(path)} | no validation in its history | | | | | | |")
            continue
        train_s = (result.get("stage_seconds") or {}).get("train", "")
        print(f"| {os.path.basename(path)} | {c['kept_epoch']} | {c['kept_ndcg']} | {c['kept_s']} | {c['epoch']} "
              f"| {c['ndcg']} | {c['seconds']} | {train_s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
