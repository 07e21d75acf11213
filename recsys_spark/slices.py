"""Who a model serves well: metrics by user slice, fairness gaps with bootstrap intervals, and item
exposure by item group.

User slices (every test user falls in one group of each):
- activity: history length bucket (0-4, 5-9, 10-19, 20-49, 50+ items);
- user_history: cold (<= 2 items of history) or warm;
- target_item: cold (the held-out item has <= 5 interactions in the evaluation histories) or warm;
- each declared attribute of silver/users that is present (age_band, gender, region).
For each slice kind the fairness gap is the largest difference in NDCG@k between two of its groups
(groups with at least `min_group` users), with a percentile bootstrap interval (users resampled
within each group, `n_boot` replicates, seeded).

Item exposure: the share of recommendation slots going to each item-popularity decile (decile 1 =
the 10% most popular items) and to each category, next to that group's share of interactions.

Spark computes each user's outcome (rank of the held-out item) and joins the slices; the per-user
table (one row per test user) is then summarised on the driver with pandas/numpy.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import schema, tables
from recsys_spark.config import Config

ACTIVITY_BUCKETS = [(50, "50+"), (20, "20-49"), (10, "10-19"), (5, "5-9")]  # below 5: "0-4"
COLD_USER_MAX = 2
COLD_ITEM_MAX = 5


def activity_bucket(n: F.Column) -> F.Column:
    """History length -> bucket label."""
    expr = F.when(n >= ACTIVITY_BUCKETS[0][0], ACTIVITY_BUCKETS[0][1])
    for lo, label in ACTIVITY_BUCKETS[1:]:
        expr = expr.when(n >= lo, label)
    return expr.otherwise("0-4")


def user_outcomes(spark: SparkSession, cfg: Config, users: DataFrame, recs: DataFrame, k: int,
                  popularity: np.ndarray) -> pd.DataFrame:
    """One row per test user: hit@k, ndcg@k and every slice label, as pandas."""
    hits = recs.where(F.col("rank") <= k).select("user_idx", F.col("item_idx").alias("target"), "rank")
    n_hist = F.size("input")
    df = (users.select("user_idx", "target", n_hist.alias("n_history"))
          .join(hits, ["user_idx", "target"], "left")
          .select("user_idx", "target",
                  F.when(F.col("rank").isNotNull(), 1.0).otherwise(0.0).alias("hit"),
                  F.when(F.col("rank").isNotNull(), 1.0 / F.log2(F.col("rank") + 1.0)).otherwise(0.0).alias("ndcg"),
                  activity_bucket(F.col("n_history")).alias("activity"),
                  F.when(F.col("n_history") <= COLD_USER_MAX, "cold").otherwise("warm").alias("user_history")))
    users_path = tables.location(cfg.tables_root, schema.USERS)
    if tables.exists(spark, users_path):
        attrs = [c for c in schema.USER_ATTRIBUTE_COLUMNS if c in tables.read(spark, users_path).columns]
        if attrs:
            index = tables.read(spark, tables.location(cfg.tables_root, schema.USER_INDEX))
            declared = tables.read(spark, users_path).select("user_id", *attrs).dropDuplicates(["user_id"])
            df = df.join(index.join(declared, "user_id").drop("user_id"), "user_idx", "left")
            for a in attrs:
                df = df.withColumn(a, F.coalesce(F.col(a).cast("string"), F.lit("unknown")))
    outcomes = df.toPandas()
    # The target's popularity is looked up here rather than joined: the array is on the driver already.
    target = outcomes.pop("target").to_numpy()
    known = target < len(popularity)
    target_pop = np.where(known, popularity[np.where(known, target, 0)], 0)
    outcomes.insert(outcomes.columns.get_loc("user_history") + 1, "target_item",
                    np.where(target_pop <= COLD_ITEM_MAX, "cold", "warm"))
    return outcomes


def slice_kinds(outcomes: pd.DataFrame) -> list[str]:
    return [c for c in outcomes.columns if c not in ("user_idx", "hit", "ndcg")]


def slice_table(outcomes: pd.DataFrame) -> pd.DataFrame:
    """kind, group, n_users, recall, ndcg for every slice kind and group."""
    parts = []
    for kind in slice_kinds(outcomes):
        g = outcomes.groupby(kind).agg(n_users=("hit", "size"), recall=("hit", "mean"), ndcg=("ndcg", "mean"))
        g = g.reset_index().rename(columns={kind: "group"}).assign(kind=kind)
        if kind == "activity":  # buckets in increasing history length
            order = {label: i for i, label in enumerate(["0-4"] + [b for _, b in reversed(ACTIVITY_BUCKETS)])}
            g = g.sort_values("group", key=lambda s: s.map(order))
        parts.append(g)
    return pd.concat(parts, ignore_index=True)[["kind", "group", "n_users", "recall", "ndcg"]]


def fairness_gap(values: dict[str, np.ndarray], n_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """Largest difference of group means and its percentile bootstrap interval (users resampled
    with replacement within each group)."""
    names = sorted(values)
    means = np.array([values[g].mean() for g in names])
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, len(names)))
    for j, g in enumerate(names):
        v = values[g]
        idx = rng.integers(0, len(v), size=(n_boot, len(v)))
        boots[:, j] = v[idx].mean(axis=1)
    gaps = boots.max(axis=1) - boots.min(axis=1)
    lo, hi = np.quantile(gaps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"gap": float(means.max() - means.min()), "ci_low": float(lo), "ci_high": float(hi),
            "best": names[int(means.argmax())], "worst": names[int(means.argmin())]}


def fairness_gaps(outcomes: pd.DataFrame, metric: str = "ndcg", min_group: int = 30, n_boot: int = 200,
                  seed: int = 0) -> dict[str, dict]:
    out = {}
    for kind in slice_kinds(outcomes):
        groups = {str(g): part[metric].to_numpy() for g, part in outcomes.groupby(kind) if len(part) >= min_group}
        if len(groups) >= 2:
            out[kind] = fairness_gap(groups, n_boot, seed)
    return out


def item_exposure(exposure: np.ndarray, popularity: np.ndarray, categories: np.ndarray) -> pd.DataFrame:
    """kind (popularity_decile | category), group, rec_share, interaction_share, item_share;
    exposure[i]: how often item i was recommended (evaluate.item_exposures)."""
    n_items = len(popularity)
    ids = np.arange(1, n_items)
    order = np.lexsort((ids, -popularity[1:]))  # most popular first, ties by id
    decile = np.zeros(n_items, dtype=np.int64)
    decile[ids[order]] = np.arange(len(order)) * 10 // len(order) + 1
    frames = []
    for kind, labels in (("popularity_decile", decile), ("category", categories)):
        df = pd.DataFrame({"group": labels[1:], "rec": exposure[1:], "pop": popularity[1:], "items": 1})
        g = df.groupby("group").sum()
        frames.append(pd.DataFrame({"kind": kind, "group": g.index.astype(str),
                                    "rec_share": g["rec"] / max(g["rec"].sum(), 1),
                                    "interaction_share": g["pop"] / max(g["pop"].sum(), 1),
                                    "item_share": g["items"] / g["items"].sum()}))
    return pd.concat(frames, ignore_index=True)
