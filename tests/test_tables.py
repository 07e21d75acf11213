"""Table versions and commit metadata, which pin what every stage reads."""
import glob
import os
import shutil

from py4j.protocol import Py4JError

from recsys_spark import tables


def _write_versions(spark, loc, n):
    for i in range(n):
        tables.overwrite(spark.range(i + 1).withColumnRenamed("id", "user_idx"), loc, metadata={"run": f"r{i}"})


def test_the_version_is_the_newest_commit_even_one_another_process_made(spark, tmp_path):
    loc, copy = str(tmp_path / "t"), str(tmp_path / "copy")
    _write_versions(spark, loc, 3)
    assert tables.version(spark, loc) == 2
    assert [tables.commit_metadata(spark, loc, v) for v in range(3)] == [{"run": "r0"}, {"run": "r1"}, {"run": "r2"}]
    # A copy of the table's first two commits is read here once; then its third commit and files
    # arrive as another writer would leave them, without this session taking part.
    shutil.copytree(loc, copy, ignore=lambda d, names: [n for n in names if n.startswith("00000000000000000002")])
    assert tables.version(spark, copy) == 1
    for path in glob.glob(os.path.join(loc, "_delta_log", "00000000000000000002.*")):
        shutil.copy(path, os.path.join(copy, "_delta_log"))
    for path in glob.glob(os.path.join(loc, "*.parquet")):
        shutil.copy(path, copy)
    assert tables.version(spark, copy) == 2
    assert tables.commit_metadata(spark, copy, 2) == {"run": "r2"}
    assert tables.read(spark, copy).count() == 3


def test_a_delta_without_the_log_method_is_asked_for_its_history(spark, tmp_path, monkeypatch):
    loc = str(tmp_path / "t")
    _write_versions(spark, loc, 2)

    class WithoutLog:
        """A DeltaTable whose JVM side lacks deltaLog(), as another Delta build might."""
        def __init__(self, table):
            self.table = table

        @property
        def _jdt(self):
            raise Py4JError("An error occurred while calling o1.deltaLog")

        def history(self, limit=None):
            return self.table.history(limit)

    real = tables.delta_table
    monkeypatch.setattr(tables, "delta_table", lambda s, location: WithoutLog(real(s, location)))
    assert tables.version(spark, loc) == 1
    assert tables.commit_metadata(spark, loc, 0) == {"run": "r0"}


def test_a_compaction_changes_no_row_so_what_made_the_rows_is_read_past_it(spark, tmp_path):
    """An OPTIMIZE (by hand, scheduled, or Delta's auto compaction) commits the same rows in fewer
    files: the metadata of a version and whether rows changed since one look through it."""
    from pyspark.sql import functions as F

    loc = str(tmp_path / "t")
    tables.overwrite(spark.range(1000).select(F.col("id").alias("user_idx"), F.lit(0).cast("long").alias("night")),
                     loc, metadata={"night": 0}, deletion_vectors=True)
    users = spark.range(0, 1000, 101).select(F.col("id").alias("user_idx"))
    tables.replace_groups(spark, users.withColumn("night", F.lit(1).cast("long")), loc, "user_idx", ["user_idx"],
                          users, {"night": 1})
    written = tables.version(spark, loc)
    files = len(tables.read(spark, loc).inputFiles())
    tables.delta_table(spark, loc).optimize().executeCompaction()
    assert tables.version(spark, loc) == written + 1
    assert tables.delta_table(spark, loc).history(1).first().operation == tables.COMPACTION
    # Fewer files, the same rows, and the replaced rows gone from the files.
    compacted = tables.read(spark, loc)
    assert len(compacted.inputFiles()) < files
    assert sorted((r.user_idx, r.night) for r in compacted.collect()) == [
        (u, 1 if u % 101 == 0 else 0) for u in range(1000)]
    assert spark.read.parquet(*compacted.inputFiles()).count() == 1000
    assert tables.commit_metadata(spark, loc, written + 1) == {"night": 1}
    assert not tables.rows_changed_since(spark, loc, written)
    assert tables.rows_changed_since(spark, loc, written - 1)
