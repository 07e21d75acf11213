"""Evaluation: accuracy (Recall, NDCG, MRR, HitRate, MAP @K) and beyond-accuracy metrics (coverage,
Gini of exposure, novelty, intra-list category diversity, popularity bias) with full ranking and
seen items removed.

Protocol (leave-last-out): the model sees each test user's history up to, but not including, the
test target (training items + validation target), ranks every item in the catalog except the ones
in that history, and is scored on where the single test target lands. Popularity counts come from
the same histories, never from test targets.

`recsys_spark.metrics` holds the numpy reference; `spark_metrics` computes the same numbers in
Spark from a (user_idx, rank, item_idx) table. An evaluation is an `Evaluation`: prepared once,
each model measured on the same users (`models` lists them in order), then recorded; `run` is
that recipe.
"""
from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Callable, Iterator, Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import baselines, calibration, checkpoints, cold_start, promotion, schema, slices, splits, tables
from recsys_spark.collaborative import ALS_PARAMS
from recsys_spark.config import Config
from recsys_spark.metrics import exposure_figures, mean_halfwidth
from recsys_spark.ranking import attention_topk
from recsys_spark.table_schemas import METRIC_SLICES_SCHEMA, METRICS_SCHEMA
from recsys_spark.tracking import log_evaluate

logger = logging.getLogger(__name__)


ACCURACY = ("recall", "ndcg", "mrr", "hitrate", "map")
CALIBRATION = ("log_loss", "brier", "ece", "auc")
# The purchase probability's figures: metrics PURCHASE_PREFIX + CALIBRATION, reliability rows of this kind.
PURCHASE_PREFIX, PURCHASE_CALIBRATION = "purchase_", "calibration_purchase"
# Calibration is measured on a seeded sample of at most this many test users, ranked on the driver.
CALIBRATION_USERS = 5000


def _sample(users: DataFrame, n: int, seed: int) -> dict:
    """Up to n users (a seeded sample) as arrays: seen, input, target, profile_cat, profile_num."""
    total = users.count()
    rows = users.sample(fraction=min(1.0, 1.2 * n / max(1, total)), seed=seed).limit(n).collect()
    as_int = lambda v: np.asarray(v if v is not None else (), dtype=np.int64)  # noqa: E731
    return {"seen": [as_int(r.seen) for r in rows], "input": [as_int(r.input) for r in rows],
            "target": np.array([r.target for r in rows], dtype=np.int64),
            "bought": np.array([bool(r.target_bought) for r in rows], dtype=bool),
            "profile_cat": [r.profile_cat for r in rows], "profile_num": [r.profile_num for r in rows]}


def sample_vectors(model, users: dict, batch: int = 512):
    """(user vectors, item vectors) of the model for users collected by _sample."""
    import torch

    from recsys_spark.ranking import encode_users

    with torch.no_grad():
        items = model.item_vectors()
        n = len(users["target"])
        vecs = [encode_users(model, users["input"][lo: lo + batch], users["profile_cat"][lo: lo + batch],
                             users["profile_num"][lo: lo + batch], items) for lo in range(0, n, batch)]
        return (torch.cat(vecs) if vecs else torch.zeros(0, items.shape[1])), items


def _target_ranks(recs: DataFrame, targets: DataFrame) -> DataFrame:
    """user_idx, rank: each target user's rank of their target in recs (null when not listed)."""
    return (targets.join(recs, (recs.user_idx == targets.user_idx) & (recs.item_idx == targets.target), "left")
            .select(targets.user_idx, F.col("rank")))


def spark_metrics(recs: DataFrame, targets: DataFrame, ks: list[int]) -> dict[str, float]:
    """recs: user_idx, rank, item_idx; targets: user_idx, target. Users without a hit count as 0.

    Returns {"recall@k": ..., "ndcg@k": ..., "n_users": ...} averaged over all target users.
    """
    hit = _target_ranks(recs, targets)
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


