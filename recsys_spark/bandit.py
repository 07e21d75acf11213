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

Serving (bandit.serve): the nightly `score` shows each model-made list's k best candidates by the
newest learned state's bound (`Reranker`) and logs them with their features to
gold/bandit_exposures. Before ranking it learns, night by night, from the logged nights whose reward
window has closed (`learn_closed_nights`): rewards are the events that followed in bronze/events.
"""
from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Optional

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark import schema, tables
from recsys_spark.abtest import Shop, click_chance, lognormal_revenue_mean
from recsys_spark.baselines import popularity_counts
from recsys_spark.config import Config
from recsys_spark.rewards import REWARDS, rewarded, window_closes
from recsys_spark.table_schemas import BANDIT_DAYS_SCHEMA, BANDIT_EXPOSURES_SCHEMA, BANDIT_STATE_SCHEMA

logger = logging.getLogger(__name__)

FEATURES = schema.BANDIT_FEATURES
POLICIES = ("greedy", "uniform", "bandit")
# Per day and policy, totals over the users: drawn outcomes, then their expectations.
METRICS = ("clicks", "revenue", "expected_clicks", "expected_revenue")
X = [f"x_{f}" for f in FEATURES]
# The run_id of the serving re-ranker's states in gold/bandit_state (simulations have their own).
SERVING_RUN_ID = "serving"
# Lists the re-ranker orders: the model's (popularity fallbacks have no relevance to weigh).
MODEL_MADE = (schema.SERVED_HISTORY, schema.SERVED_PROFILE)


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


def item_context(spark: SparkSession, popularity: np.ndarray, price: np.ndarray,
                 value_without_price: Optional[float] = None) -> DataFrame:
    """item_idx, x_popularity, x_price, and reward_value: what a conversion of the item earns (its
    price; in a catalog without prices, value_without_price, by default the simulator's mean
    lognormal revenue)."""
    top_pop, top_price = math.log1p(float(popularity.max(initial=0.0))), float(price.max(initial=0.0))
    fallback = lognormal_revenue_mean() if value_without_price is None else value_without_price
    rows = [(i, math.log1p(float(popularity[i])) / top_pop if top_pop > 0 else 0.0,
             float(price[i]) / top_price if top_price > 0 else 0.0,
             float(price[i]) if top_price > 0 else fallback) for i in range(1, len(price))]
    return spark.createDataFrame(rows, "item_idx long, x_popularity double, x_price double, reward_value double")


def candidate_features(candidates: DataFrame, items: DataFrame, user: str = "user_idx", item: str = "item_idx") -> DataFrame:
    """candidates (user, rank, item, score: the model's top pool) with the x_<feature> columns, the
    items' context (item_context) joined on `item`."""
    per_user = Window.partitionBy(user)
    ok = candidates.where(~F.col("score").isin(float("-inf")))
    out = (ok.withColumn("_e", F.exp(F.col("score") - F.max("score").over(per_user)))
           .withColumn("x_relevance", F.col("_e") / F.sum("_e").over(per_user)).drop("_e")
           .join(F.broadcast(items), item, "left")
           .fillna(0.0, subset=["x_popularity", "x_price", "reward_value"]))
    return (out.withColumn("x_constant", F.lit(1.0))
            .withColumn("x_value", F.col("x_relevance") * F.col("x_price")))


def top_by(feats: DataFrame, key: Column, k: int, user: str = "user_idx", item: str = "item_idx") -> DataFrame:
    """Each user's k candidates with the highest key (ties to the smaller item), ranked from 1."""
    order = Window.partitionBy(user).orderBy(key.desc(), F.col(item))
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


def _state_row(run_id: str, now: datetime, day: int, s: LinUCB, learned_through: Optional[date] = None) -> tuple:
    return (run_id, now, day, s.n, list(FEATURES), [float(v) for v in s.a.ravel()], [float(v) for v in s.b],
            [float(v) for v in s.theta], learned_through)


def _record(spark: SparkSession, root: str, run_id: str, days: list[dict], states: list[tuple[int, LinUCB]]) -> None:
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    tables.append(spark.createDataFrame(
        [(run_id, now, d["day"], d["policy"], d["users"], *(d[m] for m in METRICS)) for d in days],
        BANDIT_DAYS_SCHEMA), tables.location(root, schema.BANDIT_DAYS))
    tables.append(spark.createDataFrame([_state_row(run_id, now, day, s) for day, s in states], BANDIT_STATE_SCHEMA),
                  tables.location(root, schema.BANDIT_STATE))


def simulate(spark: SparkSession, cfg: Config) -> dict:
    """Play bandit.days days of greedy, uniform and bandit lists on the shop (module docstring)."""
    bc, root = cfg.bandit, cfg.tables_root
    shop = Shop.open(spark, cfg)
    try:
        items = item_context(spark, popularity_counts(shop.users, shop.n_items), shop.values["price"])
        candidates = shop.lists(cfg, "relevance", k=bc.pool).where(F.col("item_idx") > 0)
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


# Serving (bandit.serve): the nightly `score` re-ranks with the learned state and logs what it
# showed; before ranking, it learns from the logged nights whose reward window has closed.

@dataclass(frozen=True)
class Learned:
    """The serving state, the newest run_date whose exposures it learned from (None: the prior
    alone) and how many nights it has learned."""
    state: LinUCB
    through: Optional[date] = None
    nights: int = 0


def serving_state(spark: SparkSession, cfg: Config) -> Learned:
    """The newest serving state in gold/bandit_state, or the prior when nothing was learned yet."""
    loc = tables.location(cfg.tables_root, schema.BANDIT_STATE)
    prior = Learned(LinUCB.prior(cfg.bandit.prior))
    if not tables.exists(spark, loc) or "learned_through" not in tables.read(spark, loc).columns:
        return prior
    row = (tables.read(spark, loc).where(F.col("run_id") == SERVING_RUN_ID)
           .orderBy(F.desc("learned_through")).first())
    if row is None:
        return prior
    if tuple(row.features) != FEATURES:
        raise ValueError(f"{loc}: the serving state was learned over the features {list(row.features)}, but this "
                         f"version ranks by {list(FEATURES)}; delete its rows with run_id '{SERVING_RUN_ID}' to "
                         f"start again from the prior")
    d = len(FEATURES)
    return Learned(LinUCB(np.array(row.a).reshape(d, d), np.array(row.b), int(row.n)), row.learned_through, row.day)


def learn_closed_nights(spark: SparkSession, cfg: Config, today: date) -> Learned:
    """The serving state after learning, in date order, from every logged night (gold/bandit_exposures)
    after the one it last learned whose reward window has closed by `today`; each night's state is
    appended to gold/bandit_state as it is learned, so a rerun learns no night twice."""
    bc, root = cfg.bandit, cfg.tables_root
    learned = serving_state(spark, cfg)
    loc = tables.location(root, schema.BANDIT_EXPOSURES)
    if not tables.exists(spark, loc):
        return learned
    exposures = tables.read(spark, loc)
    closed = sorted(r.run_date for r in exposures.select("run_date").distinct().collect()
                    if window_closes(r.run_date, bc.reward_days) <= today
                    and (learned.through is None or r.run_date > learned.through))
    events = tables.read(spark, tables.location(root, schema.EVENTS)).select("user_id", "item_id", "event_type", "ts")
    for night in closed:
        played = rewarded(exposures.where(F.col("run_date") == F.lit(night)), events, night, bc.reward_days)
        sums = played.agg(*sufficient_sums(played, REWARDS[bc.reward]), F.sum("clicked").alias("clicks"),
                          F.sum("revenue").alias("revenue")).first()
        learned = Learned(learn(learned.state, sums), night, learned.nights + 1)
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        tables.append(spark.createDataFrame([_state_row(SERVING_RUN_ID, now, learned.nights, learned.state, night)],
                                            BANDIT_STATE_SCHEMA), tables.location(root, schema.BANDIT_STATE))
        logger.info(f"bandit: learned from the {sums['n']} items shown on {night} ({sums['clicks']:.0f} clicked, "
                    f"revenue {sums['revenue']:.2f}); theta over {', '.join(FEATURES)}: "
                    f"{np.round(learned.state.theta, 3).tolist()}")
    return learned


@dataclass(frozen=True)
class Reranker:
    """What the serving re-ranker needs per run: the learned state, the items' context by item_id."""
    learned: Learned
    items: DataFrame
    k: int
    alpha: float

    @staticmethod
    def open(spark: SparkSession, cfg: Config, learned: Learned, item_ids: np.ndarray, users: DataFrame,
             versions: dict) -> "Reranker":
        """item_ids: the catalog's ids by item_idx; users: histories (input) the popularity is counted
        over; versions: the run's pinned tables (prices from gold/item_content, where items have one)."""
        content = tables.read_pinned(spark, cfg.tables_root, schema.ITEM_CONTENT, versions)
        price = np.zeros(len(item_ids))
        if "price" in content.columns:
            for r in content.select("item_idx", "price").collect():
                if r.item_idx < len(price) and r.price:
                    price[r.item_idx] = float(r.price)
        if cfg.bandit.reward == "revenue" and not (price > 0).any():
            raise ValueError("bandit.reward is revenue but no item has a price to earn: add a price column to the "
                             "items input (then rerun ingest and features), or set bandit.reward: clicks")
        ctx = item_context(spark, popularity_counts(users, len(item_ids)), price, value_without_price=0.0)
        ids = spark.createDataFrame([(i, str(x)) for i, x in enumerate(item_ids) if x], "item_idx long, item_id string")
        return Reranker(learned, ctx.join(ids, "item_idx").drop("item_idx"), cfg.score.k, cfg.bandit.alpha)

    def rerank(self, pools: DataFrame) -> DataFrame:
        """Recommendation rows of each user's pool of candidates -> the top k: model-made lists
        ordered by the learned bound (with the x_<feature> and reward_value columns they were chosen
        by), the others (popularity fallbacks) cut to k with those columns null."""
        model_made = F.col("served_by").isin(*MODEL_MADE)
        feats = candidate_features(pools.where(model_made), self.items, "user_id", "item_id")
        ranked = top_by(feats.drop("rank"), self.learned.state.ucb(self.alpha), self.k, "user_id", "item_id")
        return ranked.unionByName(pools.where(~model_made & (F.col("rank") <= self.k)), allowMissingColumns=True)


def log_exposures(ranked: DataFrame, location: str, run_date: date, model_run_id: str) -> None:
    """Write the re-ranked lists' items with their features to the run_date partition of `location`
    (gold/bandit_exposures), replacing a rerun's."""
    shown = ranked.where(F.col("x_constant").isNotNull()).select(
        *[F.col(f.name).cast(f.dataType) for f in BANDIT_EXPOSURES_SCHEMA.fields if f.name not in ("model_run_id", "run_date")],
        F.lit(model_run_id).alias("model_run_id"), F.lit(run_date).alias("run_date"))
    if tables.exists(ranked.sparkSession, location):
        tables.retry_on_conflict(lambda: tables.replace_partition(shown, location, f"run_date = '{run_date.isoformat()}'",
                                                                  ["run_date"]), f"bandit: logging {run_date}")
    else:
        tables.overwrite(shown, location, partition_by=["run_date"])
