"""Baselines a Spark user would run instead, and the lists for users the model cannot serve:
popularity (global and per segment of declared attributes), Spark MLlib ALS (implicit) and
item-to-item kNN.

All rank the full catalog with the user's history removed through the same top-K kernel as the
attention model (recsys_spark.ranking), so the protocols are identical. Inputs are DataFrames of
(user_idx, input array<int>, seen array<int>) as built by recsys_spark.splits.
"""
from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark.ranking import TOPK_SCHEMA, factor_topk, topk_rows

# Items kept per popularity list (global and per segment) for the users the model cannot serve.
FALLBACK_DEPTH = 200


def popularity_counts(users: DataFrame, n_items: int) -> np.ndarray:
    """Interaction counts per item over the users' input histories (dense, index = item_idx)."""
    counts = np.zeros(n_items, dtype=np.float64)
    for r in users.select(F.explode("input").alias("item_idx")).groupBy("item_idx").count().collect():
        if 0 <= r.item_idx < n_items:
            counts[r.item_idx] = r["count"]
    return counts


def _popularity_partition(batches: Iterator[pd.DataFrame], popularity: np.ndarray, k: int) -> Iterator[pd.DataFrame]:
    import torch

    from recsys_spark.topk import topk_excluding

    # Break ties by item id inside the score itself: counts are integers, the bonus is < 1.
    n = len(popularity)
    item_vecs = torch.as_tensor(popularity + (n - np.arange(n)) / (n + 1.0), dtype=torch.float64).unsqueeze(1)
    for pdf in batches:
        users = torch.ones(len(pdf), 1, dtype=torch.float64)
        top, scores = topk_excluding(users, item_vecs, list(pdf["seen"]), k)
        yield topk_rows(pdf["user_idx"].to_numpy(), top, np.floor(scores))


def popularity_topk(users: DataFrame, popularity: np.ndarray, k: int) -> DataFrame:
    """users: user_idx, seen. popularity[i] = interaction count of item i (index 0 unused)."""
    return users.select("user_idx", "seen").mapInPandas(lambda it: _popularity_partition(it, popularity, k),
                                                        TOPK_SCHEMA)


def fallback_lists(users: DataFrame, depth: int = FALLBACK_DEPTH, min_users: int = 20) -> tuple[np.ndarray, dict]:
    """(global, {segment: items}) popularity rankings, most popular first (ties by item index), from
    users' histories (user_idx, input, profile_cat; one row per user). An item's popularity is the
    number of users who have it. A segment (one combination of declared attributes, keyed as
    ranking.segment_key) needs min_users users with history, else its users get the global list."""
    w = Window.partitionBy("seg").orderBy(F.desc("n"), "item")
    seg = F.concat_ws(",", F.transform("profile_cat", lambda x: x.cast("string")))
    active = users.where(F.size("input") > 0).select(seg.alias("seg"), "input")
    # An item once per user: the counts are numbers of users, in one pass over the histories. Each
    # user is in one segment, so an item's global count is the sum of its segment counts.
    counts = (active.select("seg", F.explode(F.array_distinct("input")).alias("item"))
              .groupBy("seg", "item").agg(F.count("*").alias("n")).persist())
    sizes = active.groupBy("seg").count().where(F.col("count") >= min_users)
    top = (counts.join(sizes, "seg", "left_semi").withColumn("r", F.row_number().over(w)).where(F.col("r") <= depth)
           .groupBy("seg").agg(F.array_sort(F.collect_list(F.struct("r", "item"))).alias("l")).collect())
    segments = {r.seg: np.array([x.item for x in r.l], dtype=np.int64) for r in top}
    glob = (counts.groupBy("item").agg(F.sum("n").alias("n")).orderBy(F.desc("n"), "item")
            .limit(depth).collect())
    counts.unpersist()
    return np.array([r.item for r in glob], dtype=np.int64), segments


def interactions(users: DataFrame) -> DataFrame:
    """(user_idx, item_idx, weight = number of occurrences in the user's input history)."""
    return (users.select("user_idx", F.explode("input").alias("item_idx"))
            .groupBy("user_idx", "item_idx").agg(F.count("*").cast("float").alias("weight")))


@dataclass
class ALSResult:
    recs: DataFrame
    params: dict
    fit_seconds: float


def als_model(train: DataFrame, rank: int, reg: float, alpha: float, seed: int = 42, max_iter: int = 10):
    """Implicit ALS (Spark MLlib) fitted on train (user_idx, item_idx, weight).

    The users and items are split into as many blocks as Spark runs tasks at once: MLlib's default
    of 10 makes a 2-core machine run each half-iteration in 5 waves, a block per core in one."""
    from pyspark.ml.recommendation import ALS

    blocks = max(1, train.sparkSession.sparkContext.defaultParallelism)
    return ALS(rank=rank, regParam=reg, alpha=alpha, implicitPrefs=True, maxIter=max_iter, seed=seed,
               userCol="user_idx", itemCol="item_idx", ratingCol="weight", coldStartStrategy="drop",
               nonnegative=False, numUserBlocks=blocks, numItemBlocks=blocks).fit(train)


