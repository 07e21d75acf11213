"""Quality benchmark: the project's own pipeline on a dataset file, against baselines.

    python -m benchmarks.quality DATASET_FILE --out RESULT.json [--config conf/bench.yaml]
                                         [--set key=value ...] [--work DIR]

Runs ingest -> features -> train -> evaluate (the nightly code, not a side script) into a fresh
lakehouse under --work (a temporary folder by default), with the attention model and the
popularity, ALS (grid chosen on validation) and item-kNN baselines on the same leave-last-out
split and the same full-ranking protocol. Prints one table and writes RESULT.json:
{"dataset": ..., "rows": [{"model", "recall@1", "recall@10", "recall@20", "ndcg@10", "ndcg@20",
"train_s", "score_s", "peak_rss_mb"}, ...], ...}.

peak_rss_mb is the peak summed resident memory of this process and all its descendants (the Spark
JVM, Python workers, Horovod ranks) while that model was trained and scored.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Optional

from benchmarks import convergence, harness

METRIC_KEYS = ["recall@1", "recall@10", "recall@20", "ndcg@10", "ndcg@20"]


def run_stages(spark, cfg, monitor: Optional[harness.MemoryMonitor] = None) -> tuple[dict, dict]:
    """ingest, features and train (under the memory monitor when given): (train result, stage seconds)."""
    from recsys_spark import features, ingest, train

    stage_s = {}
    for name, fn in (("ingest", ingest.run), ("features", features.run)):
        t0 = time.time()
        fn(spark, cfg)
        stage_s[name] = round(time.time() - t0, 1)
    t0 = time.time()
    with monitor.measuring("attention") if monitor else contextlib.nullcontext():
        trained = train.run(spark, cfg)
    stage_s["train"] = round(time.time() - t0, 1)
    return trained, stage_s


def run_pipeline(spark, cfg, monitor: harness.MemoryMonitor) -> tuple[dict, dict, dict]:
    """ingest, features, train and evaluate (each model under the memory monitor): (train result,
    evaluation result, stage seconds)."""
    from recsys_spark import evaluate

    trained, stage_s = run_stages(spark, cfg, monitor)
    t0 = time.time()
    evaluation = evaluate.Evaluation(spark, cfg)
    for name, make_recs in evaluation.models():
        with monitor.measuring(name):
            evaluation.measure(name, make_recs)
    ev = evaluation.finish()
    stage_s["evaluate"] = round(time.time() - t0, 1)
    return trained, ev, stage_s


def result_rows(trained: dict, ev: dict, monitor: harness.MemoryMonitor) -> list[dict]:
    rows = []
    for model, m in ev["metrics"].items():
        row = {"model": model, **{k: round(m.get(k, float("nan")), 4) for k in METRIC_KEYS}}
        row["train_s"] = round(trained["seconds"] if model == "attention" else ev["train_s"][model], 1)
        row["score_s"] = round(ev["score_s"][model], 1)
        row["peak_rss_mb"] = round(monitor.peaks.get(model, 0.0))
        row.update({f"{key}@10": round(v, 4) for key, v in ev.get("beyond", {}).get(model, {}).get(10, {}).items()})
        rows.append(row)
    return rows


def print_table(result: dict) -> None:
    print(f"\n{result['dataset']}: {result['n_test_users']} test users, full ranking, history removed")
    print(f"{'model':<11}" + "".join(f"{k:>10}" for k in METRIC_KEYS) + f"{'train_s':>9}{'score_s':>9}{'peak_mb':>9}")
    for r in result["rows"]:
        print(f"{r['model']:<11}" + "".join(f"{r[k]:>10.4f}" for k in METRIC_KEYS)
              + f"{r['train_s']:>9.1f}{r['score_s']:>9.1f}{r['peak_rss_mb']:>9}")
    c = result.get("convergence")
    if c:
        print(f"attention: kept epoch {c['kept_epoch']} (validation NDCG@10 {c['kept_ndcg']}, {c['kept_s']}s of epochs); "
              f"{c['share']:.0%} of it first at epoch {c['epoch']} ({c['ndcg']}, {c['seconds']}s of epochs)")
    blend = result.get("collaborative")
    if blend:
        print(f"served: {blend['chosen']} (validation NDCG@10 {blend['valid_ndcg@10']:.4f}, the attention model alone "
              f"{blend['attention_valid_ndcg@10']:.4f}, {blend['valid_users']} users)")
    for name, p in (result.get("paired") or {}).items():
        print(f"attention - {name}: NDCG@10 {p['ndcg@10_diff']:+.4f} ± {p['halfwidth'] or 0:.4f} "
              f"(95% interval, paired over {p['users']} test users)")


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--side", choices=["auto", "none"], default="auto",
                   help="auto: ingest the user/item side files found next to the dataset (benchmarks.datasets)")
    args = p.parse_args(argv)
    if not os.path.exists(args.dataset):
        print(f"error: dataset {args.dataset} not found", file=sys.stderr)
        return 2
    with harness.work_dir(args.work, "recsys-bench-") as work:
        overrides, side = harness.lakehouse(work, args.dataset), {}
        if args.side == "auto" and os.path.isfile(args.dataset):
            side_sets, side = harness.side_overrides(args.dataset, work)
            overrides += side_sets
            print(f"side files: {', '.join(side) or 'none found'}", flush=True)
        cfg = harness.load_config(args.config, overrides + args.overrides)
        if cfg is None:
            return 2
        monitor = harness.MemoryMonitor()
        try:
            with harness.spark_session(cfg) as spark:
                trained, ev, stage_s = run_pipeline(spark, cfg, monitor)
        finally:
            monitor.close()
        with open(os.path.join(trained["checkpoint"], "manifest.json")) as fh:
            manifest = json.load(fh)  # read before the work folder is removed
    result = {
        "dataset": os.path.basename(os.path.normpath(args.dataset)),
        "dataset_path": args.dataset,
        "n_test_users": ev["n_users"],
        "protocol": "leave-last-out; full ranking over all items; the user's history removed",
        "rows": result_rows(trained, ev, monitor),
        "stage_seconds": stage_s,
        "attention_history": trained["history"],
        "convergence": convergence.time_to_share(trained["history"]),
        "model_run_id": trained["run_id"],
        "model_config": manifest["model_config"],
        "collaborative": manifest.get("collaborative"),  # the blend with ALS chosen on validation (train.collaborative)
        "final_pass": manifest.get("final_pass"),  # train.final_pass_epochs: the pass on the validation items
        "als": ev["params"].get("als"),
        # The served model's test NDCG@10 minus each baseline's over the same users, with its 95% interval.
        "paired": ev.get("paired"),
        "side_files": sorted(side),
        "cold": ev.get("cold"),
        "config": {k: v for k, v in cfg.to_dict().items() if k in ("features", "train", "evaluate")},
    }
    print_table(result)
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
