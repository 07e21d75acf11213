"""Evaluation: Recall@K and NDCG@K with full ranking and seen items removed.

Protocol (leave-last-out): the model sees each test user's history up to, but not including, the
test target (training items + validation target), ranks every item in the catalog except the ones
in that history, and is scored on where the single test target lands. Popularity counts come from
the same histories, never from test targets.

`recsys_spark.metrics` holds the numpy reference; `spark_metrics` computes the same numbers in
Spark from a (user_idx, rank, item_idx) table.
"""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import schema, tables
from recsys_spark.config import Config
from recsys_spark.score import attention_topk, popularity_topk


def spark_metrics(recs: DataFrame, targets: DataFrame, ks: list[int]) -> dict[str, float]:
    """recs: user_idx, rank, item_idx; targets: user_idx, target. Users without a hit count as 0.

    Returns {"recall@k": ..., "ndcg@k": ..., "n_users": ...} averaged over all target users.
    """
    hit = (targets.join(recs, (recs.user_idx == targets.user_idx) & (recs.item_idx == targets.target), "left")
           .select(targets.user_idx, F.col("rank")))
    aggs = [F.count("*").alias("n_users")]
    for k in ks:
        inside = F.col("rank").isNotNull() & (F.col("rank") <= k)
        aggs.append(F.avg(F.when(inside, 1.0).otherwise(0.0)).alias(f"recall@{k}"))
        aggs.append(F.avg(F.when(inside, 1.0 / F.log2(F.col("rank") + 1.0)).otherwise(0.0)).alias(f"ndcg@{k}"))
    row = hit.agg(*aggs).first().asDict()
    return {key: (int(v) if key == "n_users" else float(v or 0.0)) for key, v in row.items()}


def _history_users(spark: SparkSession, cfg: Config, history, target: str, versions: dict | None) -> DataFrame:
    v = versions or {}
    root = cfg.tables_dir
    seqs = tables.read(spark, tables.path(root, schema.SEQUENCES), v.get(schema.SEQUENCES))
    prof = tables.read(spark, tables.path(root, schema.USER_PROFILE), v.get(schema.USER_PROFILE))
    return (seqs.where(F.col(target).isNotNull())
            .select("user_idx", history.alias("input"), history.alias("seen"), F.col(target).alias("target"))
            .join(prof.select("user_idx", "profile_cat", "profile_num"), "user_idx", "left"))


def test_users(spark: SparkSession, cfg: Config, versions: dict | None = None) -> DataFrame:
    """user_idx, input (= seen: history before the test target), target, profile columns."""
    hist = F.when(F.col("valid_target").isNotNull(),
                  F.concat("train_items", F.array("valid_target"))).otherwise(F.col("train_items"))
    return _history_users(spark, cfg, hist, "test_target", versions)


def valid_users(spark: SparkSession, cfg: Config, versions: dict | None = None) -> DataFrame:
    """user_idx, input (= seen: training history), target (validation item), profile columns."""
    return _history_users(spark, cfg, F.col("train_items"), "valid_target", versions)


def popularity_counts(users: DataFrame, n_items: int) -> np.ndarray:
    """Interaction counts per item over the users' input histories (dense, index = item_idx)."""
    counts = np.zeros(n_items, dtype=np.float64)
    for r in users.select(F.explode("input").alias("item_idx")).groupBy("item_idx").count().collect():
        if 0 <= r.item_idx < n_items:
            counts[r.item_idx] = r["count"]
    return counts


def run(spark: SparkSession, cfg: Config, monitor=None) -> dict:
    """Evaluate the latest checkpoint and the configured baselines on the test split.

    monitor, if given, has start(model_name) / stop() called around each model's work.

    Appends one row per (model, metric, k) to the metrics table and prints a table. Returns
    {"metrics": {model: {...}}, "train_s": {model: s}, "score_s": {model: s}, ...}.
    """
    from recsys_spark import baselines
    from recsys_spark.train import latest_checkpoint, load_checkpoint

    ckpt_path = latest_checkpoint(cfg.models_dir, cfg.score.model_run_id)
    model, ckpt = load_checkpoint(ckpt_path)
    n_items = model.cfg.n_items
    ks = sorted(set(cfg.evaluate.ks) | {10})
    kmax = max(ks)
    versions = ckpt.get("data_versions") or None
    users = test_users(spark, cfg, versions).persist()
    n_users = users.count()
    if n_users == 0:
        raise ValueError("no user has a test target (needs 3+ items with leave_last_out); nothing to evaluate")
    targets = users.select("user_idx", "target")
    results, train_s, score_s, params = {}, {}, {}, {}

    def timed(name, recs_fn, fit_seconds=0.0):
        if monitor:
            monitor.start(name)
        t0 = time.time()
        recs = recs_fn()
        results[name] = spark_metrics(recs, targets, ks)
        score_s[name] = time.time() - t0
        train_s[name] = fit_seconds
        if monitor:
            monitor.stop()

    timed("attention", lambda: attention_topk(users, ckpt_path, kmax, cfg.score.batch_users),
          sum(h["seconds"] for h in ckpt.get("history", [])))
    ev = cfg.evaluate
    if "popularity" in ev.baselines:
        pop = popularity_counts(users, n_items)
        timed("popularity", lambda: popularity_topk(users, pop, kmax))
    if "als" in ev.baselines:
        if monitor:
            monitor.start("als")
        t0 = time.time()
        val = valid_users(spark, cfg, versions).persist()
        grid = {"ranks": ev.als_ranks, "reg_params": ev.als_reg_params, "alphas": ev.als_alphas}
        recs, best, tried = baselines.als_grid(
            val, users, n_items, kmax, grid, lambda r, t: spark_metrics(r, t, [10])["ndcg@10"], seed=cfg.train.seed)
        val.unpersist()
        fit = time.time() - t0
        params["als"] = {"best": best, "grid": [{**p, "valid_ndcg@10": m} for p, m in tried]}
        print(f"als grid (validation NDCG@10): " + ", ".join(
            f"rank={p['rank']} reg={p['regParam']} alpha={p['alpha']}: {m:.4f}" for p, m in tried), flush=True)
        timed("als", lambda: recs, fit)
    if "item_knn" in ev.baselines:
        if monitor:
            monitor.start("item_knn")
        recs, fit = baselines.item_knn_topk(spark, users, n_items, kmax, ev.knn_neighbors)
        timed("item_knn", lambda: recs, fit)
    users.unpersist()

    eval_id = "eval-" + uuid.uuid4().hex[:12]
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = [(eval_id, ckpt["run_id"], name, metric, k, m[f"{metric}@{k}"], m["n_users"], "test", now)
            for name, m in results.items() for k in ks for metric in ("recall", "ndcg")]
    loc = tables.path(cfg.tables_dir, schema.METRICS)
    tables.append(spark.createDataFrame(rows, schema.METRICS_SCHEMA), loc)
    print(f"evaluate {eval_id} (model {ckpt['run_id']}, {n_users} test users, full ranking, seen removed):")
    print(f"{'model':<12}" + "".join(f"{f'{m}@{k}':>12}" for k in ks for m in ("recall", "ndcg")))
    for name, m in results.items():
        print(f"{name:<12}" + "".join(f"{m[f'{metric}@{k}']:>12.4f}" for k in ks for metric in ("recall", "ndcg")))
    return {"eval_id": eval_id, "model_run_id": ckpt["run_id"], "n_users": n_users, "metrics": results,
            "train_s": train_s, "score_s": score_s, "params": params}
