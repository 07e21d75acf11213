"""Cold start: held-out users and items are never trained on, and the evaluation measures them."""
import pytest
from pyspark.sql import functions as F

from conftest import make_config
from recsys_spark import cli, schema, tables
from recsys_spark.splits import held_out
from recsys_spark.generate import generate


@pytest.fixture(scope="module")
def cold_shop(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("cold")
    cfg = make_config(
        root,
        generate={"users": 500, "items": 100, "events": 25000, "seed": 3},
        features={"max_seq_len": 20, "train_files": 2, "holdout_users": 0.2, "holdout_items": 0.1},
        train={"epochs": 6, "batch_size": 64, "d_model": 32, "lr": 0.005, "valid_users": 0},
        evaluate={"baselines": ["popularity"], "ks": [10]},
    )
    generate(cfg.generate, cfg.paths.raw)
    for stage in ("ingest", "features", "train"):
        cli.run_stage(spark, cfg, stage)
    from recsys_spark import evaluate

    return cfg, evaluate.run(spark, cfg)


@pytest.mark.slow
def test_held_out_users_and_items_never_reach_training(spark, cold_shop):
    cfg, _ = cold_shop
    fc = cfg.features
    root = cfg.tables_root
    seqs = tables.read(spark, tables.location(root, schema.SEQUENCES))
    cold_users = {r.user_idx for r in seqs.where(held_out("user_id", fc.holdout_users, fc.holdout_seed)).collect()}
    assert 60 < len(cold_users) < 140  # about 20% of 500
    content = tables.read(spark, tables.location(root, schema.ITEM_CONTENT))
    cold_items = {r.item_idx for r in content.where(held_out("item_id", fc.holdout_items, fc.holdout_seed)).collect()}
    assert 3 <= len(cold_items) <= 20
    train = tables.read(spark, tables.location(root, schema.TRAIN_EXAMPLES))
    assert {r.user_idx for r in train.select("user_idx").distinct().collect()}.isdisjoint(cold_users)
    trained_items = {r.i for r in train.select(F.explode(F.concat("input", "target")).alias("i")).distinct().collect()}
    assert trained_items.isdisjoint(cold_items)
    # The checkpoint knows those items have no trained id embedding: they are content only.
    from recsys_spark import checkpoints

    model, _ = checkpoints.load(checkpoints.latest(cfg.models_dir))
    has_id = model.trained_ids.numpy()
    assert not has_id[sorted(cold_items)].any()
    assert has_id[sorted(trained_items - {0})].all()


@pytest.mark.slow
def test_cold_start_slices_are_measured_and_recorded(spark, cold_shop):
    cfg, result = cold_shop
    cold = result["cold"]
    assert sorted(cold["users"]) == [0, 1, 3]
    for n, by_model in cold["users"].items():
        assert set(by_model) == {"attention", "popularity", "segment_popularity"}
        assert by_model["attention"]["n_users"] > 50
        for m in by_model.values():
            assert 0.0 <= m["ndcg@10"] <= m["recall@10"] <= 1.0
    # On the shop, demographics shape interests and items follow their successors: with 3 events
    # the model must beat global popularity on the held-out users.
    assert cold["users"][3]["attention"]["recall@10"] > cold["users"][3]["popularity"]["recall@10"]
    items = cold["items"]
    assert items["attention"]["n_users"] > 0 and 0 < items["random"]["recall@10"] < 1
    # Warm metrics are computed on warm users only.
    seqs = tables.read(spark, tables.location(cfg.tables_root, schema.SEQUENCES))
    n_warm = seqs.where(F.col("test_target").isNotNull()
                        & ~held_out("user_id", cfg.features.holdout_users, cfg.features.holdout_seed)).count()
    assert result["n_users"] == n_warm
    m = tables.read(spark, tables.location(cfg.tables_root, schema.METRICS))
    splits = {r.split for r in m.select("split").distinct().collect()}
    assert {"test", "cold_users_0_events", "cold_users_1_events", "cold_users_3_events", "cold_items"} <= splits


@pytest.mark.slow
def test_report_headline_is_the_warm_split_and_cold_start_has_its_own_section(spark, cold_shop):
    import re

    cfg, result = cold_shop
    doc = open(cli.run_stage(spark, cfg, "report")).read()
    # The headline row of the attention model carries the warm test metrics, not a cold split's.
    row = re.search(r"<tr><td>attention</td><td>([0-9.]+)</td><td>([0-9.]+)</td>", doc)
    assert row and float(row.group(2)) == pytest.approx(result["metrics"]["attention"]["ndcg@10"], abs=1e-4)
    assert "Cold start" in doc and "cold_users_3_events" in doc and "cold_items" in doc
    # Declared attributes of the shop's users are reported group by group.
    assert "NDCG@10 by user group" in doc and "gender" in doc and "age_band" in doc
