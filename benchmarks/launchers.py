"""Both training launchers side by side: Horovod and TorchDistributor, on the same lakehouse.

    python -m benchmarks.launchers DATASET_FILE --out RESULT.json [--seconds 240] [--repeats 2]
                                   [--config conf/bench.yaml] [--set key=value ...] [--work DIR]

Runs ingest and features once (the nightly code), then trains with the product's `train.run` under
each launcher in turn, `--repeats` times (alternating which goes first, so drift on a shared machine
hits both), each with the same time budget (train.time_budget_s = --seconds, no early stopping,
train.resume off). Per run: epochs, optimizer steps per second inside the epochs, launch overhead
(wall time outside the epochs: starting ranks, reading the validation sample), and validation
NDCG@10 after the budget (the last epoch's, and the best). Prints the medians per launcher and
writes RESULT.json with every run.
"""
from __future__ import annotations

import statistics
import sys
import time

from benchmarks import harness
from recsys_spark.config import LAUNCHERS


def train_once(spark, cfg, launcher: str, seconds: float) -> dict:
    import dataclasses

    from recsys_spark import train

    tc = dataclasses.replace(cfg.train, launcher=launcher, time_budget_s=seconds, patience=10_000, resume="off")
    run_cfg = dataclasses.replace(cfg, train=tc)
    t0 = time.time()
    out = train.run(spark, run_cfg)
    wall = time.time() - t0
    history = out["history"]
    in_epochs = sum(h["seconds"] for h in history)
    steps = len(history) * out["steps_per_epoch"]
    ndcgs = [h["valid_ndcg@10"] for h in history if "valid_ndcg@10" in h]
    return {"launcher": launcher, "epochs": len(history), "steps": steps, "wall_s": round(wall, 1),
            "epoch_s": round(in_epochs, 1), "steps_per_s": round(steps / max(in_epochs, 1e-9), 3),
            "overhead_s": round(wall - in_epochs, 1), "valid_ndcg@10_last": round(ndcgs[-1], 4) if ndcgs else None,
            "valid_ndcg@10_best": round(max(ndcgs), 4) if ndcgs else None}


def medians(runs: list[dict]) -> dict:
    out = {}
    for launcher in LAUNCHERS:
        mine = [r for r in runs if r["launcher"] == launcher]
        out[launcher] = {k: round(statistics.median(r[k] for r in mine), 4)
                         for k in ("epochs", "steps_per_s", "overhead_s", "valid_ndcg@10_last", "valid_ndcg@10_best")
                         if mine and all(r[k] is not None for r in mine)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--seconds", type=float, default=240.0, help="training time budget per run")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    from recsys_spark import features, ingest

    with harness.work_dir(a.work, "bench-launchers-") as work:
        cfg = harness.load_config(a.config, harness.lakehouse(work, a.dataset) + a.overrides)
        if cfg is None:
            return 2
        with harness.spark_session(cfg) as spark:
            ingest.run(spark, cfg)
            features.run(spark, cfg)
            runs = []
            for r in range(a.repeats):
                order = LAUNCHERS if r % 2 == 0 else LAUNCHERS[::-1]
                for launcher in order:
                    runs.append({"repeat": r, **train_once(spark, cfg, launcher, a.seconds)})
                    print(runs[-1], flush=True)
        result = {"dataset": a.dataset, "seconds": a.seconds, "ranks": cfg.train.num_proc,
                  "batch_size": cfg.train.batch_size, "runs": runs, "medians": medians(runs)}
        for launcher, m in result["medians"].items():
            print(f"{launcher:18s} {m}")
        harness.write_result(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
