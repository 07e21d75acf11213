"""Forgetting users: gone from every table, every retained file and every report; kept out of later
ingests and training snapshots."""
import glob
import os

import pytest
from pyspark.sql import functions as F

from benchmarks import faults
from conftest import SHOP, make_config
from recsys_spark import features, forget, ingest, report, schema, score, tables


def test_forget_removes_users_everywhere_and_keeps_them_out(spark, shop_copy, tmp_path):
    cfg = make_config(shop_copy.paths.root, **SHOP, privacy={"vacuum_retention_hours": 0})
    root = cfg.tables_root
    report.run(spark, cfg)
    ids = [r.user_id for r in tables.read(spark, tables.location(root, schema.RECOMMENDATIONS))
           .select("user_id").distinct().orderBy("user_id").collect()]
    shown = ids[:2]  # the report shows the first users
    user_ids = shown + [ids[len(ids) // 2]]
    index = {r.user_id: r.user_idx for r in tables.read(spark, tables.location(root, schema.USER_INDEX)).collect()}
    user_idxs = [index[u] for u in user_ids]
    assert faults.physical_rows_of(spark, root, user_ids, user_idxs)  # the check sees them before
    users_file = tmp_path / "forget.txt"
    users_file.write_text("user_id\n" + "\n".join(user_ids) + "\n")

    result = forget.run(spark, cfg, str(users_file))

    assert result.rows_removed[schema.EVENTS] > 0 and result.rows_removed[schema.RECOMMENDATIONS] > 0
    assert faults.physical_rows_of(spark, root, user_ids, user_idxs) == {}
    reports = glob.glob(os.path.join(cfg.paths.root, "reports", "*.html"))
    assert result.reports_removed and not any(u in open(p).read() for p in reports for u in shown)
    # The raw files still hold them: ingest skips their rows, and the rebuilt features lack them.
    again = ingest.run(spark, cfg)
    assert again.suppressed_rows > 0 and again.inserted_rows == 0
    features.run(spark, cfg)
    pinned = tables.pinned_versions(spark, root, (schema.TRAIN_EXAMPLES,))[schema.TRAIN_EXAMPLES]
    files = tables.active_files(spark, tables.location(root, schema.TRAIN_EXAMPLES), pinned)
    assert spark.read.parquet(*files).where(F.col("user_idx").isin(user_idxs)).count() == 0
    score.run(spark, cfg)
    latest = tables.read(spark, tables.location(root, schema.RECOMMENDATIONS_LATEST))
    assert latest.where(F.col("user_id").isin(user_ids)).count() == 0 and latest.count() > 0
    # Their numbers stay taken: a new user never inherits a forgotten user's index.
    after = {r.user_idx: r.user_id for r in tables.read(spark, tables.location(root, schema.USER_INDEX)).collect()}
    assert all(after[i].startswith("forgotten-") for i in user_idxs)


def test_a_snapshot_with_deletion_vectors_is_refused_until_purged(spark, tmp_path):
    loc = str(tmp_path / "examples")
    spark.range(10).withColumnRenamed("id", "user_idx").write.format("delta").save(loc)
    spark.sql(f"ALTER TABLE delta.`{loc}` SET TBLPROPERTIES (delta.enableDeletionVectors = true)")
    spark.sql(f"DELETE FROM delta.`{loc}` WHERE user_idx = 3")
    with pytest.raises(ValueError, match="deletion vectors"):
        tables.active_files(spark, loc, tables.version(spark, loc))
    tables.purge(spark, loc, 0)
    files = tables.active_files(spark, loc, tables.version(spark, loc))
    assert sorted(r.user_idx for r in spark.read.parquet(*files).collect()) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
