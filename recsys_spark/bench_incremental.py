"""Incremental vs full nightly scoring when a small share of users has new events.

    python -m recsys_spark.bench_incremental --out RESULT.json [--users 100000] [--items 5000]
        [--events 2000000] [--changed 0.01] [--repeats 3] [--work DIR]

Builds a synthetic shop with the nightly code (generate, ingest, features, a 1-epoch train: the
model's quality does not matter here), scores it once in full, then `repeats` times: appends new
events for `changed` of the users (+ a few new users), runs ingest and features, and times the
score stage in incremental mode, then in full mode, on the same tables. It checks that both give the same lists for the changed users and reports medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import pandas as pd

from recsys_spark import config as config_mod


def _cfg(root: str, overrides: list[str]) -> config_mod.Config:
    return config_mod.load(None, [f"paths.root={root}", f"paths.raw={root}/raw"] + overrides)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--changed", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", default=None)
    args = p.parse_args(argv)

    from pyspark.sql import functions as F

    from recsys_spark import cli, schema, tables
    from recsys_spark.generate import generate
    from recsys_spark.session import build_spark

    work = args.work or tempfile.mkdtemp(prefix="bench-incremental-")
    base = [f"generate.users={args.users}", f"generate.items={args.items}", f"generate.events={args.events}",
            "generate.categories=24", "train.epochs=1", "train.valid_users=0", "score.k=10",
            "spark.conf={'spark.driver.memory': '8g', 'spark.ui.enabled': 'false'}"]
    cfg = _cfg(work, base + ["score.run_date=2026-08-01"])
    spark = build_spark(cfg.spark)
    stages = {}
    try:
        t0 = time.time()
        generate(cfg.generate, cfg.paths.raw)
        for stage in ("ingest", "features", "train", "score"):
            t = time.time()
            cli.run_stage(spark, cfg, stage)
            stages[stage] = time.time() - t
        print(f"setup: {time.time() - t0:.0f}s {stages}", flush=True)
        rng = np.random.default_rng(11)
        all_users = [r.user_id for r in tables.read(spark, tables.path(cfg.tables_dir, schema.SEQUENCES))
                     .select("user_id").collect()]
        items = [r.item_id for r in tables.read(spark, tables.path(cfg.tables_dir, schema.ITEM_INDEX))
                 .select("item_id").collect()]
        reps = []
        for rep in range(args.repeats):
            n = max(1, int(len(all_users) * args.changed))
            changed = list(rng.choice(all_users, n, replace=False)) + [f"u_new_{rep}_{i}" for i in range(5)]
            per = rng.integers(1, 4, len(changed))
            new = pd.DataFrame({
                "user_id": np.repeat(changed, per),
                "item_id": rng.choice(items, per.sum()),
                "event_type": rng.choice(["view", "add_to_cart", "purchase"], per.sum()),
                "timestamp": pd.Timestamp("2026-08-01") + pd.to_timedelta(rep + 1, "D")
                             + pd.to_timedelta(rng.integers(0, 3600, per.sum()), "s"),
            })
            new_dir = os.path.join(work, f"new-{rep}")
            os.makedirs(new_dir, exist_ok=True)
            new.to_parquet(os.path.join(new_dir, "events.parquet"))
            t = time.time()
            cli.run_stage(spark, _cfg(work, base + [f"ingest.events={new_dir}"]), "ingest")
            ingest_s = time.time() - t
            t = time.time()
            cli.run_stage(spark, cfg, "features")
            features_s = time.time() - t
            day_inc, day_full = f"2026-08-{10 + 2 * rep:02d}", f"2026-08-{11 + 2 * rep:02d}"
            # Incremental first: a full run records the current events version, after which an
            # incremental run has nothing left to do.
            order = ["incremental", "full"]
            walls, outs = {}, {}
            for mode in order:
                day = day_inc if mode == "incremental" else day_full
                t = time.time()
                outs[mode] = cli.run_stage(spark, _cfg(work, base + [f"score.mode={mode}", f"score.run_date={day}"]), "score")
                walls[mode] = time.time() - t
            recs = tables.read(spark, tables.path(cfg.tables_dir, schema.RECOMMENDATIONS))
            pick = [str(u) for u in changed]

            def lists(day):
                return sorted((r.user_id, r.rank, r.item_id) for r in
                              recs.where((F.col("run_date") == day) & F.col("user_id").isin(pick))
                              .select("user_id", "rank", "item_id").collect())

            same = lists(day_inc) == lists(day_full)
            row = {"rep": rep, "changed_users": len(changed), "incremental_s": walls["incremental"],
                   "full_s": walls["full"], "ingest_s": ingest_s, "features_s": features_s,
                   "incremental_mode": outs["incremental"]["mode"], "users_scored": outs["incremental"]["users_scored"],
                   "users_carried": outs["incremental"]["users_carried"], "same_lists_for_changed_users": same}
            print(json.dumps(row), flush=True)
            reps.append(row)
    finally:
        spark.stop()
    inc = statistics.median(r["incremental_s"] for r in reps)
    full = statistics.median(r["full_s"] for r in reps)
    result = {"benchmark": "incremental", "users": len(all_users), "items": args.items, "events": args.events,
              "changed_share": args.changed, "setup_stage_s": stages, "reps": reps,
              "median_incremental_s": inc, "median_full_s": full, "speedup": full / inc,
              "median_features_s": statistics.median(r["features_s"] for r in reps)}
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"score stage, {args.changed:.0%} of {len(all_users)} users changed: full {full:.1f}s, incremental "
          f"{inc:.1f}s (median of {len(reps)}), {full / inc:.1f}x; features (full rebuild) "
          f"{result['median_features_s']:.1f}s; same lists for changed users: "
          f"{all(r['same_lists_for_changed_users'] for r in reps)}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
