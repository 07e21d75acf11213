"""What a stage costs when it runs again in the same Spark session: the floor under the test suite,
whose tests run the same stages over and over in one JVM, and under a long-lived session.

    python -m benchmarks.repeated_stages --out RESULT.json [--stage features] [--repeats 4]
        [--users 600] [--items 120] [--events-per-user 50] [--set key=value ...] [--work DIR]

Generates a shop of that size (the test shop's by default), runs ingest and features once (the
cold runs), then `stage` again `repeats` times in the same session (features in full mode, so
each run rebuilds every table). Prints each run's seconds and Spark jobs. Spark settings are
compared with --set, e.g. --set "spark.conf={'spark.sql.codegen.cache.maxEntries': '4000'}".
"""
from __future__ import annotations

import statistics
import sys
import time

from benchmarks import harness


def _run(spark, cfg, stage: str, label: str) -> dict:
    """Run one stage with the product's CLI; its seconds and the Spark jobs it started."""
    from recsys_spark import cli

    sc = spark.sparkContext
    sc.setJobGroup(label, label)
    t = time.time()
    cli.run_stage(spark, cfg, stage)
    seconds = time.time() - t
    jobs = len(sc.statusTracker().getJobIdsForGroup(label))
    print(f"{label:>12}: {stage} {seconds:.1f}s, {jobs} Spark jobs", flush=True)
    return {"run": label, "stage": stage, "seconds": round(seconds, 2), "spark_jobs": jobs}


def main(argv=None) -> int:
    p = harness.parser(__doc__, dataset=False, config=None)
    p.add_argument("--stage", choices=("ingest", "features"), default="features")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--users", type=int, default=600)
    p.add_argument("--items", type=int, default=120)
    p.add_argument("--events-per-user", type=int, default=50)
    args = p.parse_args(argv)
    from recsys_spark.generate import generate

    with harness.work_dir(args.work, "bench-repeated-stages-") as work:
        base = (harness.lakehouse(work) + harness.shop_overrides(args.users, args.items, args.events_per_user)
                + ["spark.master=local[2]", "spark.shuffle_partitions=2", "features.mode=full"])
        cfg = harness.load_config(args.config, base + args.overrides)
        if cfg is None:
            return 2
        generate(cfg.generate, cfg.paths.raw)
        with harness.spark_session(cfg) as spark:
            cold = [_run(spark, cfg, stage, "cold") for stage in ("ingest", "features")]
            again = [_run(spark, cfg, args.stage, f"again {i + 1}") for i in range(args.repeats)]
            conf = {k: v for k, v in spark.sparkContext.getConf().getAll() if k.startswith("spark.sql.codegen")}
    result = {"benchmark": "repeated_stages", "stage": args.stage, "overrides": args.overrides,
              "codegen_settings": conf, "runs": cold + again,
              "median_again_s": round(statistics.median(r["seconds"] for r in again), 2) if again else None}
    print(f"{args.stage} run again: median {result['median_again_s']}s over {len(again)} runs", flush=True)
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
