"""A feedback loop: a LinUCB re-ranker of the model's candidates that learns from logged rewards,
and its simulation over days on the synthetic shop (`python -m recsys_spark bandit-simulate`).

Each user's candidates are the serving model's top `bandit.pool` items. A (user, item) pair is
described by a few context features (FEATURES, each in [0, 1]):
  relevance   the model's softmax probability of the item among the user's candidates;
  popularity  log1p(the item's interactions) / log1p(the most popular item's);
  price       the item's price / the highest price (0 without one);
  value       relevance x price, the expected-value term that score.objective ranks by;
and a constant. The reward of showing the item (bandit.reward: its revenue or its click) is modelled
as linear in them, shared by all users and items (LinUCB, Li et al. 2010). The state is a ridge
regression's A = prior I + sum x x^T and b = prior theta0 + sum r x. A list shows the k candidates
with the highest theta.x + alpha sqrt(x^T A^-1 x), theta = A^-1 b: the bonus is optimism about
what the log has seen little of: before any feedback it favours the candidates with the largest
features (popular, pricey), and the bonus shrinks as rewards come in. theta0 (all weight on
relevance) is the prior's best guess: the model's own order. An update adds one day's sums over the
shown items (one Spark aggregation), so the state after n days is the same however the days are
batched.

The simulation plays bandit.days days on the shop's test users with the A/B simulator's behaviour
(abtest.click_chance, sim_convert, prices), outcomes drawn from a hash of (seed, day, user, item):
policies showing the same item to the same user on the same day meet the same luck. Three policies
over the same candidates:
  greedy   the model's top k every day;
  uniform  k candidates drawn uniformly each day (pure exploration);
  bandit   LinUCB, updated after each day from its own exposures.
Each run appends its days to gold/bandit_days (per policy: users, the clicks and revenue drawn, and
their expectations under the simulator, which carry no luck) and each state to gold/bandit_state;
the report plots cumulative revenue per user by day.
"""
from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark import schema, tables
from recsys_spark.abtest import Shop, click_chance, lognormal_revenue_mean
from recsys_spark.baselines import popularity_counts
from recsys_spark.config import Config
from recsys_spark.ope import REWARDS
from recsys_spark.table_schemas import BANDIT_DAYS_SCHEMA, BANDIT_STATE_SCHEMA

logger = logging.getLogger(__name__)

FEATURES = ("constant", "relevance", "popularity", "price", "value")
POLICIES = ("greedy", "uniform", "bandit")
# Per day and policy, totals over the users: drawn outcomes, then their expectations.
METRICS = ("clicks", "revenue", "expected_clicks", "expected_revenue")
X = [f"x_{f}" for f in FEATURES]


@dataclass(frozen=True)
class LinUCB:
    """Ridge-regression state of the reward model: a (d x d), b (d), n rewards learned from."""
    a: np.ndarray
    b: np.ndarray
    n: int = 0

    @staticmethod
    def prior(strength: float) -> "LinUCB":
        theta0 = np.zeros(len(FEATURES))
        theta0[FEATURES.index("relevance")] = 1.0
        return LinUCB(strength * np.eye(len(FEATURES)), strength * theta0, 0)

    @property
    def theta(self) -> np.ndarray:
        return np.linalg.solve(self.a, self.b)

    def updated(self, xtx: np.ndarray, xtr: np.ndarray, n: int) -> "LinUCB":
        return LinUCB(self.a + xtx, self.b + xtr, self.n + n)

    def ucb(self, alpha: float) -> Column:
        """theta.x + alpha sqrt(x^T A^-1 x) over the x_<feature> columns."""
        theta, inv = self.theta, np.linalg.inv(self.a)
        x = [F.col(c) for c in X]
        mean = sum((F.lit(float(t)) * xi for t, xi in zip(theta, x)), F.lit(0.0))
        var = sum((F.lit(float(inv[i, j] * (1 if i == j else 2))) * x[i] * x[j]
                   for i in range(len(x)) for j in range(i, len(x))), F.lit(0.0))
        return mean + F.lit(float(alpha)) * F.sqrt(F.greatest(var, F.lit(0.0)))