def item_factors(model, n_items: int) -> np.ndarray:
    """(n_items, rank) float32 item factors of a fitted ALS model (zeros for items it never saw)."""
    factors = np.zeros((n_items, model.rank), dtype=np.float32)
    for r in model.itemFactors.collect():
        if 0 <= r.id < n_items:
            factors[r.id] = r.features
    return factors


def als_grid_points(grid: dict, max_iter: int = 10) -> list[dict]:
    """Every point of grid (ranks, reg_params, alphas) as the params ALS is fitted with:
    [{rank, regParam, alpha, maxIter}]."""
    return [{"rank": rank, "regParam": reg, "alpha": alpha, "maxIter": max_iter}
            for rank, reg, alpha in itertools.product(grid["ranks"], grid["reg_params"], grid["alphas"])]


# ALS fits of a grid run this many at a time: a fit on a small dataset is mostly job scheduling
# and driver round trips between short stages, which a second fit's tasks fill (ml-latest-small's
# 4-point grid on 2 cores: 27.4 s against 34.0 s one at a time, medians of 3; 4 at a time no better).
ALS_CONCURRENT_FITS = 2


def _each_point(points: list[dict], fit) -> list:
    """[fit(p) for p in points], ALS_CONCURRENT_FITS at a time (Spark takes jobs from several threads)."""
    with ThreadPoolExecutor(ALS_CONCURRENT_FITS) as pool:
        return list(pool.map(fit, points))


def als_factor_grid(train: DataFrame, n_items: int, grid: dict, seed: int = 42, max_iter: int = 10) -> list[dict]:
    """Implicit ALS fitted on train (user_idx, item_idx, weight) at every point of grid (ranks,
    reg_params, alphas): [{rank, regParam, alpha, maxIter, factors (n_items, rank)}]."""
    return _each_point(als_grid_points(grid, max_iter), lambda p: {
        **p, "factors": item_factors(als_model(train, p["rank"], p["regParam"], p["alpha"], seed, max_iter), n_items)})


def als_fit_topk(train: DataFrame, users: DataFrame, n_items: int, k: int, rank: int, reg: float, alpha: float,
                 seed: int = 42, max_iter: int = 10) -> ALSResult:
    """Fit implicit ALS on train (user_idx, item_idx, weight); top-k for users, their `seen` removed.

    Users unknown to the model get a zero vector (every score 0, so ties fall to item id order).
    """
    t0 = time.time()
    model = als_model(train, rank, reg, alpha, seed, max_iter)
    factors = item_factors(model, n_items)
    elapsed = time.time() - t0
    uf = model.userFactors.select(F.col("id").cast("long").alias("user_idx"), "features")
    recs = factor_topk(users.select("user_idx", "seen").join(uf, "user_idx", "left"), factors, k)
    return ALSResult(recs, {"rank": rank, "regParam": reg, "alpha": alpha, "maxIter": max_iter}, elapsed)


def als_validation_figures(valid_users: DataFrame, n_items: int, k: int, points: list[dict], metric_fn,
                           seed: int = 42) -> list[tuple[dict, float]]:
    """[(params, metric_fn(recs, validation targets))] of ALS fitted on the validation users' inputs at
    each of points (als_grid_points); metric_fn: higher is better."""
    val_train = interactions(valid_users.select("user_idx", "input")).persist()
    val_targets = valid_users.select("user_idx", "target")

    def figure(p: dict) -> tuple[dict, float]:
        res = als_fit_topk(val_train, valid_users, n_items, k, p["rank"], p["regParam"], p["alpha"], seed,
                           p["maxIter"])
        return res.params, metric_fn(res.recs, val_targets)

    tried = _each_point(points, figure)
    val_train.unpersist()
    return tried


def als_refit_topk(test_users: DataFrame, n_items: int, k: int, tried: list[tuple[dict, float]],
                   seed: int = 42) -> tuple[DataFrame, dict]:
    """The best of tried (als_validation_figures) refit on the test histories: (test recs, its params
    with the fit time)."""
    best = max(tried, key=lambda t: t[1])[0]
    test_train = interactions(test_users.select("user_idx", "input")).persist()
    res = als_fit_topk(test_train, test_users, n_items, k, best["rank"], best["regParam"], best["alpha"], seed,
                       best["maxIter"])
    return res.recs, {**best, "fit_seconds": res.fit_seconds}


def als_grid(valid_users: DataFrame, test_users: DataFrame, n_items: int, k: int, grid: dict, metric_fn,
             seed: int = 42, max_iter: int = 10) -> tuple[DataFrame, dict, list]:
    """Choose ALS hyper-parameters on validation users, refit on the test histories, rank test users.

    metric_fn(recs, targets) -> float (higher is better), computed on validation targets only.
    Returns (test recs, best params with fit time, [(params, validation metric), ...]).
    """
    tried = als_validation_figures(valid_users, n_items, k, als_grid_points(grid, max_iter), metric_fn, seed)
    recs, best = als_refit_topk(test_users, n_items, k, tried, seed)
    return recs, best, tried


