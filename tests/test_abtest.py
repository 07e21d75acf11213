"""A/B readout statistics, checked against scipy and statsmodels on the same numbers."""

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from pyspark.sql import functions as F

from conftest import SHOP, make_config
from recsys_spark import abtest, checkpoints, cli, ope, promotion, schema, splits, tables
from recsys_spark.ranking import attention_topk
from recsys_spark.abtest import (VariantStats, format_readout, mde, readout, sample_ratio, two_proportion,
                                 variant_stats, welch)


@pytest.mark.parametrize("xa,na,xb,nb", [(120, 2400, 151, 2380), (5, 50, 9, 61), (4000, 10000, 4100, 9900)])
def test_two_proportion_matches_statsmodels(xa, na, xb, nb):
    r = two_proportion(xa, na, xb, nb, alpha=0.05)
    z, p = proportions_ztest([xb, xa], [nb, na])
    assert r["z"] == pytest.approx(z, rel=1e-9) and r["p_value"] == pytest.approx(p, rel=1e-9)
    lo, hi = confint_proportions_2indep(xb, nb, xa, na, method="wald", compare="diff", alpha=0.05)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    assert r["lift"] == pytest.approx((xb / nb - xa / na) / (xa / na))


def test_welch_matches_scipy_and_statsmodels_on_zero_inflated_revenue():
    rng = np.random.default_rng(0)
    a = np.where(rng.random(3000) < 0.05, rng.lognormal(3.0, 0.8, 3000), 0.0)
    b = np.where(rng.random(2800) < 0.06, rng.lognormal(3.0, 0.8, 2800), 0.0)
    r = welch(a.mean(), a.var(ddof=1), len(a), b.mean(), b.var(ddof=1), len(b), alpha=0.1)
    t, p = stats.ttest_ind(b, a, equal_var=False)
    assert r["t"] == pytest.approx(t, rel=1e-9) and r["p_value"] == pytest.approx(p, rel=1e-9)
    lo, hi = CompareMeans(DescrStatsW(b), DescrStatsW(a)).tconfint_diff(alpha=0.1, usevar="unequal")
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))


def test_mde_matches_statsmodels_power_solver():
    sd, na, nb = 0.3, 5000, 4000
    d = NormalIndPower().solve_power(effect_size=None, nobs1=na, alpha=0.05, power=0.8, ratio=nb / na)
    assert mde(sd, na, sd, nb, 0.05, 0.8) == pytest.approx(d * sd, rel=1e-4)


def test_sample_ratio_mismatch_is_flagged_only_when_the_split_is_off():
    assert sample_ratio([5200, 4800], [1, 1])["mismatch"]
    ok = sample_ratio([5050, 4950], [1, 1])
    assert not ok["mismatch"] and ok["p_value"] == pytest.approx(stats.chisquare([5050, 4950]).pvalue)
    assert not sample_ratio([2000, 8000], [0.2, 0.8])["mismatch"]


def test_readout_on_sufficient_statistics_agrees_with_raw_data():
    rng = np.random.default_rng(1)
    rev = {v: np.where(rng.random(n) < p, rng.lognormal(3, 0.8, n), 0.0) for v, n, p in (("A", 4000, 0.04), ("B", 4100, 0.05))}
    groups = [VariantStats(v, len(x), int((x > 0).sum()), int((x > 0).sum()), float(x.sum()), float((x ** 2).sum()))
              for v, x in rev.items()]
    r = readout(groups, "A")
    t, p = stats.ttest_ind(rev["B"], rev["A"], equal_var=False)
    assert r["variants"]["B"]["revenue_per_user"]["p_value"] == pytest.approx(p, rel=1e-6)
    assert "revenue_per_user" in format_readout(r)
    with pytest.raises(ValueError, match="control variant 'C'"):
        readout(groups, "C")


@pytest.mark.slow
def test_spark_aggregation_gives_the_same_statistics_and_refuses_duplicate_users(spark):
    rows = [("u1", "A", 1, 0, 0.0), ("u2", "A", 0, 0, 0.0), ("u3", "A", 2, 1, 30.5),
            ("u4", "B", 1, 1, 12.0), ("u5", "B", 3, 2, 8.0)]
    df = spark.createDataFrame(rows, "user_id string, variant string, clicks long, conversions long, revenue double")
    a, b = variant_stats(df)
    assert (a.variant, a.n, a.clickers, a.converters, a.revenue_sum) == ("A", 3, 2, 1, 30.5)
    assert b.revenue_var == pytest.approx(np.var([12.0, 8.0], ddof=1))
    dup = df.unionByName(spark.createDataFrame([("u1", "B", 0, 0, 0.0)], df.schema))
    with pytest.raises(ValueError, match="1 users appear more than once"):
        variant_stats(dup)


