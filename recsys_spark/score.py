"""Scoring: per-user top-K over the whole catalog on executors, seen items removed.

The executor side receives only plain values (a checkpoint path, k, column names) and loads the
model once per Python worker. Output rows are ranked 1..K with ties broken by item id.
The recommendations table is partitioned by run_date; re-scoring a date replaces that partition.
"""
from __future__ import annotations

import functools
import time
from datetime import date, datetime, timezone
from typing import Iterator, Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import schema, tables
from recsys_spark.config import Config

TOPK_SCHEMA = "user_idx long, rank int, item_idx long, score double"


@functools.lru_cache(maxsize=2)
def _cached_model(path: str):
    from recsys_spark.train import load_checkpoint

    model, _ = load_checkpoint(path)
    return model


def _attention_topk(batches: Iterator[pd.DataFrame], ckpt_path: str, k: int, batch_users: int) -> Iterator[pd.DataFrame]:
    import torch

    from recsys_spark.model import pad_left, topk_excluding

    torch.set_num_threads(1)
    model = _cached_model(ckpt_path)
    with torch.no_grad():
        items = model.item_vectors()
        for pdf in batches:
            for lo in range(0, len(pdf), batch_users):
                part = pdf.iloc[lo: lo + batch_users]
                seq = torch.as_tensor(pad_left(list(part["input"]), model.cfg.max_len))
                pc = pn = None
                if model.use_profile:
                    pc = torch.as_tensor(np.stack([np.asarray(x if x is not None else [0, 0, 0]) for x in part["profile_cat"]]), dtype=torch.long)
                    n_num = model.cfg.n_profile_num
                    pn = torch.as_tensor(np.stack([np.asarray(x if x is not None and len(x) == n_num else np.zeros(n_num)) for x in part["profile_num"]]), dtype=torch.float32)
                users = model.user_vectors(seq, pc, pn)
                top, scores = topk_excluding(users, items, list(part["seen"]), k)
                yield _to_rows(part["user_idx"].to_numpy(), top, scores)


def _popularity_topk(batches: Iterator[pd.DataFrame], popularity: np.ndarray, k: int) -> Iterator[pd.DataFrame]:
    import torch

    from recsys_spark.model import topk_excluding

    # Break ties by item id inside the score itself: counts are integers, the bonus is < 1.
    n = len(popularity)
    item_vecs = torch.as_tensor(popularity + (n - np.arange(n)) / (n + 1.0), dtype=torch.float64).unsqueeze(1)
    for pdf in batches:
        users = torch.ones(len(pdf), 1, dtype=torch.float64)
        top, scores = topk_excluding(users, item_vecs, list(pdf["seen"]), k)
        yield _to_rows(pdf["user_idx"].to_numpy(), top, np.floor(scores))


def _to_rows(user_idx: np.ndarray, top: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    k = top.shape[1]
    ok = top >= 0
    return pd.DataFrame({
        "user_idx": np.repeat(user_idx, k)[ok.ravel()],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(user_idx))[ok.ravel()],
        "item_idx": top.ravel()[ok.ravel()],
        "score": scores.ravel()[ok.ravel()],
    })


def attention_topk(users: DataFrame, ckpt_path: str, k: int, batch_users: int = 1024) -> DataFrame:
    """users: user_idx, input array<int> (history), seen array<int>, profile_cat, profile_num.
    Returns (user_idx, rank, item_idx, score), computed in executor Python workers."""
    return users.mapInPandas(lambda it: _attention_topk(it, ckpt_path, k, batch_users), TOPK_SCHEMA)


def popularity_topk(users: DataFrame, popularity: np.ndarray, k: int) -> DataFrame:
    """users: user_idx, seen. popularity[i] = interaction count of item i (index 0 unused)."""
    return users.select("user_idx", "seen").mapInPandas(lambda it: _popularity_topk(it, popularity, k), TOPK_SCHEMA)


def scoring_input(spark: SparkSession, cfg: Config, history_col: str, versions: Optional[dict] = None) -> DataFrame:
    """Users with their history (input = seen = history_col) and profile features, at pinned versions."""
    root = cfg.tables_dir
    v = versions or {}
    seqs = tables.read(spark, tables.path(root, schema.SEQUENCES), v.get(schema.SEQUENCES))
    prof = tables.read(spark, tables.path(root, schema.USER_PROFILE), v.get(schema.USER_PROFILE))
    return (seqs.select("user_idx", F.col(history_col).alias("input"), F.col(history_col).alias("seen"))
            .join(prof.select("user_idx", "profile_cat", "profile_num"), "user_idx", "left"))


def run(spark: SparkSession, cfg: Config) -> dict:
    """Score every user with the latest (or configured) checkpoint into the recommendations table."""
    from recsys_spark.train import latest_checkpoint, load_checkpoint

    root = cfg.tables_dir
    ckpt_path = latest_checkpoint(cfg.models_dir, cfg.score.model_run_id)
    _, ckpt = load_checkpoint(ckpt_path)
    run_id = ckpt["run_id"]
    run_date = date.fromisoformat(cfg.score.run_date) if cfg.score.run_date else datetime.now(timezone.utc).date()
    for name in (schema.SEQUENCES, schema.USER_PROFILE, schema.ITEM_INDEX, schema.USER_INDEX):
        tables.require(spark, tables.path(root, name), "features")
    t0 = time.time()
    users = scoring_input(spark, cfg, "items")
    top = attention_topk(users, ckpt_path, cfg.score.k, cfg.score.batch_users)
    item_index = tables.read(spark, tables.path(root, schema.ITEM_INDEX))
    user_index = tables.read(spark, tables.path(root, schema.USER_INDEX))
    recs = (top.join(user_index, "user_idx").join(item_index, "item_idx")
            .select("user_id", "rank", "item_id", F.col("score").cast("float").alias("score"),
                    F.lit(run_id).alias("model_run_id"), F.lit(run_date).alias("run_date")))
    loc = tables.path(root, schema.RECOMMENDATIONS)
    if tables.exists(spark, loc):
        tables.replace_partition(recs, loc, f"run_date = '{run_date.isoformat()}'", ["run_date"])
    else:
        tables.overwrite(recs, loc, partition_by=["run_date"])
    version = tables.version(spark, loc)
    written = tables.read(spark, loc, version).where(F.col("run_date") == F.lit(run_date))
    n_rows, n_users = written.agg(F.count("*"), F.countDistinct("user_id")).first()
    elapsed = time.time() - t0
    print(f"score: {n_users} users x top-{cfg.score.k} with model {run_id} for {run_date} -> {loc} "
          f"(version {version}, {n_rows} rows, {elapsed:.1f}s)", flush=True)
    return {"run_id": run_id, "run_date": run_date.isoformat(), "rows": n_rows, "users": n_users,
            "version": version, "seconds": elapsed}