def user_ndcgs(recs: DataFrame, targets: DataFrame, k: int = 10) -> DataFrame:
    """user_idx, ndcg: each target user's NDCG@k (0 without a hit)."""
    inside = F.col("rank").isNotNull() & (F.col("rank") <= k)
    return _target_ranks(recs, targets).select(
        "user_idx", F.when(inside, 1.0 / F.log2(F.col("rank") + 1.0)).otherwise(0.0).alias("ndcg"))


def paired_difference(a: DataFrame, b: DataFrame) -> dict:
    """Mean of a's minus b's per-user NDCG (user_ndcgs of two models on the same users) with the
    half-width of its 95% normal interval: the users' own spread cancels out of a difference, so
    this tells a real lead from noise where the two models' separate intervals overlap."""
    diff = a.join(b.withColumnRenamed("ndcg", "other"), "user_idx").select((F.col("ndcg") - F.col("other")).alias("d"))
    row = diff.agg(F.avg("d").alias("mean"), F.stddev_samp("d").alias("std"), F.count("*").alias("users")).first()
    users = int(row["users"])
    return {"ndcg@10_diff": float(row["mean"] or 0.0), "halfwidth": mean_halfwidth(row["std"], users), "users": users}


def _catalog_top(recs: DataFrame, k: int, n_items: int) -> DataFrame:
    """user_idx, item_idx, rank of recs' top k, items outside 1..n_items-1 left out."""
    return (recs.where((F.col("rank") <= k) & (F.col("item_idx") >= 1) & (F.col("item_idx") < n_items))
            .select("user_idx", "item_idx", "rank"))


def item_exposures(recs: DataFrame, ks: list[int], n_items: int) -> dict[int, np.ndarray]:
    """{k: (n_items,) how often each catalog item is in recs' top k}, in one Spark pass; the driver
    holds one number per item and k."""
    counted = (_catalog_top(recs, max(ks), n_items).groupBy("item_idx")
               .agg(*[F.sum((F.col("rank") <= k).cast("long")).alias(f"e{k}") for k in ks]).toPandas())
    out = {}
    for k in ks:
        out[k] = np.zeros(n_items)
        out[k][counted["item_idx"].to_numpy(dtype=np.int64)] = counted[f"e{k}"].to_numpy(dtype=float)
    return out


def spark_beyond_accuracy(recs: DataFrame, exposures: dict[int, np.ndarray], popularity: np.ndarray,
                          n_users_pop: int, categories: np.ndarray) -> dict[int, dict[str, float]]:
    """List-level metrics of the top k for each k of exposures (item_exposures of recs), with one
    Spark pass for intra-list diversity whatever the ks; same definitions as metrics.beyond_accuracy.

    recs: user_idx, rank, item_idx. popularity[i]: interactions of item i in the evaluation
    histories; categories[i]: category index of item i. Items outside 1..len(popularity)-1 are
    ignored."""
    ks, n_items = list(exposures), len(popularity)
    top = _catalog_top(recs, max(ks), n_items)
    within = {k: (F.col("rank") <= k).cast("long") for k in ks}
    item_categories = recs.sparkSession.createDataFrame(
        pd.DataFrame({"item_idx": np.arange(1, n_items, dtype=np.int64), "category": categories[1:n_items].astype(np.int64)}))
    per_user = (top.join(item_categories, "item_idx").groupBy("user_idx", "category")
                .agg(*[F.sum(within[k]).alias(f"c{k}") for k in ks])
                .groupBy("user_idx").agg(*[a for k in ks for a in (
                    F.sum(f"c{k}").alias(f"m{k}"), F.sum(F.col(f"c{k}") * (F.col(f"c{k}") - 1)).alias(f"s{k}"))]))
    ild = per_user.agg(*[F.avg(F.when(F.col(f"m{k}") >= 2, 1 - F.col(f"s{k}") / (F.col(f"m{k}") * (F.col(f"m{k}") - 1))))
                         .alias(f"ild{k}") for k in ks]).first()
    return {k: {**exposure_figures(exposures[k], popularity, n_users_pop), "ild": float(ild[f"ild{k}"] or 0.0)}
            for k in ks}


