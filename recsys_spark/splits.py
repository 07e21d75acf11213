"""Splits: which users a stage sees, with which history, at pinned table versions.

- `held_out`: the hashed share of users or items kept out of training for cold-start evaluation;
- `test_users` / `valid_users`: warm users with a held-out target (leave-last-out or time split, as
  the features job built gold/sequences), their history before it and the profile built from
  events before their held-out items (so the profile never leaks what the model is tested on);
- `scoring_input`: every known user, with events or only a profile, with their serving history and
  profile (the nightly scoring run).

Every function returns the columns the ranking seam reads: user_idx, input (history), seen (items
never to recommend), profile_cat, profile_num; evaluation adds target and target_bought (whether the
user bought it).
"""
from __future__ import annotations

from typing import Optional

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import schema, tables
from recsys_spark.config import Config


def held_out(col: str, share: float, seed: int) -> Column:
    """True for the `share` of ids (hashed with seed) held out for cold-start evaluation."""
    if share <= 0:
        return F.lit(False)
    return (F.abs(F.xxhash64(F.lit(seed), F.col(col).cast("string"))) % 100000) < int(round(share * 100000))


def _history_users(spark: SparkSession, cfg: Config, history: Column, target: str,
                   versions: Optional[dict]) -> DataFrame:
    fc = cfg.features
    seqs = tables.read_pinned(spark, cfg.tables_root, schema.SEQUENCES, versions)
    prof = tables.read_pinned(spark, cfg.tables_root, schema.USER_PROFILE, versions)
    # The target is the step right after the history; tables built before steps recorded purchases: unknown.
    bought = (F.element_at("item_bought", F.size(history) + 1) if "item_bought" in seqs.columns
              else F.lit(None).cast("boolean"))
    return (seqs.where(F.col(target).isNotNull() & ~held_out("user_id", fc.holdout_users, fc.holdout_seed))
            .select("user_idx", history.alias("input"), history.alias("seen"), F.col(target).alias("target"),
                    bought.alias("target_bought"))
            .join(prof.select("user_idx", "profile_cat", F.col("train_profile_num").alias("profile_num")),
                  "user_idx", "left"))


def test_users(spark: SparkSession, cfg: Config, versions: Optional[dict] = None) -> DataFrame:
    """user_idx, input (= seen: history before the test target), target, profile columns."""
    hist = F.when(F.col("valid_target").isNotNull(),
                  F.concat("train_items", F.array("valid_target"))).otherwise(F.col("train_items"))
    return _history_users(spark, cfg, hist, "test_target", versions)


def valid_users(spark: SparkSession, cfg: Config, versions: Optional[dict] = None) -> DataFrame:
    """user_idx, input (= seen: training history), target (validation item), profile columns."""
    return _history_users(spark, cfg, F.col("train_items"), "valid_target", versions)


def scoring_input(spark: SparkSession, cfg: Config, versions: Optional[dict] = None) -> DataFrame:
    """Every known user -- with events, or only a profile (a new user) -- with their whole history
    (input = seen, empty without events) and serving profile: user_idx, user_id, input, seen,
    profile_cat, profile_num."""
    seqs = tables.read_pinned(spark, cfg.tables_root, schema.SEQUENCES, versions)
    prof = tables.read_pinned(spark, cfg.tables_root, schema.USER_PROFILE, versions)
    index = tables.read_pinned(spark, cfg.tables_root, schema.USER_INDEX, versions)
    hist = F.coalesce(F.col("items"), F.array().cast("array<int>"))
    return (prof.select("user_idx", "profile_cat", "profile_num").join(index, "user_idx")
            .join(seqs.select("user_idx", "items"), "user_idx", "left")
            .select("user_idx", "user_id", hist.alias("input"), hist.alias("seen"), "profile_cat", "profile_num"))
