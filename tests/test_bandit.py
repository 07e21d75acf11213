"""The feedback loop: LinUCB's state learned in Spark, and its simulated days on the shop."""
import dataclasses

import numpy as np
import pytest
from pyspark.sql import functions as F

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
