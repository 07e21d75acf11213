"""`python -m recsys_spark <stage> [--config conf/local.yaml] [--set key=value ...]`.

Stages: generate, ingest, features, train, score, evaluate, nightly (ingest..evaluate in order),
show (a few users' latest recommendations with item names and explanations), abtest (A/B readout
of the exposure/outcome log), abtest-simulate (writes such a log for the synthetic shop), report
(a self-contained HTML report of the latest evaluation), forget --users FILE (delete the listed
users from every table, keep them out of future ingests, purge history; see recsys_spark.forget),
audience (the users most likely to engage with each campaign of audience.campaigns; show
--campaign ID prints one with reasons).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from recsys_spark import config as config_mod

STAGES = ["generate", "ingest", "features", "train", "score", "evaluate", "nightly", "show", "abtest",
          "abtest-simulate", "report", "forget", "audience"]
NIGHTLY = ["ingest", "features", "train", "score", "evaluate"]


def parse_args(argv: list[str] | None = None, stage: str | None = None) -> tuple[str, config_mod.Config, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m recsys_spark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if stage is None:
        p.add_argument("stage", choices=STAGES)
    p.add_argument("--config", default=None,
                   help="YAML config (default: conf/local.yaml when it exists, else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--users", default=None,
                   help="show: how many users to print (default 5); forget: file of user ids, one per line")
    p.add_argument("--campaign", default=None,
                   help="show: print this campaign's latest audience (its first --users users) with reasons")
    args = p.parse_args(argv)
    selected = stage or args.stage
    if selected == "forget" and not args.users:
        p.error("forget needs --users FILE (one user id per line)")
    if selected == "show":
        try:
            args.users = int(args.users or 5)
        except ValueError:
            p.error(f"show --users takes a number of users, got {args.users!r}")
    path = args.config
    if path is None and os.path.isfile("conf/local.yaml"):
        path = "conf/local.yaml"
    cfg = config_mod.load(path, args.overrides)
    return selected, cfg, args


def retrain_due(spark, cfg: config_mod.Config) -> tuple[bool, str]:
    """Whether the nightly run trains: no model yet, or the newest one has served
    train.retrain_every scoring nights already (gold/score_runs counts them)."""
    from pyspark.sql import functions as F

    from recsys_spark import checkpoints, schema, tables

    every = cfg.train.retrain_every
    if cfg.score.model_run_id:
        return False, f"score.model_run_id pins model {cfg.score.model_run_id}; not retraining"
    try:
        run_id = os.path.basename(checkpoints.latest(cfg.models_dir))
    except FileNotFoundError:
        return True, "no trained model yet"
    runs = tables.path(cfg.tables_dir, schema.SCORE_RUNS)
    nights = 0
    if tables.exists(spark, runs):
        nights = (tables.read(spark, runs).where(F.col("model_run_id") == run_id)
                  .select("run_date").distinct().count())
    if nights >= every:
        return True, f"model {run_id} has served {nights} night(s); train.retrain_every is {every}: retraining"
    return False, f"model {run_id} has served {nights} of {every} night(s) (train.retrain_every): scoring with it"


def run_stage(spark, cfg: config_mod.Config, stage: str, args: argparse.Namespace | None = None):
    from recsys_spark import evaluate, features, ingest, score, show, train

    fn = {"ingest": ingest.run, "features": features.run, "train": train.run, "score": score.run,
          "evaluate": evaluate.run}.get(stage)
    if stage == "report":
        from recsys_spark import report

        return report.run(spark, cfg)
    if stage in ("abtest", "abtest-simulate"):
        from recsys_spark import abtest

        return (abtest.run if stage == "abtest" else abtest.simulate)(spark, cfg)
    if stage == "show":
        return show.run(spark, cfg, getattr(args, "users", 5), getattr(args, "campaign", None))
    if stage == "audience":
        from recsys_spark import audience

        return audience.run(spark, cfg)
    if stage == "forget":
        from recsys_spark import forget

        return forget.run(spark, cfg, args.users)
    if stage == "nightly":
        timings = {}
        started = time.time()
        for i, s in enumerate(NIGHTLY):
            t0 = time.time()
            print(f"=== [{i + 1}/{len(NIGHTLY)}] {s} (nightly running for {t0 - started:.0f}s) ===", flush=True)
            if s == "train":
                due, why = retrain_due(spark, cfg)
                print(f"train: {why}", flush=True)
                if not due:
                    continue
            run_stage(spark, cfg, s)
            timings[s] = time.time() - t0
        print("nightly stage wall times: " + ", ".join(f"{s} {t:.1f}s" for s, t in timings.items()), flush=True)
        return timings
    return fn(spark, cfg)


def main(argv: list[str] | None = None, stage: str | None = None) -> int:
    try:
        stage, cfg, args = parse_args(argv, stage)
    except config_mod.ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if stage == "generate":
        from recsys_spark.generate import generate

        t0 = time.time()
        summary = generate(cfg.generate, cfg.paths.raw)
        print(f"generated {summary['events']} events for {summary['users']} users and {summary['items']} items "
              f"in {time.time() - t0:.1f}s -> {cfg.paths.raw}", flush=True)
        return 0
    from recsys_spark.ingest import IngestError
    from recsys_spark.session import build_spark
    from recsys_spark.tables import ConcurrentRunsError

    spark = build_spark(cfg.spark)
    try:
        run_stage(spark, cfg, stage, args)
    except (IngestError, FileNotFoundError, ValueError, ConcurrentRunsError) as exc:
        print(f"error in {stage}: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    return 0
