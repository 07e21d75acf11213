"""Refresh latency: from an events commit to its users' updated lists, at a steady event rate.

    python -m benchmarks.refresh --out RESULT.json [--users 20000] [--rate 1000] [--seconds 120]
                                 [--config conf/local.yaml] [--set key=value ...] [--work DIR]

Generates a shop, runs the nightly stages (ingest, features, train, score), then starts the
refresh stream (the product's job, refresh.trigger_seconds) and, in the same Spark session, appends
--rate views per second to the events table for --seconds (one Delta commit per second, random
known users and items, as a continuously running ingest would). Latency of a commit: the time of
the first MERGE into gold/recommendations_latest whose batch covered its version (the commit's
refresh_events_version) minus the events commit's time, both from the Delta logs. Reports p50,
p95 and max over the commits, and the batches' sizes and durations.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import numpy as np

from benchmarks import harness


def main(argv: list[str] | None = None) -> int:
    from recsys_spark import cli, refresh, schema, tables
    from recsys_spark.generate import generate
    from recsys_spark.table_schemas import EVENTS_SCHEMA

    p = harness.parser(__doc__, dataset=False, config="conf/local.yaml")
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=120)
    args = p.parse_args(argv)
    with harness.work_dir(args.work, "recsys-refresh-") as work:
        overrides = harness.lakehouse(work) + harness.shop_overrides(args.users, 2000, 10) + [
            "train.epochs=2", "tracking.enabled=false"]
        cfg = harness.load_config(args.config, overrides + args.overrides)
        if cfg is None:
            return 2
        generate(cfg.generate, cfg.paths.raw)
        with harness.spark_session(cfg) as spark:
            out = harness.run_stages(spark, cfg)
            cfg = harness.load_config(args.config, overrides + args.overrides + [f"score.model_run_id={out['run_id']}"])
            cli.run_stage(spark, cfg, "score")
            events = tables.location(cfg.tables_root, schema.EVENTS)
            latest = tables.location(cfg.tables_root, schema.RECOMMENDATIONS_LATEST)
            user_ids = [r.user_id for r in tables.read(spark, tables.location(cfg.tables_root, schema.USER_INDEX))
                        .select("user_id").collect()]
            item_ids = [r.item_id for r in tables.read(spark, tables.location(cfg.tables_root, schema.ITEM_INDEX))
                        .select("item_id").collect()]
            start_version = tables.version(spark, events)
            result: dict = {}
            job = threading.Thread(target=lambda: result.update(refresh.run(spark, cfg)), daemon=True)
            job.start()
            time.sleep(20)  # the stream's start-up (pinning, catalog, first empty batch)
            rng = np.random.default_rng(0)
            commits = []
            t_end = time.time() + args.seconds
            while time.time() < t_end:
                t0 = time.time()
                now = datetime.now(timezone.utc).replace(tzinfo=None)
                rows = [(uuid.uuid4().hex, user_ids[u], item_ids[i], "view", now, None, None, "bench", "bench")
                        for u, i in zip(rng.integers(0, len(user_ids), args.rate), rng.integers(0, len(item_ids), args.rate))]
                tables.append(spark.createDataFrame(rows, EVENTS_SCHEMA), events)
                commits.append(tables.version(spark, events))
                time.sleep(max(0.0, 1.0 - (time.time() - t0)))
            fed_until = tables.version(spark, events)
            deadline = time.time() + 300
            applied = -1
            while time.time() < deadline and applied < fed_until:
                time.sleep(2)
                metas = [json.loads(m) for m in tables.delta_table(spark, latest).history()
                         .where("userMetadata IS NOT NULL").select("userMetadata").toPandas()["userMetadata"]]
                applied = max([m.get("refresh_events_version", -1) for m in metas] + [-1])
            for q in spark.streams.active:
                q.stop()
            job.join(60)
            ev_hist = {r.version: r.timestamp for r in tables.delta_table(spark, events).history()
                       .where(f"version > {start_version}").select("version", "timestamp").collect()}
            merges = sorted((json.loads(r.userMetadata)["refresh_events_version"], r.timestamp)
                            for r in tables.delta_table(spark, latest).history().where("userMetadata IS NOT NULL")
                            .select("userMetadata", "timestamp").collect()
                            if "refresh_events_version" in json.loads(r.userMetadata))
            latencies = []
            for v in commits:
                done = [t for applied_v, t in merges if applied_v >= v]
                if done:
                    latencies.append((min(done) - ev_hist[v]).total_seconds())
    lat = sorted(latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
    batches = result.get("applied", [])
    row = {"users": args.users, "rate_per_s": args.rate, "seconds": args.seconds, "commits": len(commits),
           # An append takes more than a second when the machine is busy: the rate actually fed.
           "fed_per_s": round(len(commits) * args.rate / args.seconds),
           "applied_commits": len(lat), "p50_s": pct(0.5), "p95_s": pct(0.95), "max_s": lat[-1] if lat else None,
           "batches": len(batches), "median_batch_users": statistics.median([b[1] for b in batches]) if batches else 0,
           "median_batch_s": statistics.median([b[3] for b in batches]) if batches else 0,
           "trigger_seconds": cfg.refresh.trigger_seconds, "cores": os.cpu_count()}
    print(f"\nevents commit -> refreshed lists, {row['fed_per_s']} events/s fed ({args.rate} per commit) for "
          f"{args.seconds}s over {args.users} users: "
          f"p50 {row['p50_s']:.1f}s, p95 {row['p95_s']:.1f}s, max {row['max_s']}s; {row['batches']} batches, "
          f"median {row['median_batch_users']} users in {row['median_batch_s']:.1f}s "
          f"({len(lat)} of {len(commits)} commits applied)")
    harness.write_result(args.out, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