@pytest.mark.slow
def test_simulated_ab_test_reads_out_the_better_model(spark, shop_copy):
    # Users click their next item often enough that 300 users per arm show the model's lead
    # (its hit rate is about twice popularity's).
    cfg = make_config(shop_copy.paths.root, **SHOP, abtest={"sim_click_hit": 0.6})
    out = cli.run_stage(spark, cfg, "abtest-simulate")
    n_test = tables.read(spark, tables.location(cfg.tables_root, schema.SEQUENCES)).where(F.col("test_target").isNotNull()).count()
    assert out["rows"] == n_test
    r = cli.run_stage(spark, cfg, "abtest")
    assert not r["srm"]["mismatch"]
    b = r["variants"]["B"]  # attention vs popularity
    assert b["ctr"]["diff"] > 0 and b["ctr"]["p_value"] < 0.01 and b["ctr"]["ci_low"] > 0
    assert b["n_control"] + b["n_treatment"] == n_test


def test_simulated_objectives_show_their_own_lists_and_earn_the_price_bought(spark, shop_copy):
    """With every shown next item clicked and bought (and nothing else), each user's outcome follows
    from their arm's list alone: bought exactly when the next item is in it, for that item's price."""
    cfg = make_config(shop_copy.paths.root, **SHOP, abtest={
        "sim_variants": ["relevance", "expected_revenue"], "sim_click_hit": 1.0, "sim_click_base": 0.0,
        "sim_convert": 1.0})
    out = abtest.simulate(spark, cfg)
    assert out["variants"] == {"A": "relevance", "B": "expected_revenue"}

    root, k = cfg.tables_root, cfg.score.k
    ckpt = promotion.serving_checkpoint(spark, cfg)
    n_items = checkpoints.cached_model(ckpt).cfg.n_items
    price = np.zeros(n_items)
    for r in tables.read(spark, tables.location(root, schema.ITEM_CONTENT)).where(f"item_idx < {n_items}").collect():
        price[r.item_idx] = r.price or 0.0
    users = splits.test_users(spark, cfg)
    shown = {}
    for variant, objective in out["variants"].items():
        top = attention_topk(users, ckpt, k, objective=objective, value=price if objective != "relevance" else None)
        for r in top.collect():
            shown.setdefault((variant, r.user_idx), set()).add(r.item_idx)
    targets = {r.user_idx: r.target for r in users.select("user_idx", "target").collect()}
    log = (tables.read(spark, out["log"]).join(tables.read(spark, tables.location(root, schema.USER_INDEX)), "user_id")
           .collect())
    assert len(log) == len(targets)
    arms = {"A": 0, "B": 0}
    for r in log:
        arms[r.variant] += 1
        hit = targets[r.user_idx] in shown[(r.variant, r.user_idx)]
        assert (r.clicks, r.conversions) == (int(hit), int(hit))
        assert r.revenue == pytest.approx(price[targets[r.user_idx]] if hit else 0.0)
    assert min(arms.values()) > 0.4 * len(log)
    # The expected-revenue arm shows dearer items than the relevance arm.
    mean_price = {v: np.mean([price[i] for (arm, _), items in shown.items() if arm == v for i in items]) for v in arms}
    assert mean_price["B"] > mean_price["A"]


