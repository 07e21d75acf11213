"""The feedback loop: LinUCB's state learned in Spark, and its simulated days on the shop."""
import dataclasses

import numpy as np
import pytest
from pyspark.sql import functions as F

from conftest import make_config
from recsys_spark import bandit, cli, schema, tables


def _rows(spark, n=400, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.random((n, len(bandit.FEATURES)))
    x[:, 0] = 1.0
    reward = 0.5 + 2.0 * x[:, 4] - 1.0 * x[:, 2]
    rows = [(i, *map(float, xi), float(r)) for i, (xi, r) in enumerate(zip(x, reward))]
    return spark.createDataFrame(rows, ["user_idx", *bandit.X, "revenue"]), x, reward


def test_linucb_learns_a_linear_reward_in_spark_and_ranks_by_its_upper_bound(spark):
    df, x, reward = _rows(spark)
    sums = lambda part: part.agg(*bandit.sufficient_sums(part, "revenue")).first()  # noqa: E731
    state = bandit.learn(bandit.LinUCB.prior(1e-6), sums(df))
    assert state.n == len(x)
    np.testing.assert_allclose(state.theta, [0.5, 0.0, -1.0, 0.0, 2.0], atol=1e-5)
    # Two nights' updates give the state of one update over both.
    split = bandit.learn(bandit.learn(bandit.LinUCB.prior(1e-6), sums(df.where("user_idx < 150"))),
                         sums(df.where("user_idx >= 150")))
    np.testing.assert_allclose(split.a, state.a, rtol=1e-9)
    np.testing.assert_allclose(split.b, state.b, rtol=1e-9)
    # Before any feedback the estimate is the model's order (all weight on relevance), and the
    # bound is theta.x + alpha sqrt(x^T A^-1 x), computed in Spark as numpy does.
    prior = bandit.LinUCB.prior(2.0)
    np.testing.assert_allclose(prior.theta, [0, 1, 0, 0, 0])
    got = np.array([r.u for r in df.orderBy("user_idx").select(prior.ucb(0.7).alias("u")).collect()])
    inv = np.linalg.inv(prior.a)
    want = x @ prior.theta + 0.7 * np.sqrt(np.einsum("ni,ij,nj->n", x, inv, x))
    np.testing.assert_allclose(got, want, rtol=1e-9)
    # The per-user top-k keeps the highest bound, ties to the smaller item.
    items = spark.createDataFrame([(1, 5, 0.3), (1, 2, 0.9), (1, 7, 0.9), (2, 1, 0.1)], "user_idx long, item_idx long, s double")
    top = bandit.top_by(items, F.col("s"), 2).orderBy("user_idx", "rank").collect()
    assert [(r.user_idx, r.item_idx, r.rank) for r in top] == [(1, 2, 1), (1, 7, 2), (2, 1, 1)]


@pytest.mark.slow
def test_the_simulated_loop_learns_to_weigh_price_and_the_report_plots_it(spark, shop_copy):
    cfg = dataclasses.replace(shop_copy, bandit=dataclasses.replace(shop_copy.bandit, days=3))
    out = cli.run_stage(spark, cfg, "bandit-simulate")
    days = tables.read(spark, tables.location(cfg.tables_root, schema.BANDIT_DAYS)).toPandas()
    assert sorted(days.policy.unique()) == ["bandit", "greedy", "uniform"] and sorted(days.day.unique()) == [0, 1, 2]
    users = out["users"]
    assert users > 500 and (days.users == users).all()
    per = days.groupby(["policy", "day"]).sum(numeric_only=True)
    greedy = per.loc["greedy"]
    # The greedy lists are the same every day; only the draws differ.
    assert greedy.expected_revenue.nunique() == 1 and greedy.revenue.nunique() > 1
    # Showing random candidates costs clicks; the bandit, rewarded by revenue, learns that price
    # pays and earns more than the greedy model on its last day, without giving up most clicks.
    assert per.loc["uniform"].expected_clicks.max() < 0.75 * greedy.expected_clicks.iloc[0]
    last = per.loc[("bandit", 2)]
    assert last.expected_revenue > 1.1 * greedy.expected_revenue.iloc[0]
    assert last.expected_clicks > 0.8 * greedy.expected_clicks.iloc[0]
    theta = out["theta"]
    assert theta["value"] > max(abs(v) for f, v in theta.items() if f != "value")
    # Each night learns from every item the bandit showed that day.
    states = tables.read(spark, tables.location(cfg.tables_root, schema.BANDIT_STATE)).orderBy("day").collect()
    assert [s.n for s in states] == [users * cfg.score.k * (d + 1) for d in range(3)]
    np.testing.assert_allclose(states[-1].theta, list(theta.values()))
    doc = open(cli.run_stage(spark, cfg, "report")).read()
    assert "Feedback loop" in doc and 'alt="cumulative revenue of the feedback loop" src="data:image/png' in doc


def _bound(state, alpha, x):
    return x @ state.theta + alpha * np.sqrt(np.einsum("ni,ij,nj->n", x, np.linalg.inv(state.a), x))


def _follows(shown, state, alpha):
    """Whether every user's ranks order their shown items by the state's bound (ties aside)."""
    shown = shown.assign(u=_bound(state, alpha, shown[bandit.X].to_numpy()))
    return all((np.diff(g.sort_values("rank").u.to_numpy()) <= 1e-9).all() for _, g in shown.groupby("user_id"))


@pytest.mark.slow
def test_the_serving_reranker_shows_what_it_logs_and_learns_each_night_from_the_rewards_that_followed(
        spark, shop_copy, tmp_path):
    import pandas as pd

    root, alpha = shop_copy.paths.root, 0.5
    night = lambda d: make_config(root, score={"k": 10, "run_date": d}, bandit={"serve": True, "pool": 20, "alpha": alpha})  # noqa: E731
    exposures = lambda: tables.read(spark, tables.location(shop_copy.tables_root, schema.BANDIT_EXPOSURES)).toPandas()  # noqa: E731
    cli.run_stage(spark, night("2026-07-10"), "score")
    shown = exposures()
    recs = tables.read(spark, tables.location(shop_copy.tables_root, schema.RECOMMENDATIONS)).where(
        F.col("run_date") == "2026-07-10").toPandas()
    model_made = recs[recs.served_by.isin(bandit.MODEL_MADE)]
    # The log is exactly what model-made lists showed; every list has k items, ordered by the
    # prior's bound, which looks beyond the model's own top k.
    assert sorted(zip(shown.user_id, shown.item_id, shown["rank"])) == sorted(
        zip(model_made.user_id, model_made.item_id, model_made["rank"]))
    assert (recs.groupby("user_id").size() == 10).all() and len(shown) > 5000
    prior = bandit.LinUCB.prior(1.0)
    assert _follows(shown, prior, alpha)
    by_relevance = shown.groupby("user_id").x_relevance.rank(ascending=False, method="first")
    assert (by_relevance != shown["rank"]).any()

    # Rewards: each logged user buys their 10th item on the night; a view of a shown item two days
    # later is outside the one-day window and earns nothing.
    tenth = shown[shown["rank"] == 10]
    ninth = shown[shown["rank"] == 9]
    new = pd.DataFrame({"user_id": list(tenth.user_id) + list(ninth.user_id),
                        "item_id": list(tenth.item_id) + list(ninth.item_id),
                        "event_type": ["purchase"] * len(tenth) + ["view"] * len(ninth),
                        "timestamp": pd.to_datetime(["2026-07-10 12:00:00"] * len(tenth) + ["2026-07-12 09:00:00"] * len(ninth))})
    (tmp_path / "new").mkdir()
    new.to_parquet(tmp_path / "new" / "events.parquet")
    cli.run_stage(spark, make_config(root, ingest={"events": str(tmp_path / "new")}), "ingest")
    for _ in range(2):  # a rerun of the night learns nothing twice
        cli.run_stage(spark, night("2026-07-11"), "score")
    states = tables.read(spark, tables.location(shop_copy.tables_root, schema.BANDIT_STATE)).toPandas()
    assert len(states) == 1 and str(states.learned_through[0]) == "2026-07-10" and states.n[0] == len(shown)
    x = shown[bandit.X].to_numpy()
    reward = np.where(shown["rank"] == 10, shown.reward_value, 0.0)
    want = bandit.LinUCB(prior.a + x.T @ x, prior.b + x.T @ reward, len(x))
    np.testing.assert_allclose(states.theta[0], want.theta, rtol=1e-6, atol=1e-9)
    # The next night ranks by what was learned (the prior's order would differ).
    learned = exposures()
    learned = learned[learned.run_date.astype(str) == "2026-07-11"]
    assert _follows(learned, want, alpha) and not _follows(learned, prior, alpha)