def sufficient_sums(shown: DataFrame, reward: str) -> list[Column]:
    """Aggregates of the shown items' features and rewards that update a LinUCB state (see `learn`)."""
    d = len(X)
    return ([F.sum(F.col(X[i]) * F.col(X[j])).alias(f"xx_{i}_{j}") for i in range(d) for j in range(i, d)]
            + [F.sum(F.col(X[i]) * F.col(reward)).alias(f"xr_{i}") for i in range(d)]
            + [F.count("*").alias("n")])


def learn(state: LinUCB, sums) -> LinUCB:
    """The state after the rewards whose sufficient_sums are in `sums` (a Row or dict)."""
    d = len(X)
    xtx = np.zeros((d, d))
    for i in range(d):
        for j in range(i, d):
            xtx[i, j] = xtx[j, i] = float(sums[f"xx_{i}_{j}"] or 0.0)
    xtr = np.array([float(sums[f"xr_{i}"] or 0.0) for i in range(d)])
    return state.updated(xtx, xtr, int(sums["n"] or 0))


def item_context(spark: SparkSession, popularity: np.ndarray, price: np.ndarray) -> DataFrame:
    """item_idx, x_popularity, x_price, and reward_value: what a conversion of the item earns (its
    price; the simulator's mean lognormal revenue in a catalog without prices)."""
    top_pop, top_price = math.log1p(float(popularity.max(initial=0.0))), float(price.max(initial=0.0))
    rows = [(i, math.log1p(float(popularity[i])) / top_pop if top_pop > 0 else 0.0,
             float(price[i]) / top_price if top_price > 0 else 0.0,
             float(price[i]) if top_price > 0 else lognormal_revenue_mean()) for i in range(1, len(price))]
    return spark.createDataFrame(rows, "item_idx long, x_popularity double, x_price double, reward_value double")


def candidate_features(candidates: DataFrame, items: DataFrame) -> DataFrame:
    """candidates (user_idx, rank, item_idx, score: the model's top pool) with the x_<feature> columns."""
    per_user = Window.partitionBy("user_idx")
    ok = candidates.where((F.col("item_idx") > 0) & ~F.col("score").isin(float("-inf")))
    out = (ok.withColumn("_e", F.exp(F.col("score") - F.max("score").over(per_user)))
           .withColumn("x_relevance", F.col("_e") / F.sum("_e").over(per_user)).drop("_e")
           .join(F.broadcast(items), "item_idx", "left")
           .fillna(0.0, subset=["x_popularity", "x_price", "reward_value"]))
    return (out.withColumn("x_constant", F.lit(1.0))
            .withColumn("x_value", F.col("x_relevance") * F.col("x_price")))


def top_by(feats: DataFrame, key: Column, k: int) -> DataFrame:
    """Each user's k candidates with the highest key (ties to the smaller item_idx), ranked from 1."""
    order = Window.partitionBy("user_idx").orderBy(key.desc(), F.col("item_idx"))
    return feats.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= k)


def uniform01(*parts: Column) -> Column:
    """A uniform draw in [0, 1) from a hash of the columns: the same inputs give the same draw."""
    return F.pmod(F.xxhash64(*parts), F.lit(1 << 40)).cast("double") / float(1 << 40)


def play(shown: DataFrame, ac, seed: int, day: int) -> DataFrame:
    """The shop's behaviour on shown items (with target and reward_value): adds clicked and revenue
    (drawn) and expected_clicks and expected_revenue (their expectations)."""
    who = (F.lit(seed), F.lit(day), F.col("user_idx"), F.col("item_idx"))
    chance = click_chance(F.col("item_idx"), F.col("target"), ac)
    clicked = uniform01(F.lit("click"), *who) < chance
    converted = clicked & (uniform01(F.lit("convert"), *who) < F.lit(ac.sim_convert))
    return (shown.withColumn("clicked", clicked.cast("double"))
            .withColumn("revenue", F.when(converted, F.col("reward_value")).otherwise(F.lit(0.0)))
            .withColumn("expected_clicks", chance)
            .withColumn("expected_revenue", chance * F.lit(ac.sim_convert) * F.col("reward_value")))


