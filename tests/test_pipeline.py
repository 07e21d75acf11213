"""End to end on a small synthetic shop: the nightly stages on real Spark, Delta, Petastorm, Horovod."""
import pytest
from pyspark.sql import functions as F

from conftest import make_config
from recsys_spark import cli, schema, tables
from recsys_spark.generate import generate


@pytest.fixture(scope="module")
def shop(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    cfg = make_config(
        root,
        generate={"users": 600, "items": 120, "events": 30000, "corrupt_fraction": 0.002},
        features={"max_seq_len": 20, "train_files": 4},
        train={"epochs": 8, "batch_size": 64, "d_model": 32, "lr": 0.005},
        score={"k": 10, "run_date": "2026-07-01"},
    )
    generate(cfg.generate, cfg.paths.raw)
    timings = cli.run_stage(spark, cfg, "nightly")
    return cfg, timings


def _recs(spark, cfg):
    return tables.read(spark, tables.path(cfg.tables_dir, schema.RECOMMENDATIONS))


@pytest.mark.slow
def test_attention_beats_popularity_by_a_clear_margin(spark, shop):
    cfg, _ = shop
    m = tables.read(spark, tables.path(cfg.tables_dir, schema.METRICS)).where(F.col("k") == 10)
    got = {(r.model, r.metric): r.value for r in m.collect()}
    assert got[("attention", "ndcg")] > 2 * got[("popularity", "ndcg")]
    assert got[("attention", "ndcg")] > 0.15
    assert got[("attention", "recall")] > got[("popularity", "recall")]


@pytest.mark.slow
def test_recommendations_contract(spark, shop):
    cfg, _ = shop
    recs = _recs(spark, cfg).where(F.col("run_date") == "2026-07-01")
    n_users = tables.read(spark, tables.path(cfg.tables_dir, schema.SEQUENCES)).count()
    assert recs.count() == n_users * 10
    ranks = recs.groupBy("user_id").agg(F.sort_array(F.collect_list("rank")).alias("r"),
                                         F.countDistinct("item_id").alias("n"))
    assert ranks.where((F.col("r") != F.array(*[F.lit(i) for i in range(1, 11)])) | (F.col("n") != 10)).count() == 0
    # Scores are non-increasing with rank.
    bad = (recs.alias("a").join(recs.alias("b"), (F.col("a.user_id") == F.col("b.user_id"))
                                & (F.col("b.rank") == F.col("a.rank") + 1))
           .where(F.col("b.score") > F.col("a.score")))
    assert bad.count() == 0
    # No item the user has already touched.
    seen = (tables.read(spark, tables.path(cfg.tables_dir, schema.EVENTS))
            .select("user_id", "item_id").distinct())
    assert recs.join(seen, ["user_id", "item_id"]).count() == 0


@pytest.mark.slow
def test_rescoring_a_date_replaces_its_partition_only(spark, shop):
    cfg, _ = shop
    before = _recs(spark, cfg).where(F.col("run_date") == "2026-07-01").count()
    other = make_config(cfg.paths.root, score={"k": 10, "run_date": "2026-07-02"})
    cli.run_stage(spark, other, "score")
    cli.run_stage(spark, cfg, "score")  # same date again
    recs = _recs(spark, cfg)
    counts = {str(r.run_date): r["count"] for r in recs.groupBy("run_date").count().collect()}
    assert counts == {"2026-07-01": before, "2026-07-02": before}
    assert recs.where(F.col("run_date") == "2026-07-01").select("user_id", "rank").distinct().count() == before


@pytest.mark.slow
def test_checkpoint_records_source_versions(spark, shop):
    import json
    import os

    from recsys_spark.train import latest_checkpoint

    cfg, _ = shop
    path = latest_checkpoint(cfg.models_dir)
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    train_path = tables.path(cfg.tables_dir, schema.TRAIN_EXAMPLES)
    assert manifest["data_versions"][schema.TRAIN_EXAMPLES] == tables.version(spark, train_path)
    history = manifest["history"]
    assert 1 <= len(history) <= 8 and all("valid_ndcg@10" in h for h in history)
    # The checkpoint keeps the epoch with the best validation NDCG@10 (early stopping).
    assert manifest["best_epoch"] == max(history, key=lambda h: h["valid_ndcg@10"])["epoch"]
    assert manifest["model_config"]["n_items"] == 121


@pytest.mark.slow
def test_reingesting_the_same_raw_files_changes_nothing_downstream(spark, shop):
    cfg, _ = shop
    events = tables.path(cfg.tables_dir, schema.EVENTS)
    n = tables.read(spark, events).count()
    cli.run_stage(spark, cfg, "ingest")
    assert tables.read(spark, events).count() == n
    q = tables.read(spark, tables.path(cfg.tables_dir, schema.QUARANTINE))
    assert q.count() > 0 and q.where(F.col("source_file").isNull()).count() == 0