# A model to evaluate: a function returning (its top-K rows in TOPK_SCHEMA, seconds spent fitting).
MakeRecs = Callable[[], "tuple[DataFrame, float]"]


def collaborative_lead(served: dict, als_valid_ndcg: float) -> Optional[str]:
    """A warning when ALS's best validation NDCG@10 lies above the 95% interval of the served model
    (served: the checkpoint's record of it, `collaborative` when train.collaborative chose among
    blends, else `selection`, the kept epoch); None otherwise."""
    kept, half = served.get("valid_ndcg@10"), served.get("halfwidth")
    if kept is None or half is None or als_valid_ndcg <= kept + half:
        return None
    what = (f"the kept epoch {served['epoch']}" if "epoch" in served else f"chosen: {served.get('chosen')}")
    advice = ("" if "chosen" in served else " Set train.collaborative: true to let the validation users choose a "
              "blend with ALS for the served lists.")
    return (f"ALS beats the served model on the validation targets: NDCG@10 {als_valid_ndcg:.4f} against "
            f"{kept:.4f} ± {half:.4f} ({what}, {served.get('valid_users')} users). Data whose order says little "
            f"favours a collaborative model (docs/benchmarks.md, \"Weakly sequential data\").{advice}")


def als_figures_from_training(blend: Optional[dict], points: list[dict]) -> Optional[list[tuple[dict, float]]]:
    """[(params, validation NDCG@10)] of ALS alone at each of points (baselines.als_grid_points) as
    train.collaborative's blend step measured them (checkpoint record `collaborative`): the same
    fits, on the same training histories, ranking the same validation targets, so evaluate need not
    fit them again. None where the record lacks a point (no blend, another grid or maxIter)."""
    alone = {tuple(t.get(k) for k in ALS_PARAMS): t["valid_ndcg@10"]
             for t in (blend or {}).get("tried", []) if t["share"] == 1.0}
    wanted = [tuple(p[k] for k in ALS_PARAMS) for p in points]
    if not wanted or any(w not in alone for w in wanted):
        return None
    return [(p, alone[w]) for p, w in zip(points, wanted)]