def day_lists(feats: DataFrame, state: LinUCB, cfg: Config, day: int) -> DataFrame:
    """What each policy shows on `day`: policy, user_idx, item_idx, target, reward_value, x_*."""
    k, bc = cfg.score.k, cfg.bandit
    draws = uniform01(F.lit(cfg.abtest.seed), F.lit(day), F.lit("uniform"), F.col("user_idx"), F.col("item_idx"))
    lists = {"greedy": feats.where(F.col("rank") <= k),
             "uniform": top_by(feats.drop("rank"), draws, k),
             "bandit": top_by(feats.drop("rank"), state.ucb(bc.alpha), k)}
    cols = ["user_idx", "item_idx", "target", "reward_value", *X]
    out = None
    for policy, top in lists.items():
        top = top.select(F.lit(policy).alias("policy"), *cols)
        out = top if out is None else out.unionByName(top)
    return out


def _record(spark: SparkSession, root: str, run_id: str, days: list[dict], states: list[tuple[int, LinUCB]]) -> None:
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    tables.append(spark.createDataFrame(
        [(run_id, now, d["day"], d["policy"], d["users"], *(d[m] for m in METRICS)) for d in days],
        BANDIT_DAYS_SCHEMA), tables.location(root, schema.BANDIT_DAYS))
    tables.append(spark.createDataFrame(
        [(run_id, now, day, s.n, list(FEATURES), [float(v) for v in s.a.ravel()], [float(v) for v in s.b],
          [float(v) for v in s.theta]) for day, s in states], BANDIT_STATE_SCHEMA),
        tables.location(root, schema.BANDIT_STATE))


def simulate(spark: SparkSession, cfg: Config) -> dict:
    """Play bandit.days days of greedy, uniform and bandit lists on the shop (module docstring)."""
    bc, root = cfg.bandit, cfg.tables_root
    shop = Shop.open(spark, cfg)
    try:
        items = item_context(spark, popularity_counts(shop.users, shop.n_items), shop.values["price"])
        candidates = shop.lists(cfg, "relevance", k=bc.pool)
        feats = candidate_features(candidates.join(shop.users.select("user_idx", "target"), "user_idx"), items).persist()
        n_users = feats.select("user_idx").distinct().count()
        state, states, days = LinUCB.prior(bc.prior), [], []
        reward = REWARDS[bc.reward]  # the outcome column the re-ranker learns from
        for day in range(bc.days):
            played = play(day_lists(feats, state, cfg, day), cfg.abtest, cfg.abtest.seed, day)
            rows = {r.policy: r for r in played.groupBy("policy").agg(
                F.sum("clicked").alias("clicks"), *[F.sum(m).alias(m) for m in METRICS[1:]],
                *sufficient_sums(played, reward)).collect()}
            days += [{"day": day, "policy": p, "users": n_users, **{m: float(rows[p][m]) for m in METRICS}}
                     for p in POLICIES]
            state = learn(state, rows["bandit"])
            states.append((day, state))
        feats.unpersist()
    finally:
        shop.close()
    run_id = "bandit-" + uuid.uuid4().hex[:12]
    _record(spark, root, run_id, days, states)
    totals = {p: {m: sum(d[m] for d in days if d["policy"] == p) / max(1, n_users) / bc.days for m in METRICS}
              for p in POLICIES}
    logger.info(f"bandit-simulate {run_id}: {bc.days} days on {n_users} users, per user and day: "
                + "; ".join(f"{p} {t['clicks']:.4f} clicks, {t['revenue']:.3f} revenue (expected "
                            f"{t['expected_revenue']:.3f})" for p, t in totals.items())
                + f"; learned theta over {', '.join(FEATURES)}: {np.round(state.theta, 3).tolist()}")
    return {"run_id": run_id, "users": n_users, "days": days, "per_user_day": totals,
            "theta": dict(zip(FEATURES, state.theta.tolist()))}
