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
