"""End to end: the nightly stages on real Spark, Delta, Petastorm, Horovod on the synthetic shop."""
import pytest
from pyspark.sql import functions as F

from conftest import make_config
from recsys_spark import cli, schema, tables


@pytest.mark.slow
def test_attention_beats_popularity_by_a_clear_margin(spark, shop):
    cfg, _ = shop
    m = tables.read(spark, tables.location(cfg.tables_root, schema.METRICS)).where(F.col("k") == 10)
    got = {(r.model, r.metric): r.value for r in m.collect()}
    assert got[("attention", "ndcg")] > 2 * got[("popularity", "ndcg")]
    assert got[("attention", "ndcg")] > 0.15
    assert got[("attention", "recall")] > got[("popularity", "recall")]


@pytest.mark.slow
def test_checkpoint_records_source_versions(spark, shop):
    import json
    import os

    from recsys_spark.checkpoints import latest as latest_checkpoint

    cfg, _ = shop
    path = latest_checkpoint(cfg.models_dir)
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    train_path = tables.location(cfg.tables_root, schema.TRAIN_EXAMPLES)
    assert manifest["data_versions"][schema.TRAIN_EXAMPLES] == tables.version(spark, train_path)
    history = manifest["history"]
    assert 1 <= len(history) <= 8 and all("valid_ndcg@10" in h for h in history)
    # The checkpoint keeps the epoch with the best validation NDCG@10 (early stopping).
    assert manifest["best_epoch"] == max(history, key=lambda h: h["valid_ndcg@10"])["epoch"]
    assert manifest["model_config"]["n_items"] == 125  # 120 items + 4 new ones (no events) + padding


@pytest.mark.slow
def test_reingesting_the_same_raw_files_changes_nothing_downstream(spark, shop_copy):
    cfg = shop_copy
    events = tables.location(cfg.tables_root, schema.EVENTS)
    n = tables.read(spark, events).count()
    cli.run_stage(spark, cfg, "ingest")
    assert tables.read(spark, events).count() == n
    q = tables.read(spark, tables.location(cfg.tables_root, schema.QUARANTINE))
    assert q.count() > 0 and q.where(F.col("source_file").isNull()).count() == 0


@pytest.mark.slow
def test_retraining_cadence_counts_nights_served(spark, shop):
    cfg, _ = shop
    weekly = make_config(cfg.paths.root, train={"retrain_every": 7})
    due, why = cli.retrain_due(spark, weekly)
    assert not due and "of 7 night(s)" in why
    nightly = make_config(cfg.paths.root, train={"retrain_every": 1})
    assert cli.retrain_due(spark, nightly)[0]
