"""A/B test readout from an exposure/outcome log in Delta, and a simulator for the synthetic shop
(which also writes the item-level exposure log with propensities that `ope` reads).

The log (`abtest.log`, default gold/ab_log) has one row per exposed user:
  user_id string, variant string, exposed_at timestamp, clicks long, conversions long, revenue double.
A user appearing twice, or in two variants, is an error (the assignment is broken): the readout
stops and names how many such users there are rather than guessing.

Per variant against the control (`abtest.control`), the readout reports
- click-through and conversion rates (share of exposed users with >= 1 click / conversion): absolute
  and relative lift, a Wald confidence interval of the difference, and the pooled two-proportion
  z-test p-value;
- revenue per exposed user: difference with a Welch confidence interval and Welch t-test p-value;
- the minimum detectable effect (absolute) at the observed sample sizes, for `abtest.alpha`
  (two-sided) and `abtest.power`;
- a sample-ratio-mismatch check: chi-square goodness of fit of the users per variant against the
  planned split (`abtest.split`, equal by default); p < 0.001 flags the test as untrustworthy.
Spark aggregates the log to sufficient statistics (n, sums, sums of squares) per variant; the tests
run on those few numbers (scipy), so the readout costs one pass over the log.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from scipy import stats

from recsys_spark import checkpoints, promotion, schema, splits, tables
from recsys_spark.baselines import popularity_counts, popularity_topk
from recsys_spark.config import Config
from recsys_spark.ranking import attention_topk

logger = logging.getLogger(__name__)

SRM_ALPHA = 0.001
# Revenue of a simulated conversion in a catalog without prices: lognormal(mu, sigma).
LOGNORMAL_MU, LOGNORMAL_SIGMA = 3.0, 0.8


@dataclass(frozen=True)
class VariantStats:
    variant: str
    n: int
    clickers: int
    converters: int
    revenue_sum: float
    revenue_sumsq: float

    @property
    def revenue_mean(self) -> float:
        return self.revenue_sum / self.n if self.n else float("nan")

    @property
    def revenue_var(self) -> float:
        """Sample variance (ddof=1) of revenue per user."""
        if self.n < 2:
            return float("nan")
        return max(0.0, (self.revenue_sumsq - self.n * self.revenue_mean ** 2) / (self.n - 1))


def two_proportion(x_a: int, n_a: int, x_b: int, n_b: int, alpha: float = 0.05) -> dict:
    """B vs A: difference of proportions with a Wald CI, pooled z-test two-sided p-value, relative lift."""
    p_a, p_b = x_a / n_a, x_b / n_b
    diff = p_b - p_a
    pooled = (x_a + x_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = diff / se_pooled if se_pooled > 0 else 0.0
    p_value = 2 * stats.norm.sf(abs(z))
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    q = stats.norm.ppf(1 - alpha / 2)
    return {"control": p_a, "treatment": p_b, "diff": diff, "ci_low": diff - q * se, "ci_high": diff + q * se,
            "lift": diff / p_a if p_a else float("nan"), "z": z, "p_value": p_value}


def welch(mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int,
          alpha: float = 0.05) -> dict:
    """B vs A: difference of means with a Welch CI and the Welch t-test two-sided p-value."""
    va, vb = var_a / n_a, var_b / n_b
    se = math.sqrt(va + vb)
    diff = mean_b - mean_a
    dof = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1)) if se > 0 else float(n_a + n_b - 2)
    t = diff / se if se > 0 else 0.0
    p_value = 2 * stats.t.sf(abs(t), dof)
    q = stats.t.ppf(1 - alpha / 2, dof)
    return {"control": mean_a, "treatment": mean_b, "diff": diff, "ci_low": diff - q * se,
            "ci_high": diff + q * se, "lift": diff / mean_a if mean_a else float("nan"), "t": t, "dof": dof,
            "p_value": p_value}


def mde(sd_a: float, n_a: int, sd_b: float, n_b: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest absolute difference a two-sided z-test at alpha detects with the given power."""
    return (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * math.sqrt(sd_a ** 2 / n_a + sd_b ** 2 / n_b)


def sample_ratio(counts: list[int], planned: list[float]) -> dict:
    """Chi-square goodness of fit of users per variant against the planned shares."""
    total = sum(counts)
    expected = [total * w / sum(planned) for w in planned]
    chi2, p = stats.chisquare(counts, expected)
    return {"counts": counts, "expected": expected, "chi2": float(chi2), "p_value": float(p),
            "mismatch": bool(p < SRM_ALPHA)}


def variant_stats(log: DataFrame) -> list[VariantStats]:
    """Sufficient statistics per variant, after checking every user is exposed once."""
    missing = {"user_id", "variant", "clicks", "conversions", "revenue"} - set(log.columns)
    if missing:
        raise ValueError(f"A/B log lacks column(s) {sorted(missing)}; expected user_id, variant, exposed_at, "
                         f"clicks, conversions, revenue")
    dup = log.groupBy("user_id").agg(F.count("*").alias("n")).where(F.col("n") > 1).count()
    if dup:
        raise ValueError(f"{dup} users appear more than once in the A/B log (several exposures or variants); "
                         f"aggregate to one row per user and check the assignment before reading the test")
    rows = (log.groupBy("variant").agg(
        F.count("*").alias("n"),
        F.sum((F.col("clicks") > 0).cast("long")).alias("clickers"),
        F.sum((F.col("conversions") > 0).cast("long")).alias("converters"),
        F.sum(F.coalesce(F.col("revenue"), F.lit(0.0))).alias("rs"),
        F.sum(F.coalesce(F.col("revenue"), F.lit(0.0)) ** 2).alias("rss"),
    ).orderBy("variant").collect())
    return [VariantStats(r.variant, int(r.n), int(r.clickers), int(r.converters), float(r.rs), float(r.rss))
            for r in rows]


def readout(groups: list[VariantStats], control: str, alpha: float = 0.05, power: float = 0.8,
            planned: Optional[list[float]] = None) -> dict:
    """The full readout from per-variant statistics (see the module docstring)."""
    by = {g.variant: g for g in groups}
    if control not in by:
        raise ValueError(f"control variant {control!r} is not in the log (variants: {sorted(by)}); set abtest.control")
    a = by[control]
    planned = planned or [1.0] * len(groups)
    if len(planned) != len(groups):
        raise ValueError(f"abtest.split has {len(planned)} shares but the log has {len(groups)} variants")
    out = {"control": control, "alpha": alpha, "power": power,
           "srm": sample_ratio([g.n for g in groups], planned), "variants": {}}
    for b in groups:
        if b.variant == control:
            continue
        res = {"n_control": a.n, "n_treatment": b.n}
        for metric, xa, xb in (("ctr", a.clickers, b.clickers), ("conversion", a.converters, b.converters)):
            r = two_proportion(xa, a.n, xb, b.n, alpha)
            p = (xa + xb) / (a.n + b.n)
            r["mde"] = mde(math.sqrt(p * (1 - p)), a.n, math.sqrt(p * (1 - p)), b.n, alpha, power)
            res[metric] = r
        r = welch(a.revenue_mean, a.revenue_var, a.n, b.revenue_mean, b.revenue_var, b.n, alpha)
        r["mde"] = mde(math.sqrt(a.revenue_var), a.n, math.sqrt(b.revenue_var), b.n, alpha, power)
        res["revenue_per_user"] = r
        out["variants"][b.variant] = res
    return out


def format_readout(r: dict) -> str:
    lines = []
    srm = r["srm"]
    lines.append(f"sample ratio: users {srm['counts']} vs planned {[round(e) for e in srm['expected']]}: "
                 f"chi2 {srm['chi2']:.2f}, p {srm['p_value']:.3g}"
                 + ("  ** SAMPLE RATIO MISMATCH: do not trust this test; check assignment and logging **"
                    if srm["mismatch"] else "  (ok)"))
    level = int(round((1 - r["alpha"]) * 100))
    for v, res in r["variants"].items():
        lines.append(f"{v} vs {r['control']} ({res['n_treatment']} vs {res['n_control']} users):")
        lines.append(f"  {'metric':<18}{'control':>10}{'treatment':>11}{'diff':>10}{f'{level}% CI':>22}"
                     f"{'lift':>9}{'p':>10}{'MDE':>9}")
        for m in ("ctr", "conversion", "revenue_per_user"):
            x = res[m]
            ci = f"[{x['ci_low']:+.4f}, {x['ci_high']:+.4f}]"
            lines.append(f"  {m:<18}{x['control']:>10.4f}{x['treatment']:>11.4f}{x['diff']:>+10.4f}"
                         f"{ci:>22}{x['lift']:>+9.1%}{x['p_value']:>10.3g}{x['mde']:>9.4f}")
    return "\n".join(lines)


def run(spark: SparkSession, cfg: Config) -> dict:
    ac = cfg.abtest
    loc = tables.locate(cfg.tables_root, ac.log)
    tables.require(spark, loc, "abtest-simulate (synthetic shop) or the experiment's logging job")
    version = tables.version(spark, loc)
    groups = variant_stats(tables.read(spark, loc, version))
    if len(groups) < 2:
        raise ValueError(f"the A/B log {loc} holds one variant ({', '.join(g.variant for g in groups) or 'none'}): "
                         f"a readout compares two or more; a single-policy log is for `ope`")
    r = readout(groups, ac.control, ac.alpha, ac.power, ac.split or None)
    r["log"], r["log_version"] = loc, version
    logger.info(f"A/B readout of {loc} (version {version}):\n{format_readout(r)}")
    return r


# ------------------------------------------------------------------------------------------------
# Simulation on the synthetic shop


def _item_values(spark: SparkSession, root: str, n_items: int) -> dict[str, np.ndarray]:
    """{price, margin}: each an array indexed by item_idx (0 where the item has none)."""
    content = tables.read(spark, tables.location(root, schema.ITEM_CONTENT))
    columns = [c for c in schema.ITEM_VALUE_COLUMNS if c in content.columns]
    values = {c: np.zeros(n_items, dtype=np.float64) for c in schema.ITEM_VALUE_COLUMNS}
    for r in content.select("item_idx", *columns).where(F.col("item_idx") < n_items).collect():
        for c in columns:
            values[c][r.item_idx] = r[c] or 0.0
    return values


def policy_topk(policy: str, users: DataFrame, ckpt_path: str, k: int, batch_users: int, n_items: int,
                values: dict, explore_slots: int = 0, explore_pool: int = 0, seed: int = 0) -> DataFrame:
    """The top-k a policy shows (TOPK_SCHEMA plus propensity): popularity, or the model ranked by an
    objective, with exploration slots when explore_slots > 0 (popularity never explores)."""
    if policy == "popularity":
        top = popularity_topk(users, popularity_counts(users, n_items), k)
        return top.withColumn("propensity", F.lit(1.0))
    value = values.get(schema.OBJECTIVE_VALUE.get(policy, ""))
    if value is not None and not (value > 0).any():
        raise ValueError(f"{policy} ranks by {schema.OBJECTIVE_VALUE[policy]}, but no item has a positive one: "
                         f"drop the policy or add the column to the items input")
    top = attention_topk(users, ckpt_path, k, batch_users, objective=policy, value=value,
                         explore_slots=explore_slots, explore_pool=explore_pool, explore_seed=seed)
    return top if explore_slots else top.withColumn("propensity", F.lit(1.0))


@dataclass(frozen=True)
class Shop:
    """What the simulated shop needs to show lists and play out behaviour: the serving checkpoint,
    the exposed users (test split: history without the held-out next item, and that item as
    target), the catalog size and item values (price, margin by item_idx)."""
    ckpt_path: str
    users: DataFrame
    n_items: int
    values: dict

    @staticmethod
    def open(spark: SparkSession, cfg: Config) -> "Shop":
        ckpt_path = promotion.serving_checkpoint(spark, cfg)
        n_items = checkpoints.cached_model(ckpt_path).cfg.n_items
        return Shop(ckpt_path, splits.test_users(spark, cfg).persist(), n_items,
                    _item_values(spark, cfg.tables_root, n_items))

    def lists(self, cfg: Config, policy: str, explore: bool = False, seed: int = 0, k: int = 0) -> DataFrame:
        """user_idx, rank, item_idx, score, propensity: what the policy shows each user, top score.k
        (or k) (with score.explore_slots / explore_pool exploration when explore)."""
        sc = cfg.score
        return policy_topk(policy, self.users, self.ckpt_path, k or sc.k, sc.batch_users, self.n_items, self.values,
                           sc.explore_slots if explore else 0, sc.explore_pool, seed)

    def close(self) -> None:
        self.users.unpersist()


def simulate(spark: SparkSession, cfg: Config) -> dict:
    """Write an A/B log for the synthetic shop: one variant per policy of abtest.sim_variants.

    Every user with a test target is exposed, assigned to variant A, B, C... (the policies in order)
    by a hash of the id (abtest.seed). Lists are built as of the test split (history without the
    held-out next item): popularity, or the serving attention model ranked by an objective
    (relevance, expected_revenue, expected_margin, as score.objective ranks), with exploration slots
    as score.explore_slots sets them. Each shown item is clicked on its own (see _item_outcomes): the
    held-out next item with probability abtest.sim_click_hit, any other with abtest.sim_click_base;
    a click converts with abtest.sim_convert and brings the item's price (lognormal revenue in a
    catalog without prices).

    Writes abtest.exposures (one row per shown item, with its propensity and outcome: what
    off-policy evaluation reads) and abtest.log (one row per exposed user: what the readout reads)."""
    ac, root = cfg.abtest, cfg.tables_root
    shop = Shop.open(spark, cfg)
    arms = {chr(ord("A") + i): policy for i, policy in enumerate(ac.sim_variants)}
    variant = F.element_at(F.array(*[F.lit(x) for x in arms]),
                           (F.pmod(F.xxhash64("user_idx", F.lit(ac.seed)), F.lit(len(arms))) + 1).cast("int"))
    assigned = shop.users.select("user_idx", "target").withColumn("variant", variant)
    shown = None
    for label, policy in arms.items():
        top = (shop.lists(cfg, policy, explore=True, seed=ac.seed)
               .join(assigned.where(F.col("variant") == label), "user_idx")
               .withColumn("policy", F.lit(policy)))
        shown = top if shown is None else shown.unionByName(top)
    ids = tables.read(spark, tables.location(root, schema.USER_INDEX)).select("user_idx", "user_id")
    items = tables.read(spark, tables.location(root, schema.ITEM_INDEX)).select("item_idx", "item_id")
    exposed_at = F.lit(datetime.now(timezone.utc).replace(tzinfo=None))
    exposures = (_item_outcomes(spark, shown, ac, shop.values["price"]).join(ids, "user_idx").join(items, "item_idx")
                 .select("user_id", "variant", "policy", exposed_at.alias("exposed_at"), "rank", "item_id",
                         "propensity", "clicked", "converted", "revenue"))
    exp_loc = tables.locate(root, ac.exposures)
    tables.overwrite(exposures, exp_loc)
    logged = tables.read(spark, exp_loc)
    per_user = logged.groupBy("user_id").agg(F.sum("clicked").alias("clicks"), F.sum("converted").alias("conversions"),
                                             F.sum("revenue").alias("revenue"))
    log = (assigned.join(ids, "user_idx").join(per_user, "user_id", "left")
           .select("user_id", "variant", exposed_at.alias("exposed_at"),
                   F.coalesce("clicks", F.lit(0)).cast("long").alias("clicks"),
                   F.coalesce("conversions", F.lit(0)).cast("long").alias("conversions"),
                   F.coalesce("revenue", F.lit(0.0)).cast("double").alias("revenue")))
    loc = tables.locate(root, ac.log)
    tables.overwrite(log, loc)
    shop.close()
    n = tables.read(spark, loc).count()
    logger.info(f"abtest-simulate: {n} exposed users ({', '.join(f'{v} = {p}' for v, p in arms.items())}; "
                f"top-{cfg.score.k}) -> {loc}; shown items with propensities and outcomes -> {exp_loc}")
    return {"rows": n, "log": loc, "exposures": exp_loc, "variants": arms}


def expected_value(spark: SparkSession, shop: Shop, lists: DataFrame, ac) -> dict:
    """The true value of showing these lists (user_idx, item_idx) in the simulated shop: expected
    clicks and revenue per exposed user (every user of shop.users counts, listed or not)."""
    price = shop.values["price"]
    shown = lists.select("user_idx", "item_idx").join(shop.users.select("user_idx", "target"), "user_idx")
    chance = click_chance(F.col("item_idx"), F.col("target"), ac)
    if price.any():
        prices = spark.createDataFrame([(i, float(p)) for i, p in enumerate(price) if p > 0], "item_idx long, price double")
        shown = shown.join(F.broadcast(prices), "item_idx", "left")
        value = F.coalesce(F.col("price"), F.lit(0.0))
    else:
        value = F.lit(lognormal_revenue_mean())
    sums = shown.agg(F.sum(chance).alias("clicks"), F.sum(chance * ac.sim_convert * value).alias("revenue")).first()
    n = shop.users.count()
    return {"clicks": (sums["clicks"] or 0.0) / n, "revenue": (sums["revenue"] or 0.0) / n}


def click_chance(item: Column, target: Column, ac) -> Column:
    """The simulated shop's chance that a user clicks a shown item: sim_click_hit for their
    held-out next item, sim_click_base for any other."""
    return F.when(item == target, F.lit(ac.sim_click_hit)).otherwise(F.lit(ac.sim_click_base))


def lognormal_revenue_mean() -> float:
    """The mean revenue of a conversion in a catalog without prices (see _item_outcomes)."""
    return math.exp(LOGNORMAL_MU + LOGNORMAL_SIGMA ** 2 / 2)


def _item_outcomes(spark: SparkSession, shown: DataFrame, ac, price: np.ndarray) -> DataFrame:
    """Simulated behaviour on each shown item (user_idx, item_idx, target, ...): adds clicked and
    converted (0/1) and revenue; drops target."""
    u1, u2, u3, u4 = (F.rand(ac.seed + i) for i in range(4))
    clicked = u1 < click_chance(F.col("item_idx"), F.col("target"), ac)
    converted = clicked & (u2 < ac.sim_convert)
    out = shown.withColumn("clicked", clicked).withColumn("converted", converted).withColumn("u3", u3).withColumn("u4", u4)
    if price.any():
        prices = spark.createDataFrame([(i, float(p)) for i, p in enumerate(price) if p > 0], "item_idx long, price double")
        out = out.join(F.broadcast(prices), "item_idx", "left")
        value = F.coalesce(F.col("price"), F.lit(0.0))
    else:  # lognormal revenue (Box-Muller)
        normal = F.sqrt(F.lit(-2.0) * F.log(F.col("u3") + F.lit(1e-12))) * F.cos(F.lit(2 * math.pi) * F.col("u4"))
        value = F.exp(F.lit(LOGNORMAL_MU) + F.lit(LOGNORMAL_SIGMA) * normal)
    return (out.withColumn("revenue", F.when(F.col("converted"), value).otherwise(F.lit(0.0)).cast("double"))
            .withColumn("clicked", F.col("clicked").cast("long")).withColumn("converted", F.col("converted").cast("long"))
            .drop("u3", "u4", "price", "target"))
