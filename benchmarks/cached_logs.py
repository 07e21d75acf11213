"""What Delta's cached logs hold in a session that makes many lakehouses, as the test suite does:
Delta keeps each table's log and latest snapshot (plans and a persisted file list) for an hour
after last use.

    python -m benchmarks.cached_logs --out RESULT.json [--lakes 5] [--users 100] [--work DIR]

Generates a small shop once, then builds `lakes` lakehouses from it one after the other in one
session (ingest and features, each into a new folder), printing after each the JVM's heap in use
after a full collection and the persisted RDDs. Then drops every cached log (harness.forget_every_cached_log)
and builds as many lakehouses again, dropping each one's cached logs once built
(harness.forget_cached_logs, as tests/conftest.py does after every test).
"""
from __future__ import annotations

import os
import sys
import time

from benchmarks import harness


def _heap(spark) -> dict:
    """Heap in use after a full collection (MB), and the persisted RDDs the context holds."""
    jvm = spark._jvm
    jvm.System.gc()
    used = jvm.java.lang.management.ManagementFactory.getMemoryMXBean().getHeapMemoryUsage().getUsed()
    return {"heap_mb": round(used / 2**20), "persisted_rdds": spark.sparkContext._jsc.sc().getPersistentRDDs().size()}


def _build_lakes(spark, config: str, base: list, work: str, phase: str, lakes: int, forget: bool) -> list:
    """Ingest and features into `lakes` new lakehouses under `work`, one after the other; with
    `forget`, each one's cached logs are dropped once it is built. A row per lakehouse."""
    from recsys_spark import cli

    rows = []
    for i in range(lakes):
        root = os.path.join(work, f"{phase}-{i}")
        cfg = harness.load_config(config, base + [f"paths.root={root}"])
        t = time.time()
        for stage in ("ingest", "features"):
            cli.run_stage(spark, cfg, stage)
        seconds = time.time() - t
        forgotten = harness.forget_cached_logs(spark, root) if forget else 0
        row = {"phase": phase, "lake": i + 1, "seconds": round(seconds, 1), "tables_forgotten": forgotten,
               **_heap(spark)}
        print(f"{phase} lake {i + 1}: {seconds:.1f}s, heap {row['heap_mb']} MB, "
              f"{row['persisted_rdds']} persisted RDDs", flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = harness.parser(__doc__, dataset=False, config=None)
    p.add_argument("--lakes", type=int, default=5)
    p.add_argument("--users", type=int, default=100)
    args = p.parse_args(argv)
    from recsys_spark.generate import generate

    with harness.work_dir(args.work, "bench-cached-logs-") as work:
        raw = os.path.join(work, "raw")
        base = (harness.shop_overrides(args.users, max(20, args.users // 5), 30)
                + [f"paths.raw={raw}", "spark.master=local[2]", "spark.shuffle_partitions=2"] + args.overrides)
        cfg = harness.load_config(args.config, base + [f"paths.root={work}"])
        if cfg is None:
            return 2
        generate(cfg.generate, raw)
        with harness.spark_session(cfg) as spark:
            start = _heap(spark)
            kept = _build_lakes(spark, args.config, base, work, "kept", args.lakes, forget=False)
            harness.forget_every_cached_log(spark._jvm)
            cleared = _heap(spark)
            print(f"after clearing every cached log: heap {cleared['heap_mb']} MB, "
                  f"{cleared['persisted_rdds']} persisted RDDs", flush=True)
            forgotten = _build_lakes(spark, args.config, base, work, "forgotten", args.lakes, forget=True)
    result = {"benchmark": "cached_logs", "overrides": args.overrides, "users": args.users, "start": start,
              "runs": kept + forgotten, "after_clearing": cleared}
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
