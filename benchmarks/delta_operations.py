"""What one Delta operation costs on this machine, whatever the table's size: the floor under every
step of an incremental night.

    python -m benchmarks.delta_operations --out RESULT.json [--rows 100,100000,1000000] [--repeats 5]

For a two-column table (user_idx, v) with deletion vectors, of each size: seconds for an overwrite
of the whole table, the rows of 1,000 and of 10 users replaced (tables.replace_groups, the
incremental features' write), 10 rows appended, a count, and three lookups every stage makes
several of: the table's latest version (tables.version, from the Delta log), the same through the
table's history (the public API, which tables.version falls back on), and the metadata of the
latest commit (tables.commit_metadata). Medians of `repeats`, the first repetition left out (the
JVM warming up).

    python -m benchmarks.delta_operations --out RESULT.json --nights 100

With --nights N it measures instead what N nights of small replacements do to a table like the
user-item matrix (100,000 users x 14 rows, written as tables.overwrite writes the tables that
keep deletion vectors; each night the rows of 1,000 random users replaced with
tables.replace_groups, the incremental features' write): every 25 nights its files, the rows
deleted but still inside them, and the median time of a whole-table aggregation (3 runs); the
median and largest replacement time of each 25 nights; then an OPTIMIZE, its time, and the same
figures after it.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

from benchmarks import harness


def _time(action) -> float:
    t = time.time()
    action()
    return time.time() - t


def _measure(spark, location: str, rows: int, repeats: int) -> dict:
    from pyspark.sql import functions as F

    from recsys_spark import tables

    table = spark.range(rows).select(F.col("id").alias("user_idx"), (F.col("id") * 7 % 1000).alias("v"))
    seconds: dict[str, list] = {}
    for rep in range(repeats + 1):
        steps = {"overwrite": lambda: tables.overwrite(table, location, deletion_vectors=True)}
        for n in (1000, 10):
            users = spark.range(0, rows, max(1, rows // n)).select(F.col("id").alias("user_idx"))
            rows_of = users.select("user_idx", F.lit(rep).cast("long").alias("v"))
            steps[f"replace_{n}_users"] = (lambda r=rows_of, u=users:
                                           tables.replace_groups(spark, r, location, "user_idx", ["user_idx"], u))
        steps["append_10_rows"] = lambda: tables.append(
            spark.range(10).select(F.col("id").alias("user_idx"), F.lit(-1).cast("long").alias("v")), location)
        steps["count"] = lambda: tables.read(spark, location).count()
        steps["version"] = lambda: tables.version(spark, location)
        steps["version_by_history"] = lambda: tables.delta_table(spark, location).history(1).select("version").first()
        steps["commit_metadata"] = lambda: tables.commit_metadata(spark, location, tables.version(spark, location))
        for name, action in steps.items():
            took = _time(action)
            if rep > 0:
                seconds.setdefault(name, []).append(took)
    return {name: round(statistics.median(v), 3) for name, v in seconds.items()}


def _whole_read(spark, location: str) -> float:
    from pyspark.sql import functions as F

    from recsys_spark import tables

    return statistics.median(_time(lambda: tables.read(spark, location).groupBy("user_idx")
                                   .agg(F.sum("weight").alias("w")).agg(F.sum("w")).collect()) for _ in range(3))


def _nights(spark, location: str, nights: int, users: int = 100_000, per_user: int = 14,
            changed: int = 1000) -> dict:
    import random

    from pyspark.sql import functions as F

    from recsys_spark import tables

    matrix = spark.range(users * per_user).select(
        (F.col("id") % users).alias("user_idx"), (F.col("id") * 7919 % 5000).alias("item_idx"),
        F.rand(1).cast("float").alias("weight"))
    tables.overwrite(matrix.repartition(4), location, deletion_vectors=True)
    rng, checks, windows, window = random.Random(3), [], [], []

    def replace(night: int) -> None:
        """The rows of `changed` random users replaced by per_user new ones each."""
        chosen = spark.createDataFrame([(u,) for u in rng.sample(range(users), changed)], "user_idx long")
        rows = chosen.crossJoin(spark.range(per_user).withColumnRenamed("id", "k")).select(
            "user_idx", (F.col("k") * 13 + night).alias("item_idx"), F.lit(0.5).cast("float").alias("weight"))
        tables.replace_groups(spark, rows, location, "user_idx", ["user_idx", "item_idx"], chosen)

    for night in range(nights):
        if night % 25 == 0:
            checks.append({"night": night, **harness.table_files(spark, location), "whole_read_s": round(_whole_read(spark, location), 3)})
            print(json.dumps(checks[-1]), flush=True)
        window.append(_time(lambda: replace(night)))
        if len(window) == 25 or night == nights - 1:
            windows.append({"nights": [night + 2 - len(window), night + 1], "replace_median_s":
                            round(statistics.median(window), 3), "replace_max_s": round(max(window), 3)})
            print(json.dumps(windows[-1]), flush=True)
            window = []
    checks.append({"night": nights, **harness.table_files(spark, location), "whole_read_s": round(_whole_read(spark, location), 3)})
    optimize_s = _time(lambda: tables.delta_table(spark, location).optimize().executeCompaction())
    after = {**harness.table_files(spark, location), "whole_read_s": round(_whole_read(spark, location), 3)}
    # The same replacements on the compacted table (each adds its file again).
    after["replace_s"] = [round(_time(lambda: replace(nights + i)), 3) for i in range(5)]
    return {"nights": nights, "checks": checks, "replacements": windows, "optimize_s": round(optimize_s, 3),
            "after_optimize": after}


def main(argv=None) -> int:
    p = harness.parser(__doc__, dataset=False, config=None)
    p.add_argument("--rows", default="100,100000,1000000", help="table sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--nights", type=int, help="N nights of small replacements instead (see above)")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.rows.split(",")]
    with harness.work_dir(args.work, "bench-delta-ops-") as work:
        cfg = harness.load_config(args.config, harness.lakehouse(work) + ["spark.conf={'spark.ui.enabled': 'false'}"]
                                  + args.overrides)
        if cfg is None:
            return 2
        with harness.spark_session(cfg) as spark:
            if args.nights:
                result = {"benchmark": "delta_operations-nights",
                          **_nights(spark, f"{work}/user_item", args.nights)}
                print(json.dumps(result["after_optimize"]))
                harness.write_result(args.out, result)
                return 0
            result = {"benchmark": "delta_operations", "repeats": args.repeats,
                      "seconds": {rows: _measure(spark, f"{work}/t{rows}", rows, args.repeats) for rows in sizes}}
    for rows, figures in result["seconds"].items():
        print(f"{rows:>9} rows: " + ", ".join(f"{k} {v:.2f}s" for k, v in figures.items()), flush=True)
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
