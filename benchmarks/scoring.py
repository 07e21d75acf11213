"""Scoring benchmark: users/s of top-K for all users at several catalog sizes, ours vs Spark ALS.

    python -m benchmarks.scoring --out RESULT.json [--sizes 10000x10000,100000x50000,1000000x100000]
        [--k 100] [--dim 64] [--history 20] [--repeats 3] [--als-max-s 1800] [--engines attention,topk,als]

Per size (users x items) it builds one synthetic catalog and runs, in the same Spark session:
- attention: the product's scoring path (recsys_spark.ranking.score_users): the attention encoder
  (d=dim, 2 layers, max_len 50, random weights: speed does not depend on them) computes each user's
  vector from a history of `history` items, then the blocked top-K with those items removed;
- topk: the same top-K kernel on the executors given precomputed user factors (ranking.factor_topk) (the like-for-like kernel vs ALS);
- als: Spark MLlib ALSModel.recommendForAllUsers(k) over the same user and item factors
  (rank = dim). ALS does not remove seen items; ours does.
Each engine's output is materialised with Spark's `noop` sink, so the time covers computing every
row and nothing else. users_per_s = users / wall_s (median of --repeats runs; one run when the first
took over 120 s). ALS is skipped at a size where its time predicted from the previous size
(proportional to users x items) exceeds --als-max-s.
peak_rss_mb is the peak summed RSS of this process tree (driver JVM + Python workers).

Writes {"rows": [{"engine", "users", "items", "k", "users_per_s", "wall_s", "runs", "peak_rss_mb"}], ...}.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Optional
import time

import numpy as np

from benchmarks import harness
from benchmarks.harness import MemoryMonitor, write_result


def _factors_df(spark, n: int, dim: int, seed: int, id_col: str = "id"):
    from pyspark.sql import functions as F

    cols = [F.randn(seed * 1000 + j).cast("float") for j in range(dim)]
    return spark.range(n).select(F.col("id").cast("int").alias(id_col), F.array(*cols).alias("features"))


def _write_random_model(path: str, n_items: int, dim: int, max_len: int = 50) -> str:
    """A checkpoint of an untrained attention model of the given size (scoring cost only)."""
    import torch

    from recsys_spark.model import AttentionRecommender, ModelConfig

    torch.manual_seed(0)
    mcfg = ModelConfig(n_items=n_items, max_len=max_len, d_model=dim, n_heads=2, n_layers=2, dropout=0.0,
                       use_profile=False, use_content=False)
    model = AttentionRecommender(mcfg)
    os.makedirs(path, exist_ok=True)
    torch.save({"model_config": mcfg.to_dict(), "state_dict": model.state_dict(), "run_id": "bench"},
               os.path.join(path, "model.pt"))
    return path


def _timed(fn, monitor, name: str, repeats: int) -> tuple[float, int, float]:
    walls = []
    with monitor.measuring(name):
        for i in range(repeats):
            t0 = time.time()
            fn()
            walls.append(time.time() - t0)
            if walls[0] > 120:
                break
    return statistics.median(walls), len(walls), monitor.peaks.get(name, 0.0)


def run_size(spark, n_users: int, n_items: int, k: int, dim: int, history: int, engines: list[str],
             repeats: int, monitor, work: str, block_mb: float) -> list[dict]:
    from pyspark.ml.recommendation import ALSModel
    from pyspark.sql import functions as F

    from recsys_spark.ranking import ScoringSpec, factor_topk, item_catalog, score_users

    rng = np.random.default_rng(n_items)
    item_vecs = rng.standard_normal((n_items + 1, dim), dtype=np.float32)
    item_vecs[0] = 0  # row 0 = padding; items are 1..n_items
    parts = max(2, spark.sparkContext.defaultParallelism * 2, n_users // 50_000)
    users = (_factors_df(spark, n_users, dim, seed=1)
             .withColumn("user_idx", F.col("id").cast("long"))
             .withColumn("input", F.expr(f"transform(sequence(1, {history}), x -> "
                                         f"cast(pmod(hash(id, x), {n_items}) + 1 as int))"))
             .withColumn("seen", F.col("input"))
             .repartition(parts).persist())
    users.count()
    rows = []

    def sink(df):
        df.write.format("noop").mode("overwrite").save()

    if "attention" in engines:
        ckpt = _write_random_model(os.path.join(work, f"model-{n_items}"), n_items + 1, dim)
        model_spec = ScoringSpec(k=k, ckpt_path=ckpt, batch_users=1024, block_mb=block_mb, device="cpu")
        model_catalog = spark.sparkContext.broadcast(item_catalog(_model_items(ckpt)))
        rows.append(("attention", lambda: sink(score_users(users.select("user_idx", "input", "seen"), model_spec,
                                                           model_catalog))))
    if "topk" in engines:
        rows.append(("topk", lambda: sink(factor_topk(users, item_vecs, k, budget_mb=block_mb))))
    out = []
    for name, fn in rows:
        wall, runs, peak = _timed(fn, monitor, f"{name}-{n_users}", repeats)
        out.append({"engine": name, "users": n_users, "items": n_items, "k": k, "dim": dim,
                    "users_per_s": n_users / wall, "wall_s": wall, "runs": runs, "peak_rss_mb": peak})
        print(json.dumps(out[-1]), flush=True)
    if "als" in engines:
        item_df = spark.createDataFrame([(i, item_vecs[i].tolist()) for i in range(1, n_items + 1)],
                                        "id int, features array<float>").persist()
        item_df.count()
        jvm = spark.sparkContext._jvm
        jmodel = jvm.org.apache.spark.ml.recommendation.ALSModel("als-bench", dim, users.select("id", "features")._jdf,
                                                                 item_df._jdf)
        # Constructed directly (not by ALS.fit), so the output column names are set here.
        jmodel.setUserCol("user").setItemCol("item")
        als = ALSModel(jmodel)
        wall, runs, peak = _timed(lambda: sink(als.recommendForAllUsers(k)), monitor, f"als-{n_users}", repeats)
        out.append({"engine": "als", "users": n_users, "items": n_items, "k": k, "dim": dim,
                    "users_per_s": n_users / wall, "wall_s": wall, "runs": runs, "peak_rss_mb": peak})
        print(json.dumps(out[-1]), flush=True)
        item_df.unpersist()
    users.unpersist()
    return out


def _model_items(ckpt: str) -> np.ndarray:
    from recsys_spark import checkpoints

    return checkpoints.cached_model(ckpt).item_vectors().detach().numpy()


def _als_skip(last_als: Optional[tuple], n_users: int, n_items: int, max_s: float) -> Optional[str]:
    """Why ALS is skipped at this size (its time predicted from the last size exceeds max_s), or None."""
    if last_als is None:
        return None
    predicted = last_als[1] * n_users * n_items / last_als[0]
    if predicted <= max_s:
        return None
    return f"predicted {predicted:.0f}s from the previous size (cost grows with users x items) > --als-max-s {max_s:.0f}"


def _all_sizes(spark, args, sizes: list, engines: list, monitor) -> list[dict]:
    rows = []
    with harness.work_dir(args.work, "bench-scoring-") as work:
        last_als = None  # (users * items, wall_s) of the last ALS run
        for n_users, n_items in sizes:
            skip = _als_skip(last_als, n_users, n_items, args.als_max_s) if "als" in engines else None
            eng = [e for e in engines if e != "als" or skip is None]
            size_rows = run_size(spark, n_users, n_items, args.k, args.dim, args.history, eng, args.repeats,
                                 monitor, work, args.block_mb)
            rows += size_rows
            last_als = next(((n_users * n_items, r["wall_s"]) for r in size_rows if r["engine"] == "als"), last_als)
            if skip:
                print(f"als at {n_users}x{n_items} skipped: {skip}", flush=True)
                rows.append({"engine": "als", "users": n_users, "items": n_items, "k": args.k, "dim": args.dim,
                             "users_per_s": None, "wall_s": None, "runs": 0, "peak_rss_mb": None, "skipped": skip})
    return rows


def main(argv=None) -> int:
    p = harness.parser(__doc__, dataset=False, config=None)
    p.add_argument("--sizes", default="10000x10000,100000x50000,1000000x100000")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--history", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--als-max-s", type=float, default=1800.0, help="skip ALS where predicted slower")
    p.add_argument("--engines", default="attention,topk,als")
    p.add_argument("--block-mb", type=float, default=8.0)
    args = p.parse_args(argv)
    sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
    cfg = harness.load_config(args.config, ["spark.conf={'spark.driver.memory': '12g', 'spark.ui.enabled': 'false'}"]
                              + args.overrides)
    if cfg is None:
        return 2
    monitor = MemoryMonitor()
    try:
        with harness.spark_session(cfg) as spark:
            rows = _all_sizes(spark, args, sizes, args.engines.split(","), monitor)
    finally:
        monitor.close()
    result = {"benchmark": "scoring", "k": args.k, "dim": args.dim, "history": args.history,
              "spark_master": cfg.spark.master, "cores": os.cpu_count(), "rows": rows}
    print(f"\n{'engine':<10}{'users':>10}{'items':>9}{'k':>5}{'users/s':>12}{'wall s':>9}{'runs':>5}{'peak MB':>9}")
    for r in rows:
        if r["wall_s"] is None:
            print(f"{r['engine']:<10}{r['users']:>10}{r['items']:>9}{r['k']:>5}{'skipped':>12}")
            continue
        print(f"{r['engine']:<10}{r['users']:>10}{r['items']:>9}{r['k']:>5}{r['users_per_s']:>12.0f}"
              f"{r['wall_s']:>9.1f}{r['runs']:>5}{r['peak_rss_mb']:>9.0f}")
    for n_users, n_items in sizes:
        by = {r["engine"]: r for r in rows if r["users"] == n_users and r["items"] == n_items and r["wall_s"]}
        if "als" in by:
            for e in ("attention", "topk"):
                if e in by:
                    print(f"{n_users}x{n_items}: {e} / als users/s = {by[e]['users_per_s'] / by['als']['users_per_s']:.1f}x")
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
