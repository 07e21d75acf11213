"""How fast a training run got most of its quality: the time to reach a share (95%) of the kept
epoch's validation NDCG@10, from a run's per-epoch history.

    python -m benchmarks.convergence RESULT.json [RESULT.json ...] [--share 0.95]

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="result files of benchmarks.quality")
    p.add_argument("--share", type=float, default=0.95)
    args = p.parse_args(argv)
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