def test_off_policy_estimators_on_a_hand_computed_log(spark):
    log = spark.createDataFrame([("a", "x", 1.0, 1, 10.0), ("a", "y", 0.5, 1, 0.0),
                                 ("b", "x", 1.0, 0, 0.0), ("b", "z", 0.25, 1, 4.0)],
                                "user_id string, item_id string, propensity double, clicked long, revenue double")
    cand = spark.createDataFrame([("a", "x"), ("a", "z"), ("b", "x"), ("b", "z")], "user_id string, item_id string")
    got = {(r["metric"], r["estimator"]): r for r in ope.estimate(log, cand)}
    # IPS per user: a 1/1 = 1, b 0 + 1/0.25 = 4. W: a (1/1) / 2 = 0.5, b (1 + 4) / 2 = 2.5.
    assert got["clicks", "IPS"]["value"] == pytest.approx(2.5)
    assert got["clicks", "IPS"]["ci_high"] - got["clicks", "IPS"]["value"] == pytest.approx(
        stats.norm.ppf(0.975) * np.std([1, 4], ddof=1) / np.sqrt(2))
    assert got["clicks", "SNIPS"]["value"] == pytest.approx(5 / 3)
    assert got["revenue", "IPS"]["value"] == pytest.approx((10 + 16) / 2)
    assert got["clicks", "logged"]["value"] == pytest.approx(1.5)
    # Reward model: each item's mean click shrunk to the overall 0.75 by 20 pseudo-exposures.
    q = {"x": (1 + 15) / 22, "y": (1 + 15) / 21, "z": (1 + 15) / 21}
    assert got["clicks", "DM"]["value"] == pytest.approx(q["x"] + q["z"])
    dr = [q["x"] + q["z"] + (1 - q["x"]), q["x"] + q["z"] + (0 - q["x"]) + 4 * (1 - q["z"])]
    assert got["clicks", "DR"]["value"] == pytest.approx(np.mean(dr))
    assert got["clicks", "IPS"]["matched_share"] == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="1 rows of the log have a propensity outside"):
        ope.estimate(log.withColumn("propensity", F.when(F.col("item_id") == "y", 0.0).otherwise(F.col("propensity"))), cand)


@pytest.mark.slow
def test_off_policy_estimates_hold_the_true_value_of_a_policy_the_log_explored(spark, shop_copy):
    """A relevance model with 3 of 10 slots exploring the next 20 candidates logs the shop; the plain
    relevance top-10 is then estimated from that log and its true value computed from the simulator."""
    cfg = make_config(shop_copy.paths.root, **{**SHOP, "score": {**SHOP["score"], "explore_slots": 3, "explore_pool": 20}},
                      abtest={"sim_variants": ["relevance"], "sim_click_hit": 0.9, "sim_click_base": 0.02},
                      ope={"policies": ["relevance", "popularity"], "alpha": 0.001})
    sim = abtest.simulate(spark, cfg)
    exposures = tables.read(spark, sim["exposures"])
    assert exposures.where(F.col("rank") > 7).where(F.abs(F.col("propensity") - 0.15) > 1e-6).count() == 0
    per_user = exposures.groupBy("user_id").agg(F.sum("clicked").alias("c"), F.sum("revenue").alias("r"))
    log = tables.read(spark, sim["log"]).join(per_user, "user_id")
    assert log.count() == sim["rows"] and log.where((F.col("clicks") != F.col("c"))
                                                    | (F.abs(F.col("revenue") - F.col("r")) > 1e-6)).count() == 0

    out = cli.run_stage(spark, cfg, "ope")
    got = {(r["policy"], r["metric"], r["estimator"]): r for r in out["estimates"]}
    shop = abtest.Shop.open(spark, cfg)
    truth = abtest.expected_value(spark, shop, shop.lists(cfg, "relevance"), cfg.abtest)
    shop.close()
    for metric in ("clicks", "revenue"):
        for est in ("IPS", "SNIPS", "DR"):
            r = got["relevance", metric, est]
            assert r["ci_low"] <= truth[metric] <= r["ci_high"], (metric, est, r, truth)
    # The log shows the whole top 7 and some of ranks 8-10; popularity's lists are mostly items the
    # explorer never shows, and the diagnostics say so.
    assert got["relevance", "clicks", "IPS"]["matched_share"] > 0.7
    assert got["popularity", "clicks", "IPS"]["matched_share"] < got["relevance", "clicks", "IPS"]["matched_share"]
    stored = tables.read(spark, tables.location(cfg.tables_root, schema.OPE_ESTIMATES))
    assert stored.count() == len(out["estimates"]) == 2 * 2 * 5


