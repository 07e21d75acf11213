"""Slice metrics and fairness gaps: each user's outcome from Spark, the summaries in pandas/numpy."""
import numpy as np
import pandas as pd
import pytest

from recsys_spark.slices import fairness_gap, fairness_gaps, slice_table, user_outcomes
from conftest import make_config


def test_each_users_outcome_and_slice_labels_on_a_hand_example(spark, tmp_path):
    cfg = make_config(tmp_path)  # no users table: no declared attributes
    users = spark.createDataFrame([(1, [5, 6], 2), (2, [5, 6, 7], 3), (3, list(range(60)), 9)],
                                  "user_idx long, input array<long>, target long")
    recs = spark.createDataFrame([(1, 9, 1), (1, 2, 2), (2, 3, 3), (2, 4, 12), (3, 1, 1)],
                                 "user_idx long, item_idx long, rank int")
    popularity = np.array([0, 1, 40, 6, 2])  # item 9 lies beyond the counts: never seen, so cold
    got = user_outcomes(spark, cfg, users, recs, 10, popularity).set_index("user_idx").sort_index()
    assert list(got.columns) == ["hit", "ndcg", "activity", "user_history", "target_item"]
    assert got["hit"].tolist() == [1.0, 1.0, 0.0]
    assert got["ndcg"].tolist() == pytest.approx([1 / np.log2(3), 1 / np.log2(4), 0.0])
    assert got["activity"].tolist() == ["0-4", "0-4", "50+"]
    assert got["user_history"].tolist() == ["cold", "warm", "warm"]
    assert got["target_item"].tolist() == ["warm", "warm", "cold"]


def test_slice_table_on_a_hand_example():
    df = pd.DataFrame({"user_idx": [0, 1, 2, 3], "hit": [1.0, 0.0, 1.0, 1.0], "ndcg": [1.0, 0.0, 0.5, 0.25],
                       "gender": ["f", "f", "m", "m"], "activity": ["0-4", "5-9", "5-9", "5-9"]})
    t = slice_table(df).set_index(["kind", "group"])
    assert t.loc[("gender", "f"), "ndcg"] == pytest.approx(0.5) and t.loc[("gender", "m"), "recall"] == 1.0
    assert t.loc[("activity", "5-9"), "n_users"] == 3
    assert t.loc[("activity", "5-9"), "ndcg"] == pytest.approx(0.25)


def test_fairness_gap_and_its_bootstrap_interval():
    values = {"a": np.r_[np.ones(200), np.zeros(200)], "b": np.zeros(300) + 0.1, "c": np.full(100, 0.3)}
    g = fairness_gap(values, n_boot=300, seed=1)
    assert g["gap"] == pytest.approx(0.4) and (g["best"], g["worst"]) == ("a", "b")
    assert g["ci_low"] < 0.4 < g["ci_high"] and g["ci_high"] - g["ci_low"] < 0.15
    assert fairness_gap(values, n_boot=300, seed=1) == g  # seeded


def test_small_groups_are_left_out_of_gaps():
    df = pd.DataFrame({"user_idx": range(70), "hit": 0.0, "ndcg": np.r_[np.zeros(40), np.ones(30)],
                       "region": ["n"] * 40 + ["s"] * 25 + ["e"] * 5})
    gaps = fairness_gaps(df, min_group=10, n_boot=50)
    assert gaps["region"]["gap"] == pytest.approx(1.0) and gaps["region"]["best"] == "s"
    assert "region" not in fairness_gaps(df, min_group=41, n_boot=50)
