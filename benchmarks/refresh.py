"""Refresh latency: from new events to their users' updated lists, at a steady event rate.

    python -m benchmarks.refresh --out RESULT.json [--feed files|table] [--users 20000] [--rate 1000]
                                 [--seconds 120] [--config conf/local.yaml] [--set key=value ...] [--work DIR]

Generates a shop, runs the nightly stages (ingest, features, train, score), then starts the
refresh stream (the product's job, refresh.trigger_seconds) and feeds it --rate views a second of
random known users and items for --seconds. Every second the feeder adds the events due since the
start that it has not fed yet, so the rate holds however long one addition takes.

--feed files (the production path): the feeder writes a parquet file a second (plain pyarrow, no
Spark) and moves it into a folder that `ingest --stream` (the product's job, in the same Spark
session, ingest.stream_trigger_seconds) loads into the events table. A file's latency: the first
MERGE into gold/recommendations_latest whose batch covered the events version that loaded it (the
commit's refresh_events_version) minus the moment the file arrived; its ingest lag: that events
commit minus the arrival.
--feed table: the feeder appends to the events table itself, a Delta commit a second from the same
Spark session; a commit's latency is measured from the commit.

Reports p50, p95 and max over the files or commits, the rate actually fed, and the refresh
batches' sizes and durations. Times come from the Delta logs and this process's clock.
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


class Feeder:
    """Random views of known users and items, `rate` a second counted from start()."""

    def __init__(self, user_ids: list, item_ids: list, rate: int, seed: int = 0):
        self.user_ids, self.item_ids, self.rate = user_ids, item_ids, rate
        self.rng = np.random.default_rng(seed)
        self.fed, self.started = 0, 0.0

    def start(self) -> None:
        self.started = time.time()

    def due(self) -> dict:
        """The events due since the last call, as columns (event_id, user_id, item_id, event_type, timestamp)."""
        n = int(self.rate * (time.time() - self.started)) - self.fed
        self.fed += n
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        return {"event_id": [uuid.uuid4().hex for _ in range(n)],
                "user_id": [self.user_ids[u] for u in self.rng.integers(0, len(self.user_ids), n)],
                "item_id": [self.item_ids[i] for i in self.rng.integers(0, len(self.item_ids), n)],
                "event_type": ["view"] * n, "timestamp": [now] * n}

    def every_second(self, seconds: int, add) -> list:
        """Call add(events) once a second (at once again when a call took longer) until `seconds`
        have passed; return what the calls returned."""
        self.start()
        out, tick = [], self.started + 1.0
        while tick <= self.started + seconds:
            time.sleep(max(0.0, tick - time.time()))
            out.append(add(self.due()))
            tick = max(tick + 1.0, time.time())
        return out


def feed_files(feeder: Feeder, seconds: int, staging: str, live: str) -> list:
    """[(file name, arrival time)]: a parquet file a second, written aside and moved in whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(staging, exist_ok=True)

    def add(events):
        name = f"live-{uuid.uuid4().hex[:12]}.parquet"
        pq.write_table(pa.table(events), os.path.join(staging, name))
        os.rename(os.path.join(staging, name), os.path.join(live, name))
        return name, time.time()

    return feeder.every_second(seconds, add)


def feed_table(spark, feeder: Feeder, seconds: int, events: str) -> list:
    """[events version]: a Delta append a second."""
    from recsys_spark import tables
    from recsys_spark.table_schemas import EVENTS_SCHEMA

    def add(ev):
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        rows = [(e, u, i, "view", now, None, None, "bench", "bench")
                for e, u, i in zip(ev["event_id"], ev["user_id"], ev["item_id"])]
        tables.append(spark.createDataFrame(rows, EVENTS_SCHEMA), events)
        return tables.version(spark, events)

    return feeder.every_second(seconds, add)


def refreshed_versions(spark, latest: str) -> list:
    """[(events version a refresh MERGE covered, its commit time)], oldest first."""
    from recsys_spark import tables

    metas = [(json.loads(r.userMetadata), r.timestamp) for r in tables.delta_table(spark, latest).history()
             .where("userMetadata IS NOT NULL").select("userMetadata", "timestamp").collect()]
    return sorted((m["refresh_events_version"], t.timestamp()) for m, t in metas if "refresh_events_version" in m)


def commit_times(spark, events: str, after: int) -> dict:
    """{events version: its commit time} for the versions after `after`."""
    from recsys_spark import tables

    return {r.version: r.timestamp.timestamp() for r in tables.delta_table(spark, events).history()
            .where(f"version > {after}").select("version", "timestamp").collect()}


