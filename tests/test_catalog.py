"""Catalog table names (paths.catalog): every stage reads and writes catalog tables by name, in a
local metastore, and nothing of the lakehouse is left as Delta folders under paths.root."""
import os

import pytest
from pyspark.sql import functions as F

from benchmarks import faults
from conftest import make_config
from recsys_spark import checkpoints, cli, config, forget, promotion, schema, tables
from recsys_spark.generate import generate

SMALL_SHOP = dict(
    generate={"users": 240, "items": 60, "events": 6000, "cold_users": 3},
    features={"max_seq_len": 20, "train_files": 2},
    train={"epochs": 2, "batch_size": 64, "d_model": 16},
    score={"k": 5, "run_date": "2026-07-01"},
    privacy={"vacuum_retention_hours": 0},
)


def test_a_night_on_catalog_tables_then_forgetting_a_user(spark, tmp_path):
    cfg = make_config(tmp_path / "lake", paths={"catalog": "spark_catalog.shop_catalog"}, **SMALL_SHOP)
    assert cfg.tables_root == "shop_catalog"  # the session catalog's schema, as Delta names it
    generate(cfg.generate, cfg.paths.raw)

    cli.run_stage(spark, cfg, "nightly")

    listed = {t.name: t for t in spark.catalog.listTables("shop_catalog")}
    for name in (schema.EVENTS, schema.USERS, schema.TRAIN_EXAMPLES, schema.FEATURE_SETS,
                 schema.MODEL_PROMOTIONS, schema.RECOMMENDATIONS_LATEST):
        table = listed[name.replace("/", "_")]
        assert table.tableType == "MANAGED"
        assert spark.sql(f"DESCRIBE DETAIL shop_catalog.{table.name}").first().format == "delta"
    assert not os.path.exists(os.path.join(cfg.paths.root, "tables"))
    # Training read the pinned snapshot from a staged copy, removed afterwards.
    assert not os.path.exists(cfg.staging_dir)
    champion = promotion.serving_checkpoint(spark, cfg)
    manifest = checkpoints.manifest(champion)
    pinned = manifest["data_versions"][schema.TRAIN_EXAMPLES]
    assert pinned == tables.version(spark, "shop_catalog.gold_train_examples")
    latest = spark.table("shop_catalog.gold_recommendations_latest")
    users = spark.table("shop_catalog.silver_users").count()
    assert latest.select("user_id").distinct().count() == users
    assert latest.groupBy("user_id").count().where("count != 5").count() == 0

    # Forget finds the user's rows in every catalog table and leaves no file holding them.
    user_id, user_idx = latest.join(spark.table("shop_catalog.gold_user_index"), "user_id") \
        .select("user_id", "user_idx").orderBy("user_id").first()
    assert faults.physical_rows_of(spark, cfg.tables_root, [user_id], [user_idx])  # the check sees them before
    users_file = tmp_path / "forget.txt"
    users_file.write_text(user_id + "\n")
    result = forget.run(spark, cfg, str(users_file))
    assert result.rows_removed["bronze_events"] > 0 and result.rows_removed["gold_recommendations_latest"] == 5
    assert faults.physical_rows_of(spark, cfg.tables_root, [user_id], [user_idx]) == {}
    assert spark.table("shop_catalog.gold_recommendations_latest").where(F.col("user_id") == user_id).count() == 0


@pytest.mark.parametrize("catalog", ["main.recsys.extra", "main-prod.recsys", "recsys;drop", "1st.recsys"])
def test_a_catalog_that_is_not_catalog_dot_schema_is_refused(catalog):
    with pytest.raises(config.ConfigError, match=r"paths.catalog: expected '<catalog>.<schema>'"):
        config.from_dict({"paths": {"catalog": catalog}})


def test_table_names_map_to_catalog_tables_and_config_values_keep_their_own():
    assert tables.location("main.recsys", schema.RECOMMENDATIONS_LATEST) == "main.recsys.gold_recommendations_latest"
    assert tables.location("/lake/tables", schema.EVENTS) == "/lake/tables/bronze/events"
    assert tables.locate("main.recsys", "silver/eligibility") == "main.recsys.silver_eligibility"
    assert tables.locate("/lake/tables", "silver/eligibility") == "/lake/tables/silver/eligibility"
    assert tables.locate("/lake/tables", "crm.opt_outs") == "crm.opt_outs"  # a catalog table with path tables
    assert tables.locate("main.recsys", "s3://bucket/opt_outs") == "s3://bucket/opt_outs"