class Evaluation:
    """One evaluation of a model (promotion.evaluated_checkpoint) and the configured baselines on the
    test split: the users and the item facts every model is measured against, and the results."""

    def __init__(self, spark: SparkSession, cfg: Config):
        self.spark, self.cfg = spark, cfg
        self.ckpt_path = promotion.evaluated_checkpoint(spark, cfg)
        model, self.ckpt = checkpoints.load(self.ckpt_path)
        self.n_items = model.cfg.n_items
        self.ks = sorted(set(cfg.evaluate.ks) | {10})
        self.versions = self.ckpt.get("data_versions") or None
        self.users = splits.test_users(spark, cfg, self.versions).persist()
        self.n_users = self.users.count()
        if self.n_users == 0:
            raise ValueError("no user has a test target (needs 3+ items with leave_last_out); nothing to evaluate")
        self.popularity = baselines.popularity_counts(self.users, self.n_items)
        self.categories = self._categories()
        self.metrics, self.beyond, self.sliced, self.train_s, self.score_s, self.params = {}, {}, {}, {}, {}, {}
        # The attention model's NDCG@10 minus each baseline's, paired over the same test users.
        self.paired: dict[str, dict] = {}
        self._attention_ndcgs: Optional[DataFrame] = None
        self.calibration: dict[str, dict] = {}
        self.purchase_calibration: dict[str, dict] = {}  # the same figures for "buys this item next"

    def _categories(self) -> np.ndarray:
        content = tables.read_pinned(self.spark, self.cfg.tables_root, schema.ITEM_CONTENT, self.versions)
        categories = np.zeros(self.n_items, dtype=np.int64)
        for r in content.where(F.col("item_idx") < self.n_items).select("item_idx", "category_idx").collect():
            categories[r.item_idx] = int(r.category_idx or 0)
        return categories

    def models(self) -> Iterator[tuple[str, MakeRecs]]:
        """(name, make_recs) of the attention model, then each configured baseline."""
        kmax, ev = max(self.ks), self.cfg.evaluate
        trained_s = sum(h["seconds"] for h in self.ckpt.get("history", []))
        yield "attention", lambda: (attention_topk(self.users, self.ckpt_path, kmax, self.cfg.score.batch_users),
                                    trained_s)
        if "popularity" in ev.baselines:
            yield "popularity", lambda: (baselines.popularity_topk(self.users, self.popularity, kmax), 0.0)
        if "als" in ev.baselines:
            yield "als", self._als
        if "item_knn" in ev.baselines:
            yield "item_knn", lambda: baselines.item_knn_topk(self.spark, self.users, self.n_items, kmax,
                                                              ev.knn_neighbors)

    def _als(self) -> tuple[DataFrame, float]:
        """ALS with its grid chosen on the validation targets, refit on the test histories. The grid's
        validation figures come from training where train.collaborative measured them."""
        ev, t0, k = self.cfg.evaluate, time.time(), max(self.ks)
        points = baselines.als_grid_points({"ranks": ev.als_ranks, "reg_params": ev.als_reg_params,
                                            "alphas": ev.als_alphas}, ev.als_max_iter)
        blend = self.ckpt.get("collaborative")
        tried, validated_in = als_figures_from_training(blend, points), "train"
        if tried is None:
            val = splits.valid_users(self.spark, self.cfg, self.versions).persist()
            tried, validated_in = baselines.als_validation_figures(
                val, self.n_items, k, points, lambda r, t: spark_metrics(r, t, [10])["ndcg@10"],
                seed=self.cfg.train.seed), "evaluate"
            val.unpersist()
        recs, best = baselines.als_refit_topk(self.users, self.n_items, k, tried, seed=self.cfg.train.seed)
        self.params["als"] = {"best": best, "grid": [{**p, "valid_ndcg@10": m} for p, m in tried],
                              "validated_in": validated_in}
        logger.info(f"als grid (validation NDCG@10, measured in {validated_in}): " + ", ".join(
            f"rank={p['rank']} reg={p['regParam']} alpha={p['alpha']}: {m:.4f}" for p, m in tried))
        lead = collaborative_lead(blend or self.ckpt.get("selection") or {}, max(m for _, m in tried))
        if lead:
            self.params["als"]["leads_attention_on_validation"] = True
            logger.warning(lead)
        return recs, time.time() - t0

    def measure(self, name: str, make_recs: MakeRecs) -> None:
        """Accuracy, beyond-accuracy and slices of one model's top-K on the test users."""
        recs, fit_s = make_recs()
        t0 = time.time()
        recs = recs.persist()
        targets = self.users.select("user_idx", "target")
        self.metrics[name] = spark_metrics(recs, targets, self.ks)
        self.score_s[name], self.train_s[name] = time.time() - t0, fit_s
        self._pair(name, user_ndcgs(recs, targets))
        exposures = item_exposures(recs, self.ks, self.n_items)
        self.beyond[name] = spark_beyond_accuracy(recs, exposures, self.popularity, self.n_users, self.categories)
        outcomes = slices.user_outcomes(self.spark, self.cfg, self.users, recs, 10, self.popularity)
        self.sliced[name] = (slices.slice_table(outcomes), slices.fairness_gaps(outcomes, seed=self.cfg.train.seed),
                             slices.item_exposure(exposures[10], self.popularity, self.categories))
        recs.unpersist()

    def _pair(self, name: str, ndcgs: DataFrame) -> None:
        if name == "attention":  # kept, computed now: the model's lists are freed after measuring
            self._attention_ndcgs = ndcgs.persist()
            self._attention_ndcgs.count()
        elif self._attention_ndcgs is not None:
            self.paired[name] = paired_difference(self._attention_ndcgs, ndcgs)

    def measure_calibration(self) -> None:
        """How well the probabilities of the attention model (its checkpoint's calibration) and of
        popularity (calibrated on the validation targets the same way) match what the
        test users did next; on a sample of the test users."""
        seed = self.cfg.train.seed
        test = _sample(self.users, CALIBRATION_USERS, seed)
        users, items = sample_vectors(checkpoints.cached_model(self.ckpt_path), test)
        self.calibration["attention"] = calibration.figures(users, items, test["seen"], test["target"],
                                                            checkpoints.calibration(self.ckpt))
        valid_users = splits.valid_users(self.spark, self.cfg, self.versions)
        valid = _sample(valid_users, CALIBRATION_USERS, seed)
        one, counts = calibration.popularity_vectors(baselines.popularity_counts(valid_users, self.n_items))
        fitted = calibration.fit(one.expand(len(valid["target"]), 1), counts, valid["seen"], valid["target"])
        popularity_purchase = calibration.fit_purchase(one.expand(len(valid["target"]), 1), counts, valid["seen"],
                                                       valid["target"], valid["bought"], fitted)
        one, counts = calibration.popularity_vectors(self.popularity)
        self.calibration["popularity"] = calibration.figures(one.expand(len(test["target"]), 1), counts, test["seen"],
                                                             test["target"], fitted)
        # The probability that the next step buys the item, where the model was calibrated for it.
        attention_purchase = checkpoints.calibration(self.ckpt).get("purchase")
        bought = calibration.purchase_targets(test["target"], test["bought"])
        for name, fitted_purchase, (u, i) in (("attention", attention_purchase, (users, items)),
                                              ("popularity", popularity_purchase, (one.expand(len(bought), 1), counts))):
            if fitted_purchase is not None and bought.any():
                self.purchase_calibration[name] = calibration.figures(u, i, test["seen"], bought, fitted_purchase)

    def judge(self) -> Optional[promotion.Decision]:
        """The promotion decision on this model: its NDCG@10 against the champion's on the same
        users, or popularity's when there is no champion; None when it is the champion already."""
        champion, candidate = promotion.champion_run_id(self.spark, self.cfg), self.ckpt["run_id"]
        if champion == candidate:
            return None
        targets = self.users.select("user_idx", "target")
        champion_path = promotion.checkpoint_of(self.cfg, champion)
        if champion_path:
            recs = attention_topk(self.users, champion_path, 10, self.cfg.score.batch_users).persist()
            reference = spark_metrics(recs, targets, [10])
            paired = paired_difference(self._attention_ndcgs, user_ndcgs(recs, targets))
            recs.unpersist()
        else:
            if champion:
                logger.warning(f"the champion {champion} has no checkpoint under {self.cfg.models_dir}; judging "
                      f"{candidate} against popularity")
            champion = ""
            reference = self.metrics.get("popularity") or spark_metrics(
                baselines.popularity_topk(self.users, self.popularity, 10), targets, [10])
            paired = self.paired.get("popularity")
        gate = promotion.GATE_METRIC
        return promotion.decide(candidate, self.metrics["attention"][gate], "champion" if champion else "popularity",
                                champion, reference[gate], self.cfg.evaluate.promote_tolerance, paired)

    def finish(self) -> dict:
        """Write gold/metrics and gold/metric_slices, print the tables, measure cold start when
        users or items were held out, log to MLflow; the result as a dict."""
        self.users.unpersist()
        if self._attention_ndcgs is not None:
            self._attention_ndcgs.unpersist()
        eval_id = "eval-" + uuid.uuid4().hex[:12]
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        model_run_id = self.ckpt["run_id"]
        metrics_loc = tables.location(self.cfg.tables_root, schema.METRICS)
        tables.append(self.spark.createDataFrame(self._metric_rows(eval_id, now), METRICS_SCHEMA), metrics_loc)
        tables.append(self.spark.createDataFrame(_slice_rows(self.sliced, eval_id, model_run_id, now)
                                                 + _reliability_rows(self.calibration, eval_id, model_run_id, now)
                                                 + _reliability_rows(self.purchase_calibration, eval_id, model_run_id,
                                                                     now, PURCHASE_CALIBRATION),
                                                 METRIC_SLICES_SCHEMA),
                      tables.location(self.cfg.tables_root, schema.METRIC_SLICES))
        logger.info(self.summary(eval_id))
        cold = None
        if self.cfg.features.holdout_users > 0 or self.cfg.features.holdout_items > 0:
            cold = cold_start.evaluate(self.spark, self.cfg, self.ckpt_path, self.versions)
            rows = cold_start.metric_rows(cold, eval_id, model_run_id, now)
            if rows:
                tables.append(self.spark.createDataFrame(rows, METRICS_SCHEMA), metrics_loc)
            logger.info("cold start (held-out users and items, full ranking):\n" + cold_start.format_cold(cold))
        result = {"eval_id": eval_id, "cold": cold, "slices": self.sliced, "model_run_id": model_run_id,
                  "n_users": self.n_users, "metrics": self.metrics, "beyond": self.beyond, "train_s": self.train_s,
                  "score_s": self.score_s, "params": self.params, "calibration": self.calibration,
                  "paired": self.paired}
        result["mlflow_run_id"] = log_evaluate(self.cfg, result)
        return result

    def _metric_rows(self, eval_id: str, now: datetime) -> list[tuple]:
        run_id = self.ckpt["run_id"]
        rows = [(eval_id, run_id, name, metric, k, m[f"{metric}@{k}"], m["n_users"], "test", now)
                for name, m in self.metrics.items() for k in self.ks for metric in ACCURACY]
        rows += [(eval_id, run_id, name, metric, k, float(v), self.metrics[name]["n_users"], "test", now)
                 for name, by_k in self.beyond.items() for k, b in by_k.items() for metric, v in b.items()]
        rows += [(eval_id, run_id, name, metric, c["k"], float(c[metric]), c["users"], "test", now)
                 for name, c in self.calibration.items() for metric in CALIBRATION]
        rows += [(eval_id, run_id, name, PURCHASE_PREFIX + metric, c["k"], float(c[metric]), c["users"], "test", now)
                 for name, c in self.purchase_calibration.items() for metric in CALIBRATION]
        return rows

    def summary(self, eval_id: str) -> str:
        """The printed readout: accuracy, beyond accuracy @10, attention NDCG@10 by slice."""
        ks, lines = self.ks, [f"evaluate {eval_id} (model {self.ckpt['run_id']}, {self.n_users} test users, "
                              f"full ranking, seen removed):"]
        lines.append(f"{'model':<12}" + "".join(f"{f'{m}@{k}':>12}" for k in ks for m in ("recall", "ndcg")))
        for name, m in self.metrics.items():
            lines.append(f"{name:<12}" + "".join(f"{m[f'{metric}@{k}']:>12.4f}" for k in ks
                                                 for metric in ("recall", "ndcg")))
        if self.paired:
            lines.append("attention minus each baseline, NDCG@10 on the same test users (95% interval): " + ", ".join(
                f"{name} {p['ndcg@10_diff']:+.4f} ± {p['halfwidth'] or 0:.4f}" for name, p in self.paired.items()))
        cols = ["mrr", "coverage", "gini", "novelty", "ild", "pop_share"]
        lines.append(f"beyond accuracy @10 (pop_share: recommendations from the top-10% items; they hold "
                     f"{next(iter(self.beyond.values()))[10]['pop_interaction_share']:.1%} of interactions):")
        lines.append(f"{'model':<12}" + "".join(f"{c:>11}" for c in cols))
        for name in self.metrics:
            vals = {**self.beyond[name][10], "mrr": self.metrics[name]["mrr@10"]}
            lines.append(f"{name:<12}" + "".join(f"{vals[c]:>11.4f}" for c in cols))
        if self.calibration:
            lines.append(f"calibration (next-item probability; {next(iter(self.calibration.values()))['users']} test "
                         f"users; brier and ece over each top-10):")
            lines.append(f"{'model':<12}{'temp':>8}" + "".join(f"{c:>11}" for c in CALIBRATION))
            for name, c in self.calibration.items():
                lines.append(f"{name:<12}{c['temperature']:>8.3f}" + "".join(f"{c[m]:>11.4f}" for m in CALIBRATION))
        for name, c in self.purchase_calibration.items():
            lines.append(f"{name + ' (buys it next)':<12}{c['temperature']:>8.3f}"
                         + "".join(f"{c[m]:>11.4f}" for m in CALIBRATION))
        table, gaps, _ = self.sliced["attention"]
        lines.append("attention NDCG@10 by slice (fairness gap = largest difference between groups of >= 30 users, "
                     "95% bootstrap CI):")
        for kind, part in table.groupby("kind", sort=False):
            cells = ", ".join(f"{r.group} {r.ndcg:.3f} (n={r.n_users})" for r in part.itertuples())
            gap = gaps.get(kind)
            gap_s = f"  gap {gap['gap']:.3f} [{gap['ci_low']:.3f}, {gap['ci_high']:.3f}]" if gap else ""
            lines.append(f"  {kind:<13} {cells}{gap_s}")
        return "\n".join(lines)