def wait_until_refreshed(spark, latest: str, version: int, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if max([v for v, _ in refreshed_versions(spark, latest)] + [-1]) >= version:
            return
        time.sleep(2)


def file_versions(spark, events: str, after: int, names: list) -> dict:
    """{file name: the events version that loaded its rows} for the fed files (change feed)."""
    from pyspark.sql import functions as F

    from recsys_spark import tables

    rows = (tables.changes(spark, events, after + 1, tables.version(spark, events))
            .withColumn("name", F.element_at(F.split("source_file", "/"), -1)).where(F.col("name").isin(names))
            .groupBy("name").agg(F.min("_commit_version").alias("v")).collect())
    return {r.name: r.v for r in rows}


def percentiles(values: list) -> dict:
    s = sorted(values)
    pct = lambda q: round(s[min(len(s) - 1, int(q * len(s)))], 2) if s else None  # noqa: E731
    return {"p50_s": pct(0.5), "p95_s": pct(0.95), "max_s": round(s[-1], 2) if s else None}


def main(argv: list[str] | None = None) -> int:
    from recsys_spark import cli, ingest, refresh, schema, tables
    from recsys_spark.generate import generate

    p = harness.parser(__doc__, dataset=False, config="conf/local.yaml")
    p.add_argument("--feed", choices=("files", "table"), default="files")
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=120)
    args = p.parse_args(argv)
    with harness.work_dir(args.work, "recsys-refresh-") as work:
        live = os.path.join(work, "raw", "live")  # the folder ingest --stream watches
        overrides = harness.lakehouse(work) + harness.shop_overrides(args.users, 2000, 10) + [
            "train.epochs=2", "tracking.enabled=false"]
        cfg = harness.load_config(args.config, overrides + args.overrides)
        if cfg is None:
            return 2
        generate(cfg.generate, cfg.paths.raw)
        os.makedirs(live)
        with harness.spark_session(cfg) as spark:
            out = harness.run_stages(spark, cfg)
            cfg = harness.load_config(args.config, overrides + args.overrides + [
                f"score.model_run_id={out['run_id']}"])
            cli.run_stage(spark, cfg, "score")
            stream_cfg = harness.load_config(args.config, overrides + args.overrides + [
                f"score.model_run_id={out['run_id']}", f"ingest.events={live}", "ingest.format=parquet"])
            events = tables.location(cfg.tables_root, schema.EVENTS)
            latest = tables.location(cfg.tables_root, schema.RECOMMENDATIONS_LATEST)
            feeder = Feeder([r.user_id for r in tables.read(spark, tables.location(cfg.tables_root, schema.USER_INDEX))
                             .select("user_id").collect()],
                            [r.item_id for r in tables.read(spark, tables.location(cfg.tables_root, schema.ITEM_INDEX))
                             .select("item_id").collect()], args.rate)
            start_version = tables.version(spark, events)
            result: dict = {}
            jobs = [threading.Thread(target=lambda: result.update(refresh.run(spark, cfg)), daemon=True)]
            if args.feed == "files":
                jobs.append(threading.Thread(target=lambda: result.update(ingested=ingest.stream(spark, stream_cfg)),
                                             daemon=True))
            for job in jobs:
                job.start()
            time.sleep(20)  # the streams' start-up (pinning, catalog, first empty batch)
            t_feed = time.time()
            if args.feed == "files":
                fed = feed_files(feeder, args.seconds, os.path.join(work, "raw", "staging"), live)
            else:
                fed = feed_table(spark, feeder, args.seconds, events)
            fed_seconds = time.time() - t_feed
            row = measure(spark, args, fed, start_version, events, latest, result, jobs)
    row.update({"users": args.users, "rate_per_s": args.rate, "seconds": args.seconds,
                "fed_events": feeder.fed, "fed_seconds": round(fed_seconds, 1),
                "fed_per_s": round(feeder.fed / fed_seconds),
                "refresh_trigger_seconds": cfg.refresh.trigger_seconds,
                "ingest_trigger_seconds": cfg.ingest.stream_trigger_seconds, "cores": os.cpu_count()})
    print(f"\n{args.feed} fed at {row['fed_per_s']} events/s for {args.seconds}s over {args.users} users -> refreshed "
          f"lists: p50 {row['p50_s']}s, p95 {row['p95_s']}s, max {row['max_s']}s ({row['applied']} of {row['fed']} "
          f"{args.feed} applied); {row['batches']} refresh batches, median {row['median_batch_users']} users in "
          f"{row['median_batch_s']}s" + (f"; ingest lag p50 {row['ingest_lag']['p50_s']}s, p95 "
                                          f"{row['ingest_lag']['p95_s']}s" if "ingest_lag" in row else ""))
    harness.write_result(args.out, row)
    return 0


def measure(spark, args, fed: list, start_version: int, events: str, latest: str, result: dict, jobs: list) -> dict:
    """Wait until the refresh covered everything fed (5 minutes at most), stop the streams, and
    compute the latencies from the Delta logs."""
    if args.feed == "files":
        t_wait = time.time() + 300
        loaded: dict = {}
        while time.time() < t_wait and len(loaded) < len(fed):
            time.sleep(2)
            loaded = file_versions(spark, events, start_version, [name for name, _ in fed])
        arrivals = [(loaded[name], at) for name, at in fed if name in loaded]
    else:
        committed = commit_times(spark, events, start_version)
        arrivals = [(v, committed[v]) for v in fed]
    wait_until_refreshed(spark, latest, max([v for v, _ in arrivals] + [start_version]))
    for q in spark.streams.active:
        q.stop()
    for job in jobs:
        job.join(60)
    merges = refreshed_versions(spark, latest)
    latencies = [min(t for v, t in merges if v >= version) - at for version, at in arrivals
                 if any(v >= version for v, _ in merges)]
    batches = result.get("applied", [])
    half = len(latencies) // 2  # does the latency settle, or grow with the run?
    row = {"feed": args.feed, "fed": len(fed), "applied": len(latencies), **percentiles(latencies),
           "p50_first_half_s": percentiles(latencies[:half])["p50_s"],
           "p50_second_half_s": percentiles(latencies[half:])["p50_s"],
           "batches": len(batches), "median_batch_users": statistics.median([b[1] for b in batches]) if batches else 0,
           "median_batch_s": round(statistics.median([b[3] for b in batches]), 2) if batches else 0}
    if args.feed == "files":
        committed = commit_times(spark, events, start_version)
        row["ingest_lag"] = percentiles([committed[v] - at for v, at in arrivals])
        row["ingest_batches"] = len(result.get("ingested", {}).get("batches", []))
    return row


if __name__ == "__main__":
    sys.exit(main())
