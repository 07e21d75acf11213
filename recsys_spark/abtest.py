"""A/B test readout from an exposure/outcome log in Delta, and a simulator for the synthetic shop.

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
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from scipy import stats

from recsys_spark import checkpoints, promotion, schema, splits, tables
from recsys_spark.baselines import popularity_counts, popularity_topk
from recsys_spark.config import Config
from recsys_spark.ranking import attention_topk

logger = logging.getLogger(__name__)

SRM_ALPHA = 0.001


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


def _policy_topk(policy: str, users: DataFrame, ckpt_path: str, k: int, batch_users: int, n_items: int,
                 values: dict) -> DataFrame:
    """The top-k (TOPK_SCHEMA) a simulated variant shows: popularity, or the model by an objective."""
    if policy == "popularity":
        return popularity_topk(users, popularity_counts(users, n_items), k)
    value = values.get(schema.OBJECTIVE_VALUE.get(policy, ""))
    if value is not None and not (value > 0).any():
        raise ValueError(f"abtest.sim_variants has {policy} but no item has a positive "
                         f"{schema.OBJECTIVE_VALUE[policy]}: drop it or add the column to the items input")
    return attention_topk(users, ckpt_path, k, batch_users, objective=policy, value=value)


def simulate(spark: SparkSession, cfg: Config) -> dict:
    """Write an A/B log for the synthetic shop: one variant per policy of abtest.sim_variants.

    Every user with a test target is exposed, assigned to variant A, B, C... (the policies in order)
    by a hash of the id (abtest.seed). Lists are built as of the test split (history without the
    held-out next item): popularity, or the serving attention model ranked by an objective
    (relevance, expected_revenue, expected_margin, as score.objective ranks). A user clicks with
    probability abtest.sim_click_hit when the held-out next item is in their list, else
    abtest.sim_click_base; a click converts with abtest.sim_convert. A conversion buys the next item
    when it was shown, else one of the shown items at random, and brings its price; in a catalog
    without prices it brings lognormal revenue."""
    ac = cfg.abtest
    root = cfg.tables_root
    ckpt_path = promotion.serving_checkpoint(spark, cfg)
    n_items = checkpoints.cached_model(ckpt_path).cfg.n_items
    users = splits.test_users(spark, cfg).persist()
    k = cfg.score.k
    values = _item_values(spark, root, n_items)
    arms = {chr(ord("A") + i): policy for i, policy in enumerate(ac.sim_variants)}
    lists = None
    for label, policy in arms.items():
        top = _policy_topk(policy, users, ckpt_path, k, cfg.score.batch_users, n_items, values)
        top = top.withColumn("variant", F.lit(label))
        lists = top if lists is None else lists.unionByName(top)
    lists = lists.groupBy("user_idx", "variant").agg(F.array_sort(F.collect_set("item_idx")).alias("shown"))
    variant = F.element_at(F.array(*[F.lit(x) for x in arms]),
                           (F.pmod(F.xxhash64("user_idx", F.lit(ac.seed)), F.lit(len(arms))) + 1).cast("int"))
    exposed = users.select("user_idx", "target").withColumn("variant", variant).join(lists, ["user_idx", "variant"], "left")
    log = (_outcomes(spark, exposed, ac, values["price"])
           .join(tables.read(spark, tables.location(root, schema.USER_INDEX)), "user_idx")
           .select("user_id", "variant", F.lit(datetime.now(timezone.utc).replace(tzinfo=None)).alias("exposed_at"),
                   "clicks", "conversions", "revenue"))
    loc = tables.locate(root, ac.log)
    tables.overwrite(log, loc)
    users.unpersist()
    n = tables.read(spark, loc).count()
    logger.info(f"abtest-simulate: {n} exposed users ({', '.join(f'{v} = {p}' for v, p in arms.items())}; "
                f"top-{k}) -> {loc}")
    return {"rows": n, "log": loc, "variants": arms}


def _outcomes(spark: SparkSession, exposed: DataFrame, ac, price: np.ndarray) -> DataFrame:
    """Simulated behaviour of exposed users (user_idx, variant, target, shown): user_idx, variant,
    clicks, conversions, revenue (see simulate)."""
    u1, u2, u3, u4, u5 = (F.rand(ac.seed + i) for i in range(5))
    hit = F.coalesce(F.array_contains(F.col("shown"), F.col("target")), F.lit(False))
    clicked = F.when(hit, u1 < ac.sim_click_hit).otherwise(u1 < ac.sim_click_base)
    converted = clicked & (u2 < ac.sim_convert)
    bought = F.when(hit, F.col("target")).otherwise(F.element_at("shown", (F.floor(u5 * F.size("shown")) + 1).cast("int")))
    out = exposed.select("user_idx", "variant", clicked.alias("clicked"), converted.alias("converted"),
                         bought.alias("bought"), u3.alias("u3"), u4.alias("u4"))
    if price.any():
        prices = spark.createDataFrame([(i, float(p)) for i, p in enumerate(price) if p > 0], "bought long, price double")
        out = out.join(F.broadcast(prices), "bought", "left")
        value = F.coalesce(F.col("price"), F.lit(0.0))
    else:  # lognormal revenue (Box-Muller)
        normal = F.sqrt(F.lit(-2.0) * F.log(F.col("u3") + F.lit(1e-12))) * F.cos(F.lit(2 * math.pi) * F.col("u4"))
        value = F.exp(F.lit(3.0) + F.lit(0.8) * normal)
    return out.select("user_idx", "variant", F.col("clicked").cast("long").alias("clicks"),
                      F.col("converted").cast("long").alias("conversions"),
                      F.when(F.col("converted"), value).otherwise(F.lit(0.0)).cast("double").alias("revenue"))
