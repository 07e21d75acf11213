"""The promotion gate: a new model serves only after an evaluation found it no worse than the
champion (the first one: than popularity); a worse model never reaches the recommendations."""
import math

import pytest
from pyspark.sql import functions as F

import torch

from conftest import make_config
from recsys_spark import checkpoints, cli, promotion, schema, tables
from recsys_spark.checkpoints import latest as latest_checkpoint


def test_the_gate_passes_within_the_tolerance_and_never_on_nan():
    assert promotion.decide("b", 0.099, "champion", "a", 0.100, 0.02).promoted
    assert promotion.decide("b", 0.0981, "champion", "a", 0.100, 0.02).promoted
    assert not promotion.decide("b", 0.097, "champion", "a", 0.100, 0.02).promoted
    assert not promotion.decide("b", 0.0999, "champion", "a", 0.100, 0.0).promoted
    assert not promotion.decide("b", math.nan, "popularity", "", 0.01, 0.02).promoted
    assert "keeps serving" in promotion.decide("b", 0.05, "champion", "a", 0.1, 0.02).reason


@pytest.mark.slow
def test_the_first_model_is_promoted_over_popularity_and_registered_as_champion(spark, shop):
    from mlflow.tracking import MlflowClient

    cfg, _ = shop
    newest = latest_checkpoint(cfg.models_dir).rsplit("/", 1)[-1]
    rows = tables.read(spark, tables.location(cfg.tables_root, schema.MODEL_PROMOTIONS)).collect()
    assert [(r.candidate_run_id, r.reference, r.promoted) for r in rows] == [(newest, "popularity", True)]
    assert rows[0].candidate_value > rows[0].reference_value
    assert promotion.champion_run_id(spark, cfg) == newest
    latest = tables.read(spark, tables.location(cfg.tables_root, schema.RECOMMENDATIONS_LATEST))
    assert {r.model_run_id for r in latest.select("model_run_id").distinct().collect()} == {newest}
    client = MlflowClient(f"file:{cfg.paths.root}/mlruns")
    version = client.get_model_version_by_alias(cfg.tracking.registered_model, "champion")
    assert version.tags["model_run_id"] == newest
    import mlflow

    mlflow.set_tracking_uri(f"file:{cfg.paths.root}/mlruns")
    info = mlflow.models.get_model_info(f"models:/{cfg.tracking.registered_model}@champion")
    assert info.signature.inputs.input_names() == ["history"] and info.signature.params.params[0].name == "k"


@pytest.mark.slow
def test_a_worse_model_never_reaches_the_recommendations(spark, shop_copy):
    cfg = shop_copy
    latest_loc = tables.location(cfg.tables_root, schema.RECOMMENDATIONS_LATEST)
    before = {tuple(r) for r in tables.read(spark, latest_loc).select("user_id", "rank", "item_id", "model_run_id").collect()}
    champion = promotion.champion_run_id(spark, cfg)
    # A broken model: the champion's checkpoint with its weights back at random initial values,
    # saved as a newer run (to the product it is a normally trained, complete checkpoint).
    model, ckpt = checkpoints.load(latest_checkpoint(cfg.models_dir))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    manifest = {k: ckpt[k] for k in ("model_config", "train_config", "data_versions", "history", "best_epoch",
                                     "calibration")}
    checkpoints.save(cfg.models_dir, "attn-broken", model, manifest, ckpt["config"])
    candidate = latest_checkpoint(cfg.models_dir).rsplit("/", 1)[-1]
    assert candidate == "attn-broken" != champion
    cli.run_stage(spark, cfg, "score")  # before any evaluation: the champion serves
    assert {tuple(r) for r in tables.read(spark, latest_loc).select("user_id", "rank", "item_id", "model_run_id").collect()} == before

    result = cli.run_stage(spark, cfg, "evaluate")
    decision = result["promotion"]
    assert decision.candidate == candidate and decision.reference_run == champion and not decision.promoted
    # The gap, paired over the same test users, is far more than noise, and the decision says so.
    gap = decision.paired
    assert gap["ndcg@10_diff"] == pytest.approx(decision.candidate_value - decision.reference_value)
    assert gap["ndcg@10_diff"] < -gap["halfwidth"] < 0 and f"paired over {gap['users']} users -" in decision.reason
    assert promotion.champion_run_id(spark, cfg) == champion
    cli.run_stage(spark, cfg, "score")
    assert {tuple(r) for r in tables.read(spark, latest_loc).select("user_id", "rank", "item_id", "model_run_id").collect()} == before
    rejected = tables.read(spark, tables.location(cfg.tables_root, schema.MODEL_PROMOTIONS)).where(~F.col("promoted")).collect()
    assert [r.candidate_run_id for r in rejected] == [candidate] and "keeps serving" in rejected[0].reason
    # The rejected model is not judged again on a night without training: evaluate watches the champion.
    assert promotion.evaluated_checkpoint(spark, cfg).endswith(champion)
    assert cli.retrain_due(spark, make_config(cfg.paths.root, train={"retrain_every": 1}))[0]
