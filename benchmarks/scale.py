"""The nightly at growing sizes of the synthetic shop: wall time and peak memory per stage.

    python -m benchmarks.scale --out RESULT.json [--events 1000000,10000000] [--cluster]
                               [--config FILE] [--set key=value ...] [--work DIR]

For each size: generate a shop of N events (N/50 users, N/500 items: 10M events = 200k users, 20k
items), then run the nightly stages (ingest, features, one training epoch, evaluate, score against
popularity) with the product's code, on a standalone cluster started on this machine (--cluster:
two workers, one core each, as tests/test_cluster.py) or on the configured master. Per stage: wall
seconds, peak resident memory of this process and every descendant (driver JVM, executors, Python
workers, ranks), and seconds per million events, so the cost per event of the sizes can be compared.
Training runs one epoch over every training window with sampled softmax (1,000 negatives).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from typing import Iterator

from benchmarks import harness

SHOP = ["features.max_seq_len=50", "features.train_files=8", "train.epochs=1", "train.batch_size=256",
        "train.d_model=64", "train.loss_negatives=1000", "train.valid_users=2000", "train.resume=off",
        "evaluate.baselines=[popularity]", "evaluate.ks=[10]", "score.run_date=2026-07-01"]

# Two executors of one core (as tests/test_cluster.py), sized for 10M events on a 24 GiB machine.
CLUSTER_CONF = ("spark.conf={spark.executor.memory: 6g, spark.executor.cores: '1', spark.cores.max: '2', "
                "spark.driver.memory: 4g, spark.ui.enabled: 'false'}")


def run_size(cfg, events: int, monitor: harness.MemoryMonitor) -> dict:
    from recsys_spark import evaluate, features, ingest, score, train
    from recsys_spark.generate import generate

    gen = dataclasses.replace(cfg.generate, users=max(1, events // 50), items=max(10, events // 500), events=events)
    t0 = time.time()
    generate(gen, cfg.paths.raw)
    stages = {"generate": {"seconds": round(time.time() - t0, 1)}}
    print(f"scale {events:,} events: generate {stages['generate']}", flush=True)
    cfg = dataclasses.replace(cfg, generate=gen)
    out = {}
    with harness.spark_session(cfg) as spark:
        for name, fn in (("ingest", ingest.run), ("features", features.run), ("train", train.run),
                         ("evaluate", evaluate.run), ("score", score.run)):
            t0 = time.time()
            with monitor.measuring(name):
                out[name] = fn(spark, cfg)
            stages[name] = {"seconds": round(time.time() - t0, 1), "peak_rss_mb": round(monitor.peaks[name])}
            print(f"scale {events:,} events: {name} {stages[name]}", flush=True)
    for s in stages.values():
        s["seconds_per_million_events"] = round(s["seconds"] / (events / 1e6), 1)
    trained = out["train"]
    epoch_s = sum(h["seconds"] for h in trained["history"])
    return {"events": events, "users": gen.users, "items": gen.items, "stages": stages,
            "train_epoch_s": round(epoch_s, 1), "train_steps_per_epoch": trained["steps_per_epoch"],
            "train_sequences_per_s": round(trained["steps_per_epoch"] * trained["batch_size"] * cfg.train.num_proc
                                           / max(epoch_s, 1e-9), 1),
            "nightly_s": round(sum(s["seconds"] for k, s in stages.items() if k != "generate"), 1)}


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__, dataset=False, config=None)
    p.add_argument("--events", default="1000000,10000000", help="comma-separated shop sizes in events")
    p.add_argument("--cluster", action="store_true", help="run on a standalone cluster started here")
    a = p.parse_args(argv)
    rows = []
    with harness.work_dir(a.work, "bench-scale-") as work:
        for events in (int(x) for x in a.events.split(",")):
            root = os.path.join(work, f"shop-{events}")
            overrides = harness.lakehouse(root) + SHOP + a.overrides
            with _master(a.cluster, os.path.join(root, "cluster-logs")) as master:
                cluster = [f"spark.master={master}", CLUSTER_CONF] if master else []
                cfg = harness.load_config(a.config, overrides + cluster)
                if cfg is None:
                    return 2
                monitor = harness.MemoryMonitor()
                try:
                    rows.append(run_size(cfg, events, monitor))
                finally:
                    monitor.close()
            print(rows[-1], flush=True)
    for r in rows:
        print(f"{r['events']:>11,} events: nightly {r['nightly_s']:.0f}s  " +
              "  ".join(f"{k} {s['seconds']:.0f}s/{s.get('peak_rss_mb', 0)}MB" for k, s in r["stages"].items()))
    harness.write_result(a.out, {"cluster": a.cluster, "shop_settings": SHOP + a.overrides, "sizes": rows})
    return 0


@contextlib.contextmanager
def _master(cluster: bool, logs: str) -> Iterator[str]:
    """The master URL of a standalone cluster started for the run, or "" (the configured master)."""
    if not cluster:
        yield ""
        return
    with harness.standalone_cluster(logs, workers=2, cores=1, memory="8g") as c:
        yield c["url"]


if __name__ == "__main__":
    sys.exit(main())
