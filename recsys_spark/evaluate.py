"""Evaluation: accuracy (Recall, NDCG, MRR, HitRate, MAP @K) and beyond-accuracy metrics (coverage,
Gini of exposure, novelty, intra-list category diversity, popularity bias) with full ranking and
seen items removed.

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
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark import schema, tables
from recsys_spark.config import Config
from recsys_spark.score import attention_topk, popularity_topk


ACCURACY = ("recall", "ndcg", "mrr", "hitrate", "map")


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
        aggs.append(F.avg(F.when(inside, 1.0 / F.col("rank")).otherwise(0.0)).alias(f"mrr@{k}"))
    row = hit.agg(*aggs).first().asDict()
    out = {key: (int(v) if key == "n_users" else float(v or 0.0)) for key, v in row.items()}
    for k in ks:  # one held-out item per user: HitRate@k is Recall@k and MAP@k is MRR@k
        out[f"hitrate@{k}"], out[f"map@{k}"] = out[f"recall@{k}"], out[f"mrr@{k}"]
    return out


def head_items(popularity: np.ndarray, share: float = 0.1) -> np.ndarray:
    """Ids of the `share` most popular catalog items (ties by smaller id); item 0 is padding."""
    n = len(popularity) - 1
    order = np.lexsort((np.arange(1, n + 1), -popularity[1:]))
    return order[: max(1, int(np.ceil(share * n)))] + 1


def spark_beyond_accuracy(recs: DataFrame, k: int, popularity: np.ndarray, n_users_pop: int,
                          categories: np.ndarray) -> dict[str, float]:
    """List-level metrics of the top k in Spark; same definitions as metrics.beyond_accuracy.

    recs: user_idx, rank, item_idx. popularity[i]: interactions of item i in the evaluation
    histories; categories[i]: category index of item i."""
    spark = recs.sparkSession
    n_items = len(popularity)
    top = recs.where(F.col("rank") <= k).select("user_idx", "item_idx").persist()
    items = spark.createDataFrame([(i, float(popularity[i]), int(categories[i]), False) for i in range(1, n_items)],
                                  "item_idx long, pop double, category long, head boolean")
    head = set(int(i) for i in head_items(popularity))
    items = items.withColumn("head", F.col("item_idx").isin(list(head)))
    exposure = (items.join(top.groupBy("item_idx").agg(F.count("*").alias("e")), "item_idx", "left")
                .select(F.coalesce("e", F.lit(0)).cast("double").alias("e")))
    ranked = exposure.withColumn("i", F.row_number().over(Window.orderBy("e")))
    n = n_items - 1
    g = ranked.agg(F.sum((2 * F.col("i") - n - 1) * F.col("e")).alias("num"), F.sum("e").alias("tot"),
                   F.sum((F.col("e") > 0).cast("long")).alias("covered")).first()
    per_item = top.join(items, "item_idx")
    row = per_item.agg(
        F.avg(-F.log2(F.greatest(F.col("pop"), F.lit(1.0)) / F.lit(float(n_users_pop)))).alias("novelty"),
        F.avg(F.col("head").cast("double")).alias("pop_share")).first()
    ild = (per_item.groupBy("user_idx", "category").count()
           .groupBy("user_idx").agg(F.sum("count").alias("m"), F.sum(F.col("count") * (F.col("count") - 1)).alias("s"))
           .where(F.col("m") >= 2).agg(F.avg(1 - F.col("s") / (F.col("m") * (F.col("m") - 1)))).first()[0])
    top.unpersist()
    head_mask = np.zeros(n_items, dtype=bool)
    head_mask[list(head)] = True
    return {"coverage": float(g.covered) / n, "gini": float(g.num / (n * g.tot)) if g.tot else 0.0,
            "novelty": float(row.novelty or 0.0), "ild": float(ild or 0.0), "pop_share": float(row.pop_share or 0.0),
            "pop_interaction_share": float(popularity[head_mask].sum() / popularity[1:].sum())}


def _history_users(spark: SparkSession, cfg: Config, history, target: str, versions: dict | None) -> DataFrame:
    """Warm users (not held out for cold-start evaluation) with a target. Their profile is the one
    built from events before their held-out targets (train_profile_num)."""
    from recsys_spark.features import held_out

    v = versions or {}
    root = cfg.tables_dir
    fc = cfg.features
    seqs = tables.read(spark, tables.path(root, schema.SEQUENCES), v.get(schema.SEQUENCES))
    prof = tables.read(spark, tables.path(root, schema.USER_PROFILE), v.get(schema.USER_PROFILE))
    return (seqs.where(F.col(target).isNotNull() & ~held_out("user_id", fc.holdout_users, fc.holdout_seed))
            .select("user_idx", history.alias("input"), history.alias("seen"), F.col(target).alias("target"))
            .join(prof.select("user_idx", "profile_cat", F.col("train_profile_num").alias("profile_num")),
                  "user_idx", "left"))


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
    from recsys_spark import baselines, slices
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
    results, train_s, score_s, params, beyond, sliced = {}, {}, {}, {}, {}, {}
    pop_eval = popularity_counts(users, n_items)
    categories = np.zeros(n_items, dtype=np.int64)
    content = tables.read(spark, tables.path(cfg.tables_dir, schema.ITEM_CONTENT), (versions or {}).get(schema.ITEM_CONTENT))
    for r in content.where(F.col("item_idx") < n_items).select("item_idx", "category_idx").collect():
        categories[r.item_idx] = int(r.category_idx or 0)

    def timed(name, recs_fn, fit_seconds=0.0):
        if monitor:
            monitor.start(name)
        t0 = time.time()
        recs = recs_fn().persist()
        results[name] = spark_metrics(recs, targets, ks)
        score_s[name] = time.time() - t0
        train_s[name] = fit_seconds
        if monitor:
            monitor.stop()
        beyond[name] = {k: spark_beyond_accuracy(recs, k, pop_eval, n_users, categories) for k in ks}
        outcomes = slices.user_outcomes(spark, cfg, users, recs, 10, pop_eval)
        sliced[name] = (slices.slice_table(outcomes), slices.fairness_gaps(outcomes, seed=cfg.train.seed),
                        slices.item_exposure(recs, 10, pop_eval, categories))
        recs.unpersist()

    timed("attention", lambda: attention_topk(users, ckpt_path, kmax, cfg.score.batch_users),
          sum(h["seconds"] for h in ckpt.get("history", [])))
    ev = cfg.evaluate
    if "popularity" in ev.baselines:
        timed("popularity", lambda: popularity_topk(users, pop_eval, kmax))
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
            for name, m in results.items() for k in ks for metric in ACCURACY]
    rows += [(eval_id, ckpt["run_id"], name, metric, k, float(v), results[name]["n_users"], "test", now)
             for name, by_k in beyond.items() for k, b in by_k.items() for metric, v in b.items()]
    loc = tables.path(cfg.tables_dir, schema.METRICS)
    tables.append(spark.createDataFrame(rows, schema.METRICS_SCHEMA), loc)
    srows = []
    for name, (table, gaps, exposure) in sliced.items():
        for r in table.itertuples():
            for metric in ("recall", "ndcg"):
                srows.append((eval_id, ckpt["run_id"], name, r.kind, str(r.group), metric, 10, float(getattr(r, metric)),
                              int(r.n_users), now))
        for kind, g in gaps.items():
            for metric, key in (("ndcg_gap", "gap"), ("ndcg_gap_ci_low", "ci_low"), ("ndcg_gap_ci_high", "ci_high")):
                srows.append((eval_id, ckpt["run_id"], name, kind, "<gap>", metric, 10, float(g[key]), None, now))
        for r in exposure.itertuples():
            for metric in ("rec_share", "interaction_share", "item_share"):
                srows.append((eval_id, ckpt["run_id"], name, f"exposure:{r.kind}", str(r.group), metric, 10,
                              float(getattr(r, metric)), None, now))
    tables.append(spark.createDataFrame(srows, schema.METRIC_SLICES_SCHEMA), tables.path(cfg.tables_dir, schema.METRIC_SLICES))
    print(f"evaluate {eval_id} (model {ckpt['run_id']}, {n_users} test users, full ranking, seen removed):")
    print(f"{'model':<12}" + "".join(f"{f'{m}@{k}':>12}" for k in ks for m in ("recall", "ndcg")))
    for name, m in results.items():
        print(f"{name:<12}" + "".join(f"{m[f'{metric}@{k}']:>12.4f}" for k in ks for metric in ("recall", "ndcg")))
    cols = ["mrr", "coverage", "gini", "novelty", "ild", "pop_share"]
    print(f"beyond accuracy @10 (pop_share: recommendations from the top-10% items; they hold "
          f"{next(iter(beyond.values()))[10]['pop_interaction_share']:.1%} of interactions):")
    print(f"{'model':<12}" + "".join(f"{c:>11}" for c in cols))
    for name in results:
        vals = {**beyond[name][10], "mrr": results[name]["mrr@10"]}
        print(f"{name:<12}" + "".join(f"{vals[c]:>11.4f}" for c in cols))
    table, gaps, _ = sliced["attention"]
    print("attention NDCG@10 by slice (fairness gap = largest difference between groups of >= 30 users, "
          "95% bootstrap CI):")
    for kind, part in table.groupby("kind", sort=False):
        cells = ", ".join(f"{r.group} {r.ndcg:.3f} (n={r.n_users})" for r in part.itertuples())
        gap = gaps.get(kind)
        gap_s = f"  gap {gap['gap']:.3f} [{gap['ci_low']:.3f}, {gap['ci_high']:.3f}]" if gap else ""
        print(f"  {kind:<13} {cells}{gap_s}")
    cold = None
    if cfg.features.holdout_users > 0 or cfg.features.holdout_items > 0:
        cold = cold_start(spark, cfg, ckpt_path, versions)
        crow = []
        for n, by_model in cold["users"].items():
            for name, m in by_model.items():
                crow += [(eval_id, ckpt["run_id"], name, metric, 10, float(m[f"{metric}@10"]), m["n_users"],
                          f"cold_users_{n}_events", now) for metric in ("recall", "ndcg")]
        if cold["items"]:
            for name, m in cold["items"].items():
                if isinstance(m, dict):
                    crow += [(eval_id, ckpt["run_id"], name, metric, 10, float(m[f"{metric}@10"]), m["n_users"],
                              "cold_items", now) for metric in ("recall", "ndcg") if f"{metric}@10" in m]
        if crow:
            tables.append(spark.createDataFrame(crow, schema.METRICS_SCHEMA), loc)
        print("cold start (held-out users and items, full ranking):\n" + format_cold(cold), flush=True)
    from recsys_spark.tracking import log_evaluate

    result = {"eval_id": eval_id, "cold": cold, "slices": sliced, "model_run_id": ckpt["run_id"], "n_users": n_users, "metrics": results,
            "beyond": beyond, "train_s": train_s, "score_s": score_s, "params": params}
    result["mlflow_run_id"] = log_evaluate(cfg, result)
    return result


# ------------------------------------------------------------------------------------------------
# Cold start (features.holdout_users / features.holdout_items > 0)

COLD_USER_EVENTS = (0, 1, 3)


def _recall_ndcg(top: np.ndarray, target: np.ndarray, k: int = 10) -> dict:
    from recsys_spark.metrics import ndcg_at_k, recall_at_k

    return {"recall@10": recall_at_k(top, target, k), "ndcg@10": ndcg_at_k(top, target, k), "n_users": int(len(target))}


def _top_array(recs: DataFrame, users: list, k: int) -> np.ndarray:
    """(len(users), k) item indexes from TOPK_SCHEMA rows, in the order of `users` (user_idx list)."""
    by_user: dict = {}
    for r in recs.collect():
        by_user.setdefault(r.user_idx, {})[r["rank"]] = r.item_idx
    return np.array([[by_user.get(u, {}).get(j, -1) for j in range(1, k + 1)] for u in users], dtype=np.int64)


def _rank_among(ckpt_path: str, users: DataFrame, candidates: list, k: int) -> tuple[np.ndarray, float]:
    """Top-k of each user among `candidates` only (seen removed), on the driver, and the expected
    Recall@k of a random ranking of those candidates. users: ordered rows with input, seen, profile."""
    import torch

    from recsys_spark.model import pad_left, pad_right
    from recsys_spark.score import _cached_model
    from recsys_spark.topk import topk_excluding

    model = _cached_model(ckpt_path)
    rows = users.select("input", "seen", "profile_cat", "profile_num").collect()
    with torch.no_grad():
        items = model.item_vectors()
    ineligible = torch.ones(items.shape[0], dtype=torch.bool)
    ineligible[[c for c in candidates if c < items.shape[0]]] = False
    pc = torch.as_tensor(pad_right([r.profile_cat for r in rows], len(model.cfg.attr_cardinalities) or 1))
    pn = (torch.as_tensor(np.array([r.profile_num for r in rows], dtype=np.float32))
          if model.use_behaviour else None)
    with torch.no_grad():
        u = model.user_vectors(torch.as_tensor(pad_left([r.input for r in rows], model.cfg.max_len)),
                               pc if model.use_profile else None, pn, items)
    seen = [np.asarray(r.seen, dtype=np.int64) for r in rows]
    top = topk_excluding(u, items, seen, k, ineligible=ineligible)[0]
    cand = set(candidates)
    random = float(np.mean([min(1.0, k / max(1, len(cand - set(int(x) for x in s)))) for s in seen]))
    return top, random


def cold_start(spark: SparkSession, cfg: Config, ckpt_path: str, versions: dict | None, k: int = 10) -> dict:
    """Cold-start slices of the held-out users and items, with the popularity baselines.

    Cold users (never trained on): for n in COLD_USER_EVENTS, users with more than n items get their
    declared profile, their first n items as history and a behaviour profile from the events before
    their (n+1)-th item; the target is that item. Baselines: global popularity and segment popularity
    (users with the same declared attributes) over warm users' training histories.
    Cold items (cut out of every training sequence): warm test users whose test target is one; the
    random baseline is the expected Recall@10 of a random ranking of the unseen catalog.
    """
    from recsys_spark import features as feat
    from recsys_spark.score import attention_topk, fallback_lists, segment_key
    from recsys_spark.topk import first_unseen

    fc, root, v = cfg.features, cfg.tables_dir, versions or {}
    out: dict = {"users": {}, "items": None}
    seqs = tables.read(spark, tables.path(root, schema.SEQUENCES), v.get(schema.SEQUENCES))
    prof = tables.read(spark, tables.path(root, schema.USER_PROFILE), v.get(schema.USER_PROFILE))
    content = tables.read(spark, tables.path(root, schema.ITEM_CONTENT), v.get(schema.ITEM_CONTENT))
    # Popularity baselines see what the model saw: warm users' training items, held-out items cut.
    held_items = [r.item_idx for r in content.where(feat.held_out("item_id", fc.holdout_items, fc.holdout_seed))
                  .select(F.col("item_idx").cast("int")).collect()]
    known = F.filter("train_items", lambda x: ~x.isin(held_items)) if held_items else F.col("train_items")
    warm = (seqs.where(~feat.held_out("user_id", fc.holdout_users, fc.holdout_seed))
            .select("user_idx", known.alias("input"))
            .join(prof.select("user_idx", "profile_cat"), "user_idx"))
    popular, segments = fallback_lists(warm, depth=k + max(COLD_USER_EVENTS) + 1)

    if fc.holdout_users > 0:
        events = tables.read(spark, tables.path(root, schema.EVENTS), v.get(schema.EVENTS))
        uidx = tables.read(spark, tables.path(root, schema.USER_INDEX), v.get(schema.USER_INDEX))
        iidx = tables.read(spark, tables.path(root, schema.ITEM_INDEX), v.get(schema.ITEM_INDEX))
        ev = events.join(uidx, "user_id").join(iidx, "item_id")
        ref_ts = ev.agg(F.max("ts")).first()[0]
        n_categories = int(content.agg(F.max("category_idx")).first()[0] or 0)
        cold = seqs.where(feat.held_out("user_id", fc.holdout_users, fc.holdout_seed))
        for n in COLD_USER_EVENTS:
            u = cold.where(F.size("items") > n).select(
                "user_idx", F.slice("items", 1, n).cast("array<int>").alias("input"),
                F.element_at("items", n + 1).alias("target"), F.element_at("item_ts", n + 1).alias("cut_ts"))
            cut_events = ev.join(u.select("user_idx", "cut_ts"), "user_idx").where(F.col("ts") < F.col("cut_ts"))
            behaviour = feat.profiles(cut_events.drop("cut_ts"), None, content, n_categories, ref_ts)
            u = (u.join(prof.select("user_idx", "profile_cat"), "user_idx", "left")
                 .join(behaviour.select("user_idx", "profile_num"), "user_idx", "left")
                 .withColumn("seen", F.col("input"))).persist()
            rows = u.select("user_idx", "input", "target", "profile_cat").orderBy("user_idx").collect()
            if not rows:
                continue
            recs = attention_topk(u.select("user_idx", "input", "seen", "profile_cat", "profile_num"),
                                  ckpt_path, k, cfg.score.batch_users)
            top = _top_array(recs, [r.user_idx for r in rows], k)
            target = np.array([r.target for r in rows])
            seen = [r.input for r in rows]
            seg_top = np.stack([first_unseen(segments.get(segment_key(r.profile_cat or []), popular), [s], k)[0]
                                for r, s in zip(rows, seen)])
            out["users"][n] = {"attention": _recall_ndcg(top, target, k),
                               "popularity": _recall_ndcg(first_unseen(popular, seen, k), target, k),
                               "segment_popularity": _recall_ndcg(seg_top, target, k)}
            u.unpersist()

    if fc.holdout_items > 0:
        cold_items = content.where(feat.held_out("item_id", fc.holdout_items, fc.holdout_seed)).select(
            F.col("item_idx").alias("target"))
        users = test_users(spark, cfg, versions).join(cold_items, "target", "left_semi").persist()
        rows = users.select("user_idx", "target", "seen").orderBy("user_idx").collect()
        if rows:
            recs = attention_topk(users, ckpt_path, k, cfg.score.batch_users)
            top = _top_array(recs, [r.user_idx for r in rows], k)
            target = np.array([r.target for r in rows])
            n_catalog = content.count()
            random = float(np.mean([min(1.0, k / max(1, n_catalog - len(set(r.seen)))) for r in rows]))
            # The "new arrivals" view: rank only the held-out items (as a slot for new items would).
            among, random_among = _rank_among(ckpt_path, users.orderBy("user_idx"), held_items, k)
            out["items"] = {"attention": _recall_ndcg(top, target, k),
                            "attention_among_cold": _recall_ndcg(among, target, k),
                            "random_among_cold": {"recall@10": random_among, "n_users": len(rows)},
                            "popularity": _recall_ndcg(first_unseen(popular, [r.seen for r in rows], k), target, k),
                            "random": {"recall@10": random, "n_users": len(rows)},
                            "n_items_held_out": cold_items.count()}
        users.unpersist()
    return out


def format_cold(cold: dict) -> str:
    lines = []
    for n, m in sorted(cold.get("users", {}).items()):
        a, p, s = m["attention"], m["popularity"], m["segment_popularity"]
        lift = a["recall@10"] / p["recall@10"] if p["recall@10"] else float("inf")
        lines.append(f"  cold users, {n} events (n={a['n_users']}): Recall@10 attention {a['recall@10']:.4f}, "
                     f"popularity {p['recall@10']:.4f}, segment popularity {s['recall@10']:.4f} "
                     f"(attention/popularity {lift:.2f}x); NDCG@10 {a['ndcg@10']:.4f} / {p['ndcg@10']:.4f} / {s['ndcg@10']:.4f}")
    it = cold.get("items")
    if it:
        a, r = it["attention"], it["random"]
        aa, ra = it["attention_among_cold"], it["random_among_cold"]
        lines.append(f"  cold items ({it['n_items_held_out']} held out; {a['n_users']} test targets): Recall@10 over the "
                     f"whole catalog: attention {a['recall@10']:.4f}, random {r['recall@10']:.4f} "
                     f"({a['recall@10'] / r['recall@10']:.1f}x), popularity {it['popularity']['recall@10']:.4f}; "
                     f"among the held-out items only: attention {aa['recall@10']:.4f}, random {ra['recall@10']:.4f} "
                     f"({aa['recall@10'] / ra['recall@10']:.1f}x)")
    return "\n".join(lines)
