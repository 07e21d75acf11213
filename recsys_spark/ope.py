"""Off-policy evaluation: what a candidate policy would earn, estimated from logged exposures.

The exposure log (`ope.log`, default gold/ab_exposures, written by abtest-simulate) has one row per
shown item: user_id, item_id, propensity (the chance the logging policy showed that item to that
user, as score records it with exploration), clicked (0/1) and revenue. Or (`ope.night`) the lists
the nightly wrote for a night, each shown item rewarded by the events that followed it
(recsys_spark.rewards). A candidate policy is a deterministic top-k per user: as abtest-simulate
shows lists, or for a night as that night's run would have made them with the same model, inputs
and rules (score.replayed_lists). Its value is clicks and revenue per user, with the item-level
model of feedback: a shown item's reward depends on the user and the item, not on the rest of the
list or the position.

Estimators, per logged user u, over the candidate's list C_u and the logged items L_u:
- DM (direct method): sum over C_u of a reward model q(i): each item's mean logged reward, shrunk
  to the overall mean by PRIOR_EXPOSURES pseudo-exposures. Biased wherever q is wrong.
- IPS: sum over the logged items in C_u of reward / propensity. Unbiased when every item of C_u
  had a positive propensity (support); high variance when propensities are small.
- SNIPS: IPS divided by the mean of W_u = (sum over logged items in C_u of 1 / propensity) / |C_u|,
  whose expectation is 1 under full support; biased by O(1/n), far less variance.
- DR (doubly robust): DM plus the IPS-weighted residuals reward - q(i); unbiased under support
  whatever q is, with less variance than IPS when q is close.
Intervals are normal ones over the users (SNIPS by the delta method). Each estimate is also written
with its diagnostics: the share of candidate items that were logged, and the effective sample size
of the weights. Items of C_u the logging policy could never show make IPS, SNIPS and DR biased
downwards; only exploration across the candidate's items (score.explore_slots, explore_pool) fixes
that.

Spark reduces the log to sums per user and then to a few sums per estimator, so one pass over the
log and the candidate lists gives every estimate.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Callable, Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from scipy import stats

from recsys_spark import schema, score, tables
from recsys_spark.abtest import Shop
from recsys_spark.config import Config
from recsys_spark.rewards import REWARDS, rewarded, window_closes
from recsys_spark.table_schemas import OPE_ESTIMATES_SCHEMA

logger = logging.getLogger(__name__)

ESTIMATORS = ("DM", "IPS", "SNIPS", "DR")
# Strength of the reward model's pull toward the overall mean, in exposures of an item.
PRIOR_EXPOSURES = 20.0


def _checked(log: DataFrame, where: str) -> DataFrame:
    missing = {"user_id", "item_id", "propensity", "clicked", "revenue"} - set(log.columns)
    if missing:
        raise ValueError(f"exposure log {where} lacks column(s) {sorted(missing)}; expected one row per shown item: "
                         f"user_id, item_id, propensity, clicked, revenue")
    bad = log.where(F.col("propensity").isNull() | (F.col("propensity") <= 0) | (F.col("propensity") > 1)).count()
    if bad:
        raise ValueError(f"{bad} rows of {where} have a propensity outside (0, 1]: every logged item needs the chance "
                         f"its policy showed it (recommendations' propensity column)")
    return log.select("user_id", "item_id", F.col("propensity").cast("double"),
                      *[F.coalesce(F.col(c), F.lit(0)).cast("double").alias(c) for c in REWARDS.values()])


def _sums(log: DataFrame, candidate: DataFrame) -> tuple[dict, tuple]:
    """Per-user values of every estimator reduced to sums (s_X, ss_X), with n, the candidate's list
    sizes and matched items in total; and (sum, sum of squares) of the matched weights."""
    users = log.select("user_id").distinct()
    overall = log.agg(*[F.avg(c).alias(c) for c in REWARDS.values()]).first().asDict()
    q = (log.groupBy("item_id").agg(F.count("*").alias("n"), *[F.sum(c).alias(c) for c in REWARDS.values()])
         .select("item_id", *[((F.col(c) + F.lit(PRIOR_EXPOSURES * overall[c])) / (F.col("n") + PRIOR_EXPOSURES))
                              .alias(f"q_{c}") for c in REWARDS.values()]))
    fill_q = {f"q_{c}": float(overall[c]) for c in REWARDS.values()}
    cand = (candidate.select("user_id", "item_id").distinct().join(users, "user_id", "left_semi")
            .join(q, "item_id", "left").fillna(fill_q))
    dm = cand.groupBy("user_id").agg(F.count("*").alias("size"), *[F.sum(f"q_{c}").alias(f"dm_{c}") for c in REWARDS.values()])
    matched = (log.join(cand, ["user_id", "item_id"]).withColumn("w", 1.0 / F.col("propensity")))
    m = matched.groupBy("user_id").agg(
        F.sum("w").alias("w"), F.count("*").alias("matched"),
        *[F.sum(F.col("w") * F.col(c)).alias(f"ips_{c}") for c in REWARDS.values()],
        *[F.sum(F.col("w") * (F.col(c) - F.col(f"q_{c}"))).alias(f"res_{c}") for c in REWARDS.values()])
    own = log.groupBy("user_id").agg(*[F.sum(c).alias(f"own_{c}") for c in REWARDS.values()])
    per_user = users.join(dm, "user_id", "left").join(m, "user_id", "left").join(own, "user_id").fillna(0)
    # W: 1 in expectation under full support (a user without a candidate list counts as 1).
    per_user = per_user.withColumn("W", F.when(F.col("size") > 0, F.col("w") / F.col("size")).otherwise(F.lit(1.0)))
    cols = {"W": F.col("W")}
    for c in REWARDS.values():
        cols[f"own_{c}"] = F.col(f"own_{c}")
        cols[f"DM_{c}"] = F.col(f"dm_{c}")
        cols[f"IPS_{c}"] = F.col(f"ips_{c}")
        cols[f"DR_{c}"] = F.col(f"dm_{c}") + F.col(f"res_{c}")
    aggs = [F.count("*").alias("n"), F.sum("size").alias("size"), F.sum("matched").alias("matched")]
    for name, col in cols.items():
        aggs += [F.sum(col).alias(f"s_{name}"), F.sum(col * col).alias(f"ss_{name}")]
    aggs += [F.sum(F.col(f"IPS_{c}") * F.col("W")).alias(f"sw_{c}") for c in REWARDS.values()]
    weights = matched.agg(F.sum("w").alias("s"), F.sum(F.col("w") ** 2).alias("ss")).first()
    return per_user.agg(*aggs).first().asDict(), weights


def estimate(log: DataFrame, candidate: DataFrame, alpha: float = 0.05, where: str = "the log") -> list[dict]:
    """Estimates of the candidate's clicks and revenue per logged user: one dict per (metric,
    estimator) with value, ci_low, ci_high, n_users, matched_share, ess, and the logging policy's
    own mean as estimator "logged". candidate: user_id, item_id (its list per user)."""
    log = _checked(log, where).persist()
    t, weights = _sums(log, candidate)
    log.unpersist()
    n = int(t["n"])
    if n < 2:
        raise ValueError(f"{where} has {n} user(s): off-policy estimates need at least two logged users")
    z = stats.norm.ppf(1 - alpha / 2)
    common = {"n_users": n, "matched_share": (t["matched"] or 0) / t["size"] if t["size"] else 0.0,
              "ess": float(weights["s"] ** 2 / weights["ss"]) if weights["ss"] else 0.0}

    def interval(value: float, se: float) -> dict:
        return {"value": value, "ci_low": value - z * se, "ci_high": value + z * se, **common}

    def mean_se(name: str) -> tuple[float, float]:
        mean = t[f"s_{name}"] / n
        var = max(0.0, (t[f"ss_{name}"] - n * mean ** 2) / (n - 1))
        return mean, math.sqrt(var / n)

    out = []
    for metric, c in REWARDS.items():
        rows = {"logged": interval(*mean_se(f"own_{c}"))}
        for est in ("DM", "IPS", "DR"):
            rows[est] = interval(*mean_se(f"{est}_{c}"))
        w_mean = t["s_W"] / n
        if w_mean > 0:
            v = t[f"s_IPS_{c}"] / t["s_W"]
            # Delta method: the spread of IPS_u - v * W_u, over the mean weight.
            var_d = (t[f"ss_IPS_{c}"] - 2 * v * t[f"sw_{c}"] + v * v * t["ss_W"]) / (n - 1)
            rows["SNIPS"] = interval(v, math.sqrt(max(0.0, var_d) / n) / w_mean)
        else:  # nothing of the candidate's was ever logged
            rows["SNIPS"] = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), **common}
        out += [{"metric": metric, "estimator": est, **r} for est, r in rows.items()]
    return out


def candidate_lists(spark: SparkSession, cfg: Config, shop: Shop, policy: str) -> DataFrame:
    """user_id, item_id: the candidate policy's top score.k for the shop's users, as
    abtest-simulate would show them without exploration."""
    root = cfg.tables_root
    ids = tables.read(spark, tables.location(root, schema.USER_INDEX)).select("user_idx", "user_id")
    items = tables.read(spark, tables.location(root, schema.ITEM_INDEX)).select("item_idx", "item_id")
    return shop.lists(cfg, policy).join(ids, "user_idx").join(items, "item_idx").select("user_id", "item_id")


@dataclass
class Logged:
    """An exposure log to estimate from: its rows (user_id, item_id, propensity, clicked, revenue),
    where they were read (table, version, and the night for a nightly's lists), and each candidate
    policy's lists for the logged users (`candidates(policy)`: user_id, item_id)."""
    log: DataFrame
    location: str
    version: int
    night: Optional[date]
    candidates: Callable[[str], DataFrame]
    close: Callable[[], None] = lambda: None

    def describe(self) -> str:
        return f"{self.location} (version {self.version}{f', night {self.night}' if self.night else ''})"


def exposure_table(spark: SparkSession, cfg: Config) -> Logged:
    """ope.log, an item-level exposure log of the synthetic shop, with candidates as
    abtest-simulate shows lists."""
    loc = tables.locate(cfg.tables_root, cfg.ope.log)
    tables.require(spark, loc, "abtest-simulate (synthetic shop) or a job that logs shown items with propensities")
    version = tables.version(spark, loc)
    shop = Shop.open(spark, cfg)
    return Logged(tables.read(spark, loc, version), loc, version, None,
                  lambda policy: candidate_lists(spark, cfg, shop, policy), shop.close)


def night_to_estimate(spark: SparkSession, cfg: Config, today: date) -> date:
    """ope.night as a date: the date it names, or for `latest` the newest scored night whose
    reward window (ope.reward_days) has closed by `today`."""
    if cfg.ope.night != "latest":
        return date.fromisoformat(cfg.ope.night)
    nights = score.scored_nights(spark, cfg.tables_root)
    closed = [d for d in nights if window_closes(d, cfg.ope.reward_days) <= today]
    if not closed:
        then = (f"run it again on {min(window_closes(d, cfg.ope.reward_days) for d in nights)}" if nights
                else "score a night first")
        raise ValueError(f"ope.night is latest, but no scored night's {cfg.ope.reward_days}-day reward window has "
                         f"closed by {today} (nights scored: {', '.join(map(str, nights[-10:])) or 'none'}); {then}")
    return closed[-1]


def logged_night(spark: SparkSession, cfg: Config, night: date, today: date) -> Logged:
    """The lists the nightly wrote for `night` (gold/recommendations, with their propensities) as an
    exposure log: each shown item rewarded by the user's events on it in the ope.reward_days days
    from the night (rewards.rewarded); candidates made as that night's run would have made them
    (score.replayed_lists). Refused while the reward window is open on `today`."""
    root, days = cfg.tables_root, cfg.ope.reward_days
    if window_closes(night, days) > today:
        raise ValueError(f"the rewards of {night} are not all in: its {days}-day window closes on "
                         f"{window_closes(night, days)}; estimate it then (or shorten ope.reward_days)")
    run = score.night_run(spark, root, night)
    loc = tables.location(root, schema.RECOMMENDATIONS)
    # The table as it is now, not the version the run wrote: users forgotten since are left out.
    version = tables.version(spark, loc)
    lists = tables.read(spark, loc, version).where(F.col("run_date") == F.lit(night))
    content = tables.read_pinned(spark, root, schema.ITEM_CONTENT, run["versions"])
    price = F.col("price") if "price" in content.columns else F.lit(None)
    shown = (lists.select("user_id", "item_id", score.recorded_propensity(lists).cast("double").alias("propensity"))
             .join(content.select("item_id", F.coalesce(price, F.lit(0.0)).cast("double").alias("reward_value")),
                   "item_id", "left").fillna({"reward_value": 0.0}))
    events = tables.read(spark, tables.location(root, schema.EVENTS)).select("user_id", "item_id", "event_type", "ts")
    log = rewarded(shown, events, night, days).drop("reward_value")
    users = lists.select("user_id").distinct()
    return Logged(log, loc, version, night, lambda policy: score.replayed_lists(spark, cfg, run, users, policy))


def format_estimates(rows: list[dict]) -> str:
    lines = [f"  {'policy':<18}{'metric':<9}{'estimator':<10}{'per user':>10}{'interval':>24}"
             f"{'matched':>9}{'ESS':>9}"]
    for r in rows:
        ci = f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
        lines.append(f"  {r['policy']:<18}{r['metric']:<9}{r['estimator']:<10}{r['value']:>10.4f}{ci:>24}"
                     f"{r['matched_share']:>9.1%}{r['ess']:>9.0f}")
    return "\n".join(lines)


def run(spark: SparkSession, cfg: Config) -> dict:
    """Estimate each policy of ope.policies from the exposure log (ope.log) or from a night's lists
    (ope.night); append to gold/ope_estimates."""
    oc, root = cfg.ope, cfg.tables_root
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    source = (logged_night(spark, cfg, night_to_estimate(spark, cfg, now.date()), now.date()) if oc.night
              else exposure_table(spark, cfg))
    rows = []
    try:
        for policy in oc.policies:
            est = estimate(source.log, source.candidates(policy), oc.alpha, source.describe())
            rows += [{"policy": policy, **r} for r in est]
    finally:
        source.close()
    out = spark.createDataFrame([(now, source.location, source.version, r["policy"], r["metric"], r["estimator"],
                                  float(r["value"]), float(r["ci_low"]), float(r["ci_high"]), r["n_users"],
                                  float(r["matched_share"]), float(r["ess"]), oc.alpha, source.night)
                                 for r in rows], OPE_ESTIMATES_SCHEMA)
    tables.append(out, tables.location(root, schema.OPE_ESTIMATES))
    logger.info(f"ope: {len(oc.policies)} polic{'y' if len(oc.policies) == 1 else 'ies'} from {source.describe()}; "
                f"{int(round((1 - oc.alpha) * 100))}% intervals:\n{format_estimates(rows)}")
    return {"log": source.location, "log_version": source.version,
            "night": source.night.isoformat() if source.night else None, "estimates": rows}
