"""Quality benchmark: the project's own pipeline on a dataset file, against baselines.

    python -m recsys_spark.bench_quality DATASET_FILE --out RESULT.json [--config conf/bench.yaml]
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

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import psutil

from recsys_spark import config as config_mod

METRIC_KEYS = ["recall@1", "recall@10", "recall@20", "ndcg@10", "ndcg@20"]


class MemoryMonitor:
    """Samples the RSS of this process tree; `peak(name)` is the max seen between start/stop."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.current = None
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _rss_mb(self) -> float:
        me = psutil.Process()
        total = 0
        for p in [me] + me.children(recursive=True):
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total / 2 ** 20

    def _loop(self):
        while not self._stop.is_set():
            name = self.current
            if name is not None:
                self.peaks[name] = max(self.peaks.get(name, 0.0), self._rss_mb())
            time.sleep(self.interval)

    def start(self, name: str) -> None:
        self.current = name
        self.peaks[name] = max(self.peaks.get(name, 0.0), self._rss_mb())

    def stop(self) -> None:
        self.current = None

    def close(self) -> None:
        self._stop.set()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="events file or folder (csv/parquet/json, SASRec text, MovieLens ratings)")
    p.add_argument("--out", required=True, help="where to write RESULT.json")
    p.add_argument("--config", default="conf/bench.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--work", default=None, help="lakehouse folder (default: a temporary one, removed after)")
    p.add_argument("--side", choices=["auto", "none"], default="auto",
                   help="auto: ingest the user/item side files found next to the dataset (recsys_spark.datasets)")
    args = p.parse_args(argv)
    if not os.path.exists(args.dataset):
        print(f"error: dataset {args.dataset} not found", file=sys.stderr)
        return 2
    work = args.work or tempfile.mkdtemp(prefix="recsys-bench-")
    overrides = [f"paths.root={work}", f"paths.raw={os.path.join(work, 'raw')}",
                 f"ingest.events={os.path.abspath(args.dataset)}"]
    side = {}
    if args.side == "auto" and os.path.isfile(args.dataset):
        from recsys_spark.datasets import side_files

        side = side_files(args.dataset, os.path.join(work, "side"))
        overrides += [f"ingest.{name}={path}" for name, path in side.items()]
        print(f"side files: {', '.join(side) or 'none found'}", flush=True)
    overrides += args.overrides
    try:
        cfg = config_mod.load(args.config, overrides)
    except config_mod.ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    from recsys_spark import evaluate, features, ingest, train
    from recsys_spark.session import build_spark

    mon = MemoryMonitor()
    spark = build_spark(cfg.spark)
    stage_s = {}
    try:
        for name, fn in (("ingest", ingest.run), ("features", features.run)):
            t0 = time.time()
            fn(spark, cfg)
            stage_s[name] = round(time.time() - t0, 1)
        mon.start("attention")
        t0 = time.time()
        trained = train.run(spark, cfg)
        stage_s["train"] = round(time.time() - t0, 1)
        mon.stop()
        with open(os.path.join(trained["checkpoint"], "manifest.json")) as fh:
            model_config = json.load(fh)["model_config"]  # read before the work folder is removed
        t0 = time.time()
        ev = evaluate.run(spark, cfg, monitor=mon)
        stage_s["evaluate"] = round(time.time() - t0, 1)
    finally:
        spark.stop()
        mon.close()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    rows = []
    for model, m in ev["metrics"].items():
        row = {"model": model, **{k: round(m.get(k, float("nan")), 4) for k in METRIC_KEYS}}
        row["train_s"] = round(trained["seconds"] if model == "attention" else ev["train_s"][model], 1)
        row["score_s"] = round(ev["score_s"][model], 1)
        row["peak_rss_mb"] = round(mon.peaks.get(model, 0.0))
        row.update({f"{key}@10": round(v, 4) for key, v in ev.get("beyond", {}).get(model, {}).get(10, {}).items()})
        rows.append(row)
    result = {
        "dataset": os.path.basename(os.path.normpath(args.dataset)),
        "dataset_path": args.dataset,
        "n_test_users": ev["n_users"],
        "protocol": "leave-last-out; full ranking over all items; the user's history removed",
        "rows": rows,
        "stage_seconds": stage_s,
        "attention_history": trained["history"],
        "model_run_id": trained["run_id"],
        "model_config": model_config,
        "als": ev["params"].get("als"),
        "side_files": sorted(side),
        "cold": ev.get("cold"),
        "config": {k: v for k, v in cfg.to_dict().items() if k in ("features", "train", "evaluate")},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"\n{result['dataset']}: {ev['n_users']} test users, full ranking, history removed")
    print(f"{'model':<11}" + "".join(f"{k:>10}" for k in METRIC_KEYS) + f"{'train_s':>9}{'score_s':>9}{'peak_mb':>9}")
    for r in rows:
        print(f"{r['model']:<11}" + "".join(f"{r[k]:>10.4f}" for k in METRIC_KEYS)
              + f"{r['train_s']:>9.1f}{r['score_s']:>9.1f}{r['peak_rss_mb']:>9}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
