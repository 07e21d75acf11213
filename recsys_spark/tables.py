"""Delta read/write helpers: pinned versions, active files, partition replacement, merges."""
from __future__ import annotations

import os
from typing import Optional

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession


def path(root_tables: str, name: str) -> str:
    return os.path.join(root_tables, name)


def exists(spark: SparkSession, location: str) -> bool:
    return DeltaTable.isDeltaTable(spark, location)


def require(spark: SparkSession, location: str, produced_by: str) -> None:
    """Raise a clear error when an upstream table is missing."""
    if not exists(spark, location):
        raise FileNotFoundError(
            f"Delta table {location} does not exist yet; run the '{produced_by}' stage first "
            f"(or 'python -m recsys_spark nightly' for the whole pipeline)."
        )


def version(spark: SparkSession, location: str) -> int:
    """The latest committed version of a Delta table."""
    return int(DeltaTable.forPath(spark, location).history(1).select("version").first()[0])


def read(spark: SparkSession, location: str, at_version: Optional[int] = None) -> DataFrame:
    reader = spark.read.format("delta")
    if at_version is not None:
        reader = reader.option("versionAsOf", at_version)
    return reader.load(location)


def active_files(spark: SparkSession, location: str, at_version: int) -> list[str]:
    """The parquet files that make up the table at a pinned version, as file URLs.

    This is the snapshot's file list from the Delta log, never a directory scan: files that Delta has
    removed (overwritten, compacted, deleted) but not yet vacuumed are not in it.
    """
    files = read(spark, location, at_version).inputFiles()
    return sorted(files)


def overwrite(df: DataFrame, location: str, partition_by: Optional[list[str]] = None) -> None:
    """Replace a table's contents atomically (a new Delta version; readers of the old one are safe)."""
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(location)


def append(df: DataFrame, location: str) -> None:
    df.write.format("delta").mode("append").option("mergeSchema", "true").save(location)


def replace_partition(df: DataFrame, location: str, predicate: str, partition_by: list[str]) -> None:
    """Atomically replace the rows matching predicate (one partition) with df; other rows stay."""
    (
        df.write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", predicate)
        .partitionBy(*partition_by)
        .save(location)
    )


def upsert(spark: SparkSession, df: DataFrame, location: str, keys: list[str]) -> None:
    """Update rows whose keys exist and insert the rest; create the table if it is missing."""
    if not exists(spark, location):
        df.write.format("delta").save(location)
        return
    cond = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    (
        DeltaTable.forPath(spark, location).alias("t").merge(df.alias("s"), cond)
        .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
    )
