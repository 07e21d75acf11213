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
"""
from __future__ import annotations

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


def main(argv=None) -> int:
    p = harness.parser(__doc__, dataset=False, config=None)
    p.add_argument("--rows", default="100,100000,1000000", help="table sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.rows.split(",")]
    with harness.work_dir(args.work, "bench-delta-ops-") as work:
        cfg = harness.load_config(args.config, harness.lakehouse(work) + ["spark.conf={'spark.ui.enabled': 'false'}"]
                                  + args.overrides)
        if cfg is None:
            return 2
        with harness.spark_session(cfg) as spark:
            result = {"benchmark": "delta_operations", "repeats": args.repeats,
                      "seconds": {rows: _measure(spark, f"{work}/t{rows}", rows, args.repeats) for rows in sizes}}
    for rows, figures in result["seconds"].items():
        print(f"{rows:>9} rows: " + ", ".join(f"{k} {v:.2f}s" for k, v in figures.items()), flush=True)
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
