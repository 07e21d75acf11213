"""Refresh: fresher lists between nightly runs for the users who are active now.

A Structured Streaming job over the events table's Change Data Feed, from the first events version
the nightly's features did not see. Every micro-batch:
1. takes the users with new events in the batch;
2. rebuilds their history: the nightly's sequence (the pinned feature set) and their events since
   the version it was built from, up to the batch's last commit, ordered and with repeats collapsed
   as features does (`features.sequences`); items the nightly's catalog lacks are left out until
   the next features run, and a user the nightly did not know is served from these events alone;
3. ranks with the serving model and the nightly's rules (`score.scoring_spec`: business rules,
   objective, exploration, explanations; with bandit.serve, the re-ranker's newest state), each
   user's profile as the nightly built it;
4. replaces their rows of gold/recommendations_latest in one MERGE keyed by (user_id, rank), so
   nobody else's rows change.

The checkpoint (refresh.checkpoint; a folder per nightly events version) records which batches were
applied. A batch replayed after a crash recomputes the same lists from the same pinned inputs and
the same event versions, and the MERGE leaves the table as it was: nothing is lost and nothing is
applied twice. The model, the features and the catalog are pinned when the job starts. A batch
that finds the latest lists rewritten by another job since then (the next nightly's score, or
forget) stops the job with SupersededError rather than merge an old model's lists into new ones:
start it again (the new nightly's events version starts a new checkpoint).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import bandit, checkpoints, features, promotion, schema, score, splits, tables
from recsys_spark.config import Config
from recsys_spark.ranking import ScoringSpec, score_users
from recsys_spark.table_schemas import RECOMMENDATIONS_SCHEMA

logger = logging.getLogger(__name__)


@dataclass
class Refresher:
    """The pinned state of one refresh job and the micro-batch function of its stream."""
    spark: SparkSession
    cfg: Config
    spec: ScoringSpec
    catalog_bc: object
    versions: dict
    events_version: int
    run_id: str
    # gold/recommendations_latest's newest version known to hold no other job's rewrite (at first:
    # when the inputs were pinned)
    latest_version: int
    # bandit.serve: the nightly's re-ranker. Refreshed lists are not logged as exposures: the
    # re-ranker learns from the nightly's lists only.
    reranker: Optional[bandit.Reranker] = None
    applied: list = field(default_factory=list)  # (batch_id, users, events version, seconds)
    superseded: Optional[str] = None  # why the job stopped: another job rewrote the latest lists

    @staticmethod
    def pin(spark: SparkSession, cfg: Config) -> "Refresher":
        """The serving model, the newest feature set and the catalog, as the nightly's score used them."""
        root = cfg.tables_root
        ckpt_path = promotion.serving_checkpoint(spark, cfg)
        model, ckpt = checkpoints.load(ckpt_path)
        versions, events_version = score.pin_inputs(spark, root)
        if events_version is None:
            raise ValueError("the sequences table does not record the events version it was built from: rerun features")
        latest = tables.location(root, schema.RECOMMENDATIONS_LATEST)
        tables.require(spark, latest, "score (refresh keeps the nightly's lists fresh)")
        # The catalog as the nightly built it (its popularity fallbacks come from every user's history).
        users = splits.scoring_input(spark, cfg, versions)
        catalog, _ = score.current_catalog(spark, cfg, model, versions, users)
        reranker = None
        if cfg.bandit.serve:
            reranker = bandit.Reranker.open(spark, cfg, bandit.serving_state(spark, cfg), catalog["ids"], users, versions)
        return Refresher(spark, cfg, score.scoring_spec(cfg, ckpt_path, ckpt, datetime.now(timezone.utc).date()),
                         spark.sparkContext.broadcast(catalog), versions, events_version, ckpt["run_id"],
                         tables.version(spark, latest), reranker=reranker)

    def rewritten_since_pinned(self) -> Optional[str]:
        """How another job (a nightly's score, forget) rewrote the latest lists after this job
        pinned its inputs, or None: its pinned model and features are then out of date. Only the
        commits after the last one checked are read, so the check does not grow through the day."""
        latest = tables.location(self.cfg.tables_root, schema.RECOMMENDATIONS_LATEST)
        rewrite, self.latest_version = score.latest_rewrites(self.spark, latest, self.latest_version)
        return rewrite

    def histories(self, users: DataFrame, upto: int) -> DataFrame:
        """user_id, input, seen, profile_cat, profile_num of these users (user_id) with their events
        up to events version `upto`."""
        root, fc = self.cfg.tables_root, self.cfg.features
        index = tables.read_pinned(self.spark, root, schema.USER_INDEX, self.versions)
        seqs = tables.read_pinned(self.spark, root, schema.SEQUENCES, self.versions)
        items = tables.read_pinned(self.spark, root, schema.ITEM_INDEX, self.versions).select("item_id", "item_idx")
        known = (users.join(index, "user_id").join(seqs.select("user_idx", "items", "item_ts"), "user_idx")
                 .select("user_id", F.explode(F.arrays_zip("items", "item_ts")).alias("e"))
                 # The nightly's events sort before new ones at the same time.
                 .select("user_id", F.col("e.items").cast("long").alias("item_idx"), F.col("e.item_ts").alias("ts"),
                         F.lit("").alias("event_id"), F.lit(fc.sequence_event_types[0]).alias("event_type")))
        new = (tables.changes(self.spark, tables.location(root, schema.EVENTS), self.events_version + 1, upto)
               .join(users, "user_id", "left_semi").join(items, "item_id")
               .select("user_id", "item_idx", "ts", "event_id", "event_type"))
        hist = features.sequences(known.unionByName(new), fc, key="user_id").select("user_id", "items")
        prof = (tables.read_pinned(self.spark, root, schema.USER_PROFILE, self.versions)
                .select("user_idx", "profile_cat", "profile_num").join(index, "user_idx"))
        return (hist.join(prof, "user_id", "left")
                .select("user_id", F.col("items").alias("input"), F.col("items").alias("seen"), "profile_cat", "profile_num"))

    def apply(self, batch: DataFrame, batch_id: int) -> None:
        """Rescore the batch's users and replace their rows in gold/recommendations_latest."""
        t0 = time.time()
        # One pass over the batch: its users, and the newest events version it covers.
        by_user = batch.groupBy("user_id").agg(F.max("_commit_version").alias("v")).persist()
        n, upto = by_user.agg(F.count("*"), F.max("v")).first()
        if upto is None:
            by_user.unpersist()
            return
        self.superseded = self.rewritten_since_pinned()
        if self.superseded:
            raise RuntimeError(f"refresh: gold/recommendations_latest was rewritten at {self.superseded}")
        users = by_user.select("user_id")
        lists = score_users(self.histories(users, upto), self.spec, self.catalog_bc)
        if self.reranker is not None:
            lists = self.reranker.rerank(lists)
        ranks = self.spark.range(1, self.cfg.score.k + 1).select(F.col("id").cast("int").alias("rank"))
        today = datetime.now(timezone.utc).date()
        rows = (users.crossJoin(ranks).join(lists, ["user_id", "rank"], "left")
                .select(*[F.col(f.name) if f.name == "because_item_ids" else F.col(f.name).cast(f.dataType).alias(f.name)
                          for f in RECOMMENDATIONS_SCHEMA.fields if f.name not in ("model_run_id", "run_date")],
                        F.lit(self.run_id).alias("model_run_id"), F.lit(today).alias("run_date"),
                        F.col("item_id").isNotNull().alias("_keep")))
        latest = tables.location(self.cfg.tables_root, schema.RECOMMENDATIONS_LATEST)
        meta = {"refresh_events_version": int(upto), "refresh_batch": int(batch_id), "model_run_id": self.run_id}
        tables.retry_on_conflict(
            lambda: tables.replace_rows(self.spark, rows, latest, ["user_id", "rank"], "_keep", metadata=meta),
            f"refresh: batch {batch_id} into {latest}")
        by_user.unpersist()
        self.applied.append((int(batch_id), n, int(upto), time.time() - t0))
        logger.info(f"refresh: batch {batch_id}: {n} users rescored up to events version {upto} "
                    f"({time.time() - t0:.1f}s)")


