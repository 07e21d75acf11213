"""`python -m recsys_spark <stage> [--config conf/local.yaml] [--set key=value ...]`.

Stages: generate, ingest, features, train, score, evaluate, nightly (ingest, features, train,
evaluate - which promotes a better model - and score),
show (a few users' latest recommendations with item names and explanations), abtest (A/B readout
of the exposure/outcome log), abtest-simulate (writes such a log for the synthetic shop), report
(a self-contained HTML report of the latest evaluation), forget --users FILE (delete the listed
users from every table, keep them out of future ingests, purge history; see recsys_spark.forget),
audience (the users most likely to engage with each campaign of audience.campaigns; show
--campaign ID prints one with reasons), ope (off-policy estimates of candidate policies from the
exposure log with propensities, or from a scored night's lists: --set ope.night=YYYY-MM-DD), ingest --stream (load new events files as they arrive; --once:
the files there now), refresh (a stream over new events that rescores their users into
gold/recommendations_latest between nightly runs; --once: what is there now, then stop),
bandit-simulate (days of a LinUCB re-ranker learning from the shop's rewards, against the greedy
model and uniform exploration).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from recsys_spark import config as config_mod

logger = logging.getLogger(__name__)

STAGES = ["generate", "ingest", "features", "train", "score", "evaluate", "nightly", "show", "abtest",
          "abtest-simulate", "ope", "bandit-simulate", "refresh", "report", "forget", "audience"]
# Evaluate before score: a new model serves only once evaluate has promoted it (recsys_spark.promotion).
NIGHTLY = ["ingest", "features", "train", "evaluate", "score"]


def parse_args(argv: list[str] | None = None, stage: str | None = None) -> tuple[str, config_mod.Config, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m recsys_spark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if stage is None:
        p.add_argument("stage", choices=STAGES)
    p.add_argument("--config", default=None,
                   help="YAML config file, or the name of a packaged one (local, cluster, cluster-gpu, databricks); "
                        "default: conf/local.yaml when it exists, else built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--users", default=None,
                   help="show: how many users to print (default 5); forget: file of user ids, one per line")
    p.add_argument("--verbose", action="store_true",
                   help="everything on the console: Spark's Ivy resolution and start-up notes, library INFO logs")
    p.add_argument("--once", action="store_true",
                   help="refresh, ingest --stream: process what is there now, then stop (default: run until stopped)")
    p.add_argument("--stream", action="store_true",
                   help="ingest: watch the events folder and load each new file once (a Structured Streaming job)")
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
    cfg = config_mod.load(path, args.overrides + (["spark.quiet=false"] if args.verbose else []))
    return selected, cfg, args


def configure_logging(verbose: bool = False) -> None:
    """One line per event on stderr: time, level, module, message. The product's INFO lines; other
    libraries' (MLflow's bookkeeping, Py4J, the launchers) only from WARNING on, unless verbose."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    logging.getLogger("recsys_spark").setLevel(logging.DEBUG if verbose else logging.INFO)


def retrain_due(spark, cfg: config_mod.Config) -> tuple[bool, str]:
    """Whether the nightly run trains: no model has passed the promotion gate yet, or the champion
    has served train.retrain_every scoring nights already (gold/score_runs counts them)."""
    from pyspark.sql import functions as F

    from recsys_spark import promotion, schema, tables

    every = cfg.train.retrain_every
    if cfg.score.model_run_id:
        return False, f"score.model_run_id pins model {cfg.score.model_run_id}; not retraining"
    champion = promotion.champion_run_id(spark, cfg)
    if champion is None:
        return True, "no model has passed the promotion gate yet"
    runs = tables.location(cfg.tables_root, schema.SCORE_RUNS)
    nights = 0
    if tables.exists(spark, runs):
        nights = (tables.read(spark, runs).where(F.col("model_run_id") == champion)
                  .select("run_date").distinct().count())
    if nights >= every:
        return True, f"the champion {champion} has served {nights} night(s); train.retrain_every is {every}: retraining"
    return False, (f"the champion {champion} has served {nights} of {every} night(s) (train.retrain_every): "
                   f"scoring with it")


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
    if stage == "ingest" and getattr(args, "stream", False):
        return ingest.stream(spark, cfg, once=getattr(args, "once", False))
    if stage == "refresh":
        from recsys_spark import refresh

        return refresh.run(spark, cfg, once=getattr(args, "once", False))
    if stage == "ope":
        from recsys_spark import ope

        return ope.run(spark, cfg)
    if stage == "bandit-simulate":
        from recsys_spark import bandit

        return bandit.simulate(spark, cfg)
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
            logger.info(f"=== [{i + 1}/{len(NIGHTLY)}] {s} (nightly running for {t0 - started:.0f}s) ===")
            if s == "train":
                due, why = retrain_due(spark, cfg)
                logger.info(f"train: {why}")
                if not due:
                    continue
            run_stage(spark, cfg, s)
            timings[s] = time.time() - t0
        logger.info("nightly stage wall times: " + ", ".join(f"{s} {t:.1f}s" for s, t in timings.items()))
        return timings
    return fn(spark, cfg)


def main(argv: list[str] | None = None, stage: str | None = None) -> int:
    configure_logging("--verbose" in (sys.argv[1:] if argv is None else argv))
    try:
        stage, cfg, args = parse_args(argv, stage)
    except config_mod.ConfigError as exc:
        logger.error(f"config error: {exc}")
        return 2
    if stage == "generate":
        from recsys_spark.generate import generate

        t0 = time.time()
        summary = generate(cfg.generate, cfg.paths.raw)
        logger.info(f"generated {summary['events']} events for {summary['users']} users and {summary['items']} items "
              f"in {time.time() - t0:.1f}s -> {cfg.paths.raw}")
        return 0
    from recsys_spark.ingest import IngestError
    from recsys_spark.session import build_spark
    from recsys_spark.tables import ConcurrentRunsError

    spark = build_spark(cfg.spark, metastore=cfg.local_dir("metastore") if cfg.paths.catalog else "")
    try:
        run_stage(spark, cfg, stage, args)
    except (IngestError, FileNotFoundError, ValueError, ConcurrentRunsError) as exc:
        logger.error(f"error in {stage}: {exc}")
        return 1
    finally:
        # A Databricks job's session belongs to the cluster: stopping it fails the task.
        if "DATABRICKS_RUNTIME_VERSION" not in os.environ:
            spark.stop()
    return 0


def entry() -> None:
    """The `recsys-spark` console script. Raises SystemExit on failure, never on success: a
    Databricks wheel task calls this function itself and reads an exception as a failed task."""
    rc = main()
    if rc:
        raise SystemExit(rc)
