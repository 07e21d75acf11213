"""Evaluation: accuracy and beyond-accuracy metrics, slices and fairness gaps, MLflow tracking."""
import pytest
from pyspark.sql import functions as F

from recsys_spark import baselines, schema, tables
from recsys_spark.evaluate import als_figures_from_training, collaborative_lead


@pytest.mark.slow
def test_evaluation_records_beyond_accuracy_metrics(spark, shop):
    cfg, _ = shop
    m = tables.read(spark, tables.location(cfg.tables_root, schema.METRICS)).where(F.col("k") == 10)
    got = {(r.model, r.metric): r.value for r in m.collect()}
    for model in ("attention", "popularity"):
        for metric in ("mrr", "map", "hitrate", "coverage", "gini", "novelty", "ild", "pop_share"):
            assert (model, metric) in got
    # Popularity recommends (almost) the same items to everyone: lower coverage, higher Gini.
    assert got[("attention", "coverage")] > got[("popularity", "coverage")]
    assert got[("attention", "gini")] < got[("popularity", "gini")]
    sl = tables.read(spark, tables.location(cfg.tables_root, schema.METRIC_SLICES)).where(F.col("model") == "attention")
    kinds = {r.kind for r in sl.select("kind").distinct().collect()}
    assert {"activity", "user_history", "target_item", "age_band", "gender", "region",
            "exposure:popularity_decile", "exposure:category"} <= kinds
    # Every test user is in exactly one activity bucket.
    n_test = m.where((F.col("model") == "attention") & (F.col("metric") == "recall")).first().n_users
    buckets = sl.where((F.col("kind") == "activity") & (F.col("metric") == "ndcg")).agg(F.sum("n_users")).first()[0]
    assert buckets == n_test
    shares = sl.where((F.col("kind") == "exposure:popularity_decile") & (F.col("metric") == "rec_share"))
    assert shares.agg(F.sum("value")).first()[0] == pytest.approx(1.0)
    gap = {r.metric: r.value for r in sl.where((F.col("kind") == "gender") & (F.col("group") == "<gap>")).collect()}
    assert gap["ndcg_gap"] >= 0 and 0 <= gap["ndcg_gap_ci_low"] < gap["ndcg_gap_ci_high"] < 1
    # The shop has purchases: the purchase probabilities are measured too, for both models, and the
    # model's beat popularity's at ranking what the user buys next.
    for model in ("attention", "popularity"):
        for metric in ("log_loss", "brier", "ece", "auc"):
            assert (model, "purchase_" + metric) in got
    assert got[("attention", "purchase_auc")] > got[("popularity", "purchase_auc")]
    assert sl.where(F.col("kind") == "calibration_purchase").count() > 0


@pytest.mark.slow
def test_train_and_evaluate_runs_are_tracked_in_mlflow(spark, shop):
    import os

    from mlflow.tracking import MlflowClient

    from recsys_spark.checkpoints import latest as latest_checkpoint

    cfg, _ = shop
    client = MlflowClient(f"file:{cfg.paths.root}/mlruns")
    exp = client.get_experiment_by_name("recsys-spark")
    runs = client.search_runs([exp.experiment_id])
    model_run = os.path.basename(latest_checkpoint(cfg.models_dir))
    train = [r for r in runs if r.data.tags.get("stage") == "train"]
    assert [r.data.tags["model_run_id"] for r in train] == [model_run]
    t = train[0]
    assert t.data.params["train.epochs"] == "8" and t.data.params["model.n_items"] == "125"
    losses = client.get_metric_history(t.info.run_id, "loss")
    assert 1 <= len(losses) <= 8
    assert len(client.get_metric_history(t.info.run_id, "valid_ndcg_at_10")) == len(losses)
    # The model is logged as an MLflow model, the checkpoint folder its artifact.
    assert f"model/artifacts/{model_run}/model.pt" in [
        a.path for a in client.list_artifacts(t.info.run_id, f"model/artifacts/{model_run}")]
    assert "model/MLmodel" in [a.path for a in client.list_artifacts(t.info.run_id, "model")]
    ev = [r for r in runs if r.data.tags.get("stage") == "evaluate" and r.data.tags["model_run_id"] == model_run]
    m = tables.read(spark, tables.location(cfg.tables_root, schema.METRICS))
    first_eval = m.where((F.col("model") == "attention") & (F.col("metric") == "ndcg") & (F.col("k") == 10)).orderBy("evaluated_at").first()
    logged = {r.data.tags["eval_id"]: r.data.metrics["attention.ndcg_at_10"] for r in ev}
    assert logged[first_eval.eval_run_id] == pytest.approx(first_eval.value)


def test_evaluation_warns_when_als_leads_the_attention_model_beyond_its_validation_interval():
    # The figures of the order-free ml-latest-small run (docs/benchmarks.md, "Weakly sequential data").
    kept = {"valid_ndcg@10": 0.0891, "halfwidth": 0.0178, "epoch": 12, "valid_users": 671}
    warning = collaborative_lead(kept, 0.1165)
    assert "0.1165" in warning and "0.0891 ± 0.0178" in warning and "Weakly sequential data" in warning
    assert "train.collaborative: true" in warning  # what to do about it
    # With train.collaborative the served model is the validation users' choice: it is compared instead.
    served = {"valid_ndcg@10": 0.1170, "halfwidth": 0.0180, "chosen": {"share": 1.0}, "valid_users": 671}
    assert collaborative_lead(served, 0.1165) is None
    assert "train.collaborative: true" not in collaborative_lead({**served, "valid_ndcg@10": 0.08}, 0.1165)
    assert collaborative_lead(kept, 0.1060) is None  # inside the interval: the sample cannot tell them apart
    assert collaborative_lead(kept, 0.0387) is None
    assert collaborative_lead({}, 0.5) is None  # a model trained without validation has nothing to compare


def test_the_als_baseline_takes_its_grid_figures_from_training_only_when_they_cover_the_whole_grid():
    points = baselines.als_grid_points({"ranks": [64], "reg_params": [0.01, 0.1], "alphas": [1.0]}, max_iter=10)
    assert points == [{"rank": 64, "regParam": 0.01, "alpha": 1.0, "maxIter": 10},
                      {"rank": 64, "regParam": 0.1, "alpha": 1.0, "maxIter": 10}]
    figures = {(0.01, 0.5): 0.07, (0.01, 1.0): 0.05, (0.1, 0.5): 0.08, (0.1, 1.0): 0.06}
    tried = [{**p, "share": share, "valid_ndcg@10": figures[p["regParam"], share]}
             for p in points for share in (1.0, 0.5)]
    blend = {"tried": tried, "chosen": "attention"}
    # ALS alone is the share 1.0 of each point, in the grid's order.
    assert als_figures_from_training(blend, points) == [(points[0], 0.05), (points[1], 0.06)]
    # A grid point training did not fit, another maxIter, or no blend at all: evaluate fits the grid.
    wider = baselines.als_grid_points({"ranks": [64], "reg_params": [0.01, 0.1, 1.0], "alphas": [1.0]}, 10)
    assert als_figures_from_training(blend, wider) is None
    assert als_figures_from_training(blend, baselines.als_grid_points({"ranks": [64], "reg_params": [0.01, 0.1],
                                                                      "alphas": [1.0]}, 20)) is None
    assert als_figures_from_training(None, points) is None
    assert als_figures_from_training({"tried": [], "chosen": "attention"}, points) is None