def checkpoint_location(cfg: Config, events_version: int) -> str:
    base = cfg.refresh.checkpoint or os.path.join(cfg.paths.root, "streams", "refresh")
    return os.path.join(base, f"events-{events_version}")


class SupersededError(RuntimeError):
    """A nightly (or forget) rewrote the latest lists after this refresh job pinned its inputs."""


def run(spark: SparkSession, cfg: Config, once: bool = False) -> dict:
    """Keep gold/recommendations_latest fresh for users with new events: until stopped, or with
    once, for the events there now (then stop)."""
    root = cfg.tables_root
    refresher = Refresher.pin(spark, cfg)
    location = checkpoint_location(cfg, refresher.events_version)
    stream = tables.change_stream(spark, tables.location(root, schema.EVENTS), refresher.events_version + 1)
    logger.info(f"refresh: model {refresher.run_id}, events after version {refresher.events_version} -> "
                f"{tables.location(root, schema.RECOMMENDATIONS_LATEST)} "
                f"(checkpoint {location}; {'what is there now' if once else 'until stopped'})")
    try:
        tables.run_micro_batches(stream.select("user_id", "_commit_version"), refresher.apply, location, once,
                                 cfg.refresh.trigger_seconds)
    except Exception:
        if refresher.superseded:
            raise SupersededError(
                f"refresh stopped: gold/recommendations_latest was rewritten at {refresher.superseded} after this job "
                f"pinned model {refresher.run_id} and the features of events version {refresher.events_version}; start "
                f"refresh again to serve the new lists' model and features (a scheduler that restarts failed "
                f"streams does this)") from None
        raise
    return {"batches": len(refresher.applied), "users": sum(a[1] for a in refresher.applied),
            "applied": refresher.applied, "checkpoint": location, "events_version": refresher.events_version}