def _reliability_rows(calibrated: dict, eval_id: str, model_run_id: str, now: datetime,
                      kind: str = "calibration") -> list[tuple]:
    """METRIC_SLICES_SCHEMA rows of each model's reliability diagram: kind calibration (or
    calibration_purchase), group the bin (0 = lowest probabilities), metrics p (mean predicted) and
    hit_rate, n_users = pairs."""
    return [(eval_id, model_run_id, name, kind, str(i), metric, c["k"], float(b[key]), int(b["pairs"]), now)
            for name, c in calibrated.items() for i, b in enumerate(c["reliability"])
            for metric, key in (("p", "p"), ("hit_rate", "hit_rate"))]


def _slice_rows(sliced: dict, eval_id: str, model_run_id: str, now: datetime) -> list[tuple]:
    """METRIC_SLICES_SCHEMA rows: metrics by slice, fairness gaps, item exposure."""
    rows = []
    for name, (table, gaps, exposure) in sliced.items():
        for r in table.itertuples():
            for metric in ("recall", "ndcg"):
                rows.append((eval_id, model_run_id, name, r.kind, str(r.group), metric, 10, float(getattr(r, metric)),
                             int(r.n_users), now))
        for kind, g in gaps.items():
            for metric, key in (("ndcg_gap", "gap"), ("ndcg_gap_ci_low", "ci_low"), ("ndcg_gap_ci_high", "ci_high")):
                rows.append((eval_id, model_run_id, name, kind, "<gap>", metric, 10, float(g[key]), None, now))
        for r in exposure.itertuples():
            for metric in ("rec_share", "interaction_share", "item_share"):
                rows.append((eval_id, model_run_id, name, f"exposure:{r.kind}", str(r.group), metric, 10,
                             float(getattr(r, metric)), None, now))
    return rows


def run(spark: SparkSession, cfg: Config) -> dict:
    """Evaluate the candidate (the newest checkpoint not judged yet, else the champion; or
    score.model_run_id) and the configured baselines on the test split; append one row per (model, metric, k) to gold/metrics, print the
    tables, and promote the candidate when it passes the gate (recsys_spark.promotion). Returns
    {"metrics": {model: {...}}, "beyond", "train_s", "score_s", "params", "cold", "promotion", ...}."""
    evaluation = Evaluation(spark, cfg)
    for name, make_recs in evaluation.models():
        evaluation.measure(name, make_recs)
    evaluation.measure_calibration()
    decision = evaluation.judge()
    result = evaluation.finish()
    if decision is not None:
        promotion.record(spark, cfg, decision, result["eval_id"])
    logger.info(f"promotion: {decision.reason if decision else result['model_run_id'] + ' is the champion already'}")
    return {**result, "promotion": decision}
