"""Cold-start evaluation (features.holdout_users / features.holdout_items > 0).

Cold users (never trained on): for n in COLD_USER_EVENTS, users with more than n items get their
declared profile, their first n items as history and a behaviour profile from the events before
their (n+1)-th item; the target is that item. Baselines: global popularity and segment popularity
(users with the same declared attributes) over warm users' training histories.
Cold items (cut out of every training sequence): warm test users whose test target is one; the
random baseline is the expected Recall@10 of a random ranking of the unseen catalog, and the
"new arrivals" view ranks only the held-out items.
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import checkpoints, schema, splits, tables
from recsys_spark.baselines import fallback_lists
from recsys_spark.config import Config
from recsys_spark.features import profiles
from recsys_spark.metrics import ndcg_at_k, recall_at_k
from recsys_spark.ranking import attention_topk, encode_users, segment_key
from recsys_spark.splits import held_out
from recsys_spark.topk import first_unseen, topk_excluding

COLD_USER_EVENTS = (0, 1, 3)


def _recall_ndcg(top: np.ndarray, target: np.ndarray, k: int = 10) -> dict:
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

    model = checkpoints.cached_model(ckpt_path)
    rows = users.select("input", "seen", "profile_cat", "profile_num").collect()
    with torch.no_grad():
        items = model.item_vectors()
        u = encode_users(model, [np.asarray(r.input, dtype=np.int64) for r in rows], [r.profile_cat for r in rows],
                         [r.profile_num for r in rows], items)
    ineligible = torch.ones(items.shape[0], dtype=torch.bool)
    ineligible[[c for c in candidates if c < items.shape[0]]] = False
    seen = [np.asarray(r.seen, dtype=np.int64) for r in rows]
    top = topk_excluding(u, items, seen, k, ineligible=ineligible)[0]
    cand = set(candidates)
    random = float(np.mean([min(1.0, k / max(1, len(cand - set(int(x) for x in s)))) for s in seen]))
    return top, random


def _cold_users(spark: SparkSession, cfg: Config, ckpt_path: str, v: dict, popular: np.ndarray, segments: dict,
                k: int) -> dict:
    """{n: {model: Recall/NDCG@10}} for held-out users given their first n events."""
    fc, root = cfg.features, cfg.tables_root
    read = lambda name: tables.read_pinned(spark, root, name, v)  # noqa: E731
    seqs, prof, content = read(schema.SEQUENCES), read(schema.USER_PROFILE), read(schema.ITEM_CONTENT)
    ev = read(schema.EVENTS).join(read(schema.USER_INDEX), "user_id").join(read(schema.ITEM_INDEX), "item_id")
    n_categories = int(content.agg(F.max("category_idx")).first()[0] or 0)
    cold = seqs.where(held_out("user_id", fc.holdout_users, fc.holdout_seed))
    out = {}
    for n in COLD_USER_EVENTS:
        u = cold.where(F.size("items") > n).select(
            "user_idx", F.slice("items", 1, n).cast("array<int>").alias("input"),
            F.element_at("items", n + 1).alias("target"), F.element_at("item_ts", n + 1).alias("cut_ts"))
        cut_events = ev.join(u.select("user_idx", "cut_ts"), "user_idx").where(F.col("ts") < F.col("cut_ts"))
        behaviour = profiles(cut_events.drop("cut_ts"), None, content, n_categories)
        u = (u.join(prof.select("user_idx", "profile_cat"), "user_idx", "left")
             .join(behaviour.select("user_idx", "profile_num"), "user_idx", "left")
             .withColumn("seen", F.col("input"))).persist()
        rows = u.select("user_idx", "input", "target", "profile_cat").orderBy("user_idx").collect()
        if rows:
            recs = attention_topk(u.select("user_idx", "input", "seen", "profile_cat", "profile_num"),
                                  ckpt_path, k, cfg.score.batch_users)
            top = _top_array(recs, [r.user_idx for r in rows], k)
            target, seen = np.array([r.target for r in rows]), [r.input for r in rows]
            seg_top = np.stack([first_unseen(segments.get(segment_key(r.profile_cat or []), popular), [s], k)[0]
                                for r, s in zip(rows, seen)])
            out[n] = {"attention": _recall_ndcg(top, target, k),
                      "popularity": _recall_ndcg(first_unseen(popular, seen, k), target, k),
                      "segment_popularity": _recall_ndcg(seg_top, target, k)}
        u.unpersist()
    return out


def _cold_items(spark: SparkSession, cfg: Config, ckpt_path: str, versions: Optional[dict], content: DataFrame,
                held_items: list, popular: np.ndarray, k: int) -> Optional[dict]:
    """Recall/NDCG@10 of warm test users whose target is a held-out item."""
    fc = cfg.features
    cold_items = content.where(held_out("item_id", fc.holdout_items, fc.holdout_seed)).select(
        F.col("item_idx").alias("target"))
    users = splits.test_users(spark, cfg, versions).join(cold_items, "target", "left_semi").persist()
    rows = users.select("user_idx", "target", "seen").orderBy("user_idx").collect()
    out = None
    if rows:
        top = _top_array(attention_topk(users, ckpt_path, k, cfg.score.batch_users), [r.user_idx for r in rows], k)
        target = np.array([r.target for r in rows])
        n_catalog = content.count()
        random = float(np.mean([min(1.0, k / max(1, n_catalog - len(set(r.seen)))) for r in rows]))
        # The "new arrivals" view: rank only the held-out items (as a slot for new items would).
        among, random_among = _rank_among(ckpt_path, users.orderBy("user_idx"), held_items, k)
        out = {"attention": _recall_ndcg(top, target, k),
               "attention_among_cold": _recall_ndcg(among, target, k),
               "random_among_cold": {"recall@10": random_among, "n_users": len(rows)},
               "popularity": _recall_ndcg(first_unseen(popular, [r.seen for r in rows], k), target, k),
               "random": {"recall@10": random, "n_users": len(rows)},
               "n_items_held_out": cold_items.count()}
    users.unpersist()
    return out


def evaluate(spark: SparkSession, cfg: Config, ckpt_path: str, versions: Optional[dict], k: int = 10) -> dict:
    """{"users": {n: {model: metrics}}, "items": {...} or None}: the cold-start slices with the
    popularity baselines, which see what the model saw (warm users' training items, held-out items cut)."""
    fc, root, v = cfg.features, cfg.tables_root, versions or {}
    seqs = tables.read_pinned(spark, root, schema.SEQUENCES, v)
    prof = tables.read_pinned(spark, root, schema.USER_PROFILE, v)
    content = tables.read_pinned(spark, root, schema.ITEM_CONTENT, v)
    held_items = [r.item_idx for r in content.where(held_out("item_id", fc.holdout_items, fc.holdout_seed))
                  .select(F.col("item_idx").cast("int")).collect()]
    known = F.filter("train_items", lambda x: ~x.isin(held_items)) if held_items else F.col("train_items")
    warm = (seqs.where(~held_out("user_id", fc.holdout_users, fc.holdout_seed))
            .select("user_idx", known.alias("input"))
            .join(prof.select("user_idx", "profile_cat"), "user_idx"))
    popular, segments = fallback_lists(warm, depth=k + max(COLD_USER_EVENTS) + 1)
    return {"users": _cold_users(spark, cfg, ckpt_path, v, popular, segments, k) if fc.holdout_users > 0 else {},
            "items": (_cold_items(spark, cfg, ckpt_path, versions, content, held_items, popular, k)
                      if fc.holdout_items > 0 else None)}


def metric_rows(cold: dict, eval_id: str, model_run_id: str, now: datetime) -> list[tuple]:
    """METRICS_SCHEMA rows of the cold-start slices (split cold_users_<n>_events / cold_items)."""
    rows = []
    for n, by_model in cold["users"].items():
        for name, m in by_model.items():
            rows += [(eval_id, model_run_id, name, metric, 10, float(m[f"{metric}@10"]), m["n_users"],
                      f"cold_users_{n}_events", now) for metric in ("recall", "ndcg")]
    for name, m in (cold["items"] or {}).items():
        if isinstance(m, dict):
            rows += [(eval_id, model_run_id, name, metric, 10, float(m[f"{metric}@10"]), m["n_users"], "cold_items", now)
                     for metric in ("recall", "ndcg") if f"{metric}@10" in m]
    return rows


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