def item_neighbors(users: DataFrame, n_neighbors: int, history_cap: int = 200) -> DataFrame:
    """Cosine item-item similarity from co-occurrence in user histories, top n_neighbors per item.

    sim(i, j) = c_ij / sqrt(c_i c_j), c_ij = users having both. Each user's most recent
    `history_cap` distinct items are used, bounding the pair count per user.
    Output: (item_idx, neighbor, sim).
    """
    hist = users.select("user_idx", F.explode(F.slice(F.array_distinct(F.reverse("input")), 1, history_cap))
                        .alias("item_idx"))
    counts = hist.groupBy("item_idx").agg(F.count("*").alias("c"))
    pairs = (hist.alias("a").join(hist.alias("b"), "user_idx")
             .where(F.col("a.item_idx") != F.col("b.item_idx"))
             .groupBy(F.col("a.item_idx").alias("item_idx"), F.col("b.item_idx").alias("neighbor"))
             .agg(F.count("*").alias("cij")))
    sims = (pairs.join(counts, "item_idx")
            .join(counts.select(F.col("item_idx").alias("neighbor"), F.col("c").alias("cn")), "neighbor")
            .select("item_idx", "neighbor", (F.col("cij") / F.sqrt(F.col("c") * F.col("cn"))).alias("sim")))
    w = Window.partitionBy("item_idx").orderBy(F.desc("sim"), "neighbor")
    return sims.withColumn("r", F.row_number().over(w)).where(F.col("r") <= n_neighbors).drop("r")


def _knn_topk(batches: Iterator[pd.DataFrame], nbr_idx: np.ndarray, nbr_sim: np.ndarray, k: int,
              history_cap: int) -> Iterator[pd.DataFrame]:
    import torch

    from recsys_spark.topk import topk_from_scores

    torch.set_num_threads(1)
    n_items = nbr_idx.shape[0]
    for pdf in batches:
        for lo in range(0, len(pdf), 512):
            part = pdf.iloc[lo: lo + 512]
            scores = np.zeros((len(part), n_items), dtype=np.float32)
            for r, hist in enumerate(part["input"]):
                h = np.unique(np.asarray(hist if hist is not None else [], dtype=np.int64)[-history_cap:])
                h = h[(h > 0) & (h < n_items)]
                np.add.at(scores[r], nbr_idx[h].ravel(), nbr_sim[h].ravel())
            top, sc = topk_from_scores(torch.as_tensor(scores), list(part["seen"]), k)
            yield topk_rows(part["user_idx"].to_numpy(), top, sc)


def neighbor_table(neighbors: pd.DataFrame, n_items: int, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """(nbr_idx, nbr_sim), each (n_items, n_neighbors): row i holds item i's neighbours
    (item_neighbors' rows) by falling similarity, ties by smaller id; 0 = padding item, never
    recommended. Ids outside the catalog are dropped."""
    inside = neighbors[neighbors["item_idx"].between(0, n_items - 1) & neighbors["neighbor"].between(0, n_items - 1)]
    item, nbr = inside["item_idx"].to_numpy(np.int64), inside["neighbor"].to_numpy(np.int64)
    sim = inside["sim"].to_numpy(np.float64)
    order = np.lexsort((nbr, -sim, item))
    item, nbr, sim = item[order], nbr[order], sim[order]
    starts = np.flatnonzero(np.r_[True, item[1:] != item[:-1]])
    slot = np.arange(len(item)) - np.repeat(starts, np.diff(np.r_[starts, len(item)]))
    keep = slot < n_neighbors
    nbr_idx = np.zeros((n_items, n_neighbors), dtype=np.int64)
    nbr_sim = np.zeros((n_items, n_neighbors), dtype=np.float32)
    nbr_idx[item[keep], slot[keep]] = nbr[keep]
    nbr_sim[item[keep], slot[keep]] = sim[keep]
    return nbr_idx, nbr_sim


def item_knn_topk(spark: SparkSession, users: DataFrame, n_items: int, k: int, n_neighbors: int = 100,
                  history_cap: int = 200) -> tuple[DataFrame, float]:
    """Item-kNN: score(u, j) = sum over u's history items i of sim(i, j). Returns (recs, fit seconds)."""
    t0 = time.time()
    nbr_idx, nbr_sim = neighbor_table(item_neighbors(users, n_neighbors, history_cap).toPandas(), n_items, n_neighbors)
    elapsed = time.time() - t0
    recs = users.select("user_idx", "input", "seen").mapInPandas(
        lambda it: _knn_topk(it, nbr_idx, nbr_sim, k, history_cap), TOPK_SCHEMA)
    return recs, elapsed