@pytest.mark.slow
def test_off_policy_estimates_of_a_scored_night_make_its_lists_again_and_reward_what_followed(spark, shop_copy, tmp_path):
    """The shop's nightly scored 2026-07-01 without exploration. Estimated from that night's lists,
    the relevance candidate, made again from the night's model, inputs and rules (not from the
    features rebuilt since), is the logged list itself: every estimator gives what the night earned.
    A shown item earns from the user's events on it in the day after the night."""
    from datetime import date

    import pandas as pd

    root, night = shop_copy.paths.root, "2026-07-01"
    recs = tables.read(spark, tables.location(shop_copy.tables_root, schema.RECOMMENDATIONS)).where(
        F.col("run_date") == night).toPandas()
    first = recs[recs["rank"] == 1].set_index("user_id").item_id
    users = sorted(first.index)
    buyers, viewer, late = users[:3], users[3], users[4]
    new = pd.DataFrame({"user_id": buyers + [viewer, late],
                        "item_id": [first[u] for u in buyers + [viewer, late]],
                        "event_type": ["purchase"] * 3 + ["view", "purchase"],
                        "timestamp": pd.to_datetime(["2026-07-01 12:00:00"] * 3 + ["2026-07-01 18:00:00",
                                                                                   "2026-07-02 09:00:00"])})
    (tmp_path / "new").mkdir()
    new.to_parquet(tmp_path / "new" / "events.parquet")
    cli.run_stage(spark, make_config(root, ingest={"events": str(tmp_path / "new")}), "ingest")
    cli.run_stage(spark, make_config(root, **SHOP), "features")  # the bought items are now seen: lists would differ

    cfg = make_config(root, **SHOP, ope={"night": night, "policies": ["relevance", "popularity"]})
    out = cli.run_stage(spark, cfg, "ope")
    got = {(r["policy"], r["metric"], r["estimator"]): r for r in out["estimates"]}

    # What the night earned, counted here from the events table: any event on a shown item in the
    # day from the night is a click, a purchase earns the item's price.
    events = tables.read(spark, tables.location(shop_copy.tables_root, schema.EVENTS)).where(
        (F.col("ts") >= "2026-07-01") & (F.col("ts") < "2026-07-02")).select("user_id", "item_id", "event_type").toPandas()
    price = tables.read(spark, tables.location(shop_copy.tables_root, schema.ITEM_CONTENT)).select(
        "item_id", "price").toPandas().set_index("item_id").price
    shown = set(zip(recs.user_id, recs.item_id))
    acted = events[[(u, i) in shown for u, i in zip(events.user_id, events.item_id)]]
    clicks = len(acted[["user_id", "item_id"]].drop_duplicates())
    bought = acted[acted.event_type == "purchase"][["user_id", "item_id"]].drop_duplicates()
    revenue = float(sum(price[i] for i in bought.item_id))
    assert clicks >= 4 and revenue >= sum(price[first[u]] for u in buyers) > 0  # the late purchase is outside
    n = recs.user_id.nunique()
    for metric, total in (("clicks", clicks), ("revenue", revenue)):
        for est in ("logged", "IPS", "SNIPS", "DR"):
            assert got["relevance", metric, est]["value"] == pytest.approx(total / n), (metric, est)
    assert got["relevance", "clicks", "IPS"]["matched_share"] == 1.0
    assert got["relevance", "clicks", "IPS"]["n_users"] == n
    # Popularity's lists are mostly items the night never showed, and the diagnostics say so.
    assert got["popularity", "clicks", "IPS"]["matched_share"] < 0.5
    stored = tables.read(spark, tables.location(shop_copy.tables_root, schema.OPE_ESTIMATES)).toPandas()
    assert len(stored) == 2 * 2 * 5 and (stored.night.astype(str) == night).all()

    # A night never scored, or one whose rewards are not all in, is refused with the reason.
    with pytest.raises(ValueError, match="no scoring run for 2026-06-30 .* the nights scored: 2026-07-01"):
        cli.run_stage(spark, make_config(root, **SHOP, ope={"night": "2026-06-30"}), "ope")
    with pytest.raises(ValueError, match="window closes on 2026-07-02"):
        ope.logged_night(spark, cfg, date(2026, 7, 1), today=date(2026, 7, 1))
    # `latest` (the scheduled job's setting): the newest night whose window has closed.
    latest = make_config(root, **SHOP, ope={"night": "latest"})
    assert ope.night_to_estimate(spark, latest, today=date(2026, 7, 2)) == date(2026, 7, 1)
    with pytest.raises(ValueError, match="no scored night's 1-day reward window has closed by 2026-07-01"):
        ope.night_to_estimate(spark, latest, today=date(2026, 7, 1))
