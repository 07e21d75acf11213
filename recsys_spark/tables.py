"""Delta read/write helpers: pinned versions, active files, partition replacement, merges.

A table's location is a path or storage URI (the embedded default: folders under paths.root/tables)
or, with paths.catalog set, a catalog table name (`catalog.schema.table` or `schema.table`). Every
function here takes either; nothing else in the package tells them apart."""
from __future__ import annotations

import glob
import json
import logging
import os
import uuid
from contextlib import contextmanager
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

from delta import exceptions as delta_errors
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.errors import AnalysisException
from py4j.protocol import Py4JError

from recsys_spark import schema
from recsys_spark.config import is_uri

logger = logging.getLogger(__name__)


# The operation Delta records for a compaction (OPTIMIZE, by hand or scheduled, and Delta's auto
# compaction where a platform turns it on): the same rows in fewer files. Small replacements add
# files night after night (docs/scoring.md, "Compaction"); a compaction leaves the incremental
# runs incremental.
COMPACTION = "OPTIMIZE"


@contextmanager
def temporary_conf(spark: SparkSession, settings: dict):
    """Spark SQL settings for the duration of a block, restored afterwards."""
    before = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            spark.conf.set(k, v) if v is not None else spark.conf.unset(k)


def filesystem(spark: SparkSession, location: str):
    """(Hadoop FileSystem, Hadoop Path) of a local path or storage URI."""
    hpath = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(location)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def is_table_name(location: str) -> bool:
    """A catalog table name rather than a path: paths and URIs always hold a '/'."""
    return "/" not in location


def location(root_tables: str, name: str) -> str:
    """Where the table `name` (a schema name such as "silver/events") lives: a folder under the
    tables folder, or the table <catalog>.<schema>.silver_events when the root is a catalog schema."""
    if is_table_name(root_tables):
        return f"{root_tables}.{name.replace('/', '_')}"
    return os.path.join(root_tables, name)


def locate(root_tables: str, name_or_path: str) -> str:
    """A config value naming a table: an absolute path, a URI or a qualified catalog name
    ("crm.eligibility", "main.crm.eligibility") is used as is; anything else is a name under the
    tables root (e.g. "silver/eligibility")."""
    if name_or_path.startswith("/") or is_uri(name_or_path) or ("." in name_or_path and "/" not in name_or_path):
        return name_or_path
    return location(root_tables, name_or_path)


def sql_name(location: str) -> str:
    """How SQL statements name the table."""
    return location if is_table_name(location) else f"delta.`{location}`"


def delta_table(spark: SparkSession, location: str) -> DeltaTable:
    return DeltaTable.forName(spark, location) if is_table_name(location) else DeltaTable.forPath(spark, location)


def exists(spark: SparkSession, location: str) -> bool:
    if is_table_name(location):
        return spark.catalog.tableExists(location)
    return DeltaTable.isDeltaTable(spark, location)


def require(spark: SparkSession, location: str, produced_by: str) -> None:
    """Raise a clear error when an upstream table is missing."""
    if not exists(spark, location):
        raise FileNotFoundError(
            f"Delta table {location} does not exist yet; run the '{produced_by}' stage first "
            f"(or 'python -m recsys_spark nightly' for the whole pipeline)."
        )


def version(spark: SparkSession, location: str) -> int:
    """The latest committed version of a Delta table. Read from the table's Delta log in the driver
    (0.01 s); the table's history, the public way, costs a Spark job (0.15-0.25 s here, and a
    stage looks up ten or more versions). A Delta without that log method (a runtime's
    own build) or a session without a JVM at hand (Spark Connect) is asked for its history instead."""
    table = delta_table(spark, location)
    try:
        none = spark._jvm.scala.Option.empty()
        return int(table._jdt.deltaLog().update(False, none, none).version())
    except (Py4JError, AttributeError):
        return int(table.history(1).select("version").first()[0])


def read(spark: SparkSession, location: str, at_version: Optional[int] = None) -> DataFrame:
    reader = spark.read.format("delta")
    if at_version is not None:
        reader = reader.option("versionAsOf", at_version)
    return reader.table(location) if is_table_name(location) else reader.load(location)


def read_pinned(spark: SparkSession, root_tables: str, name: str, versions: Optional[dict] = None) -> DataFrame:
    """Table `name` (a schema name under the tables folder) at the version `versions` pins for it,
    or its latest version when it pins none."""
    return read(spark, location(root_tables, name), (versions or {}).get(name))


def record_feature_set(spark: SparkSession, root_tables: str, run_id: str, versions: dict) -> None:
    """Mark a features run complete: one row with the version of every table it wrote (and of the
    events it read). Written last, so a run killed before its end records nothing."""
    row = [(run_id, {k: int(v) for k, v in versions.items()})]
    df = spark.createDataFrame(row, "run_id string, versions map<string,bigint>")
    append(df.withColumn("completed_at", F.current_timestamp()), location(root_tables, schema.FEATURE_SETS))


def newest_feature_set(spark: SparkSession, root_tables: str):
    """The newest complete feature set (a row: run_id, versions, completed_at), or None."""
    sets = location(root_tables, schema.FEATURE_SETS)
    if not exists(spark, sets):
        return None
    return read(spark, sets).orderBy(F.col("completed_at").desc()).first()


def pinned_versions(spark: SparkSession, root_tables: str, names: tuple) -> dict:
    """The versions a reader of the feature tables pins: those of the newest complete features run,
    so a run killed halfway (some tables rewritten, others not) is never read as a mix. Tables from
    before feature sets were recorded are read at their latest versions."""
    newest = newest_feature_set(spark, root_tables)
    if newest is not None:
        return {n: newest.versions[n] for n in names if n in newest.versions}
    return {n: version(spark, location(root_tables, n)) for n in names if exists(spark, location(root_tables, n))}


def active_files(spark: SparkSession, location: str, at_version: int) -> list[str]:
    """The parquet files that make up the table at a pinned version, as file URLs.

    This is the snapshot's file list from the Delta log, never a directory scan: files that Delta has
    removed (overwritten, compacted, deleted) but not yet vacuumed are not in it. A version whose
    files carry deletion vectors is refused: its deleted rows are still inside the files, and a reader
    of the files alone (Petastorm) would see them.
    """
    snapshot = read(spark, location, at_version)
    files = sorted(snapshot.inputFiles())
    if files and spark.read.parquet(*files).count() != snapshot.count():
        raise ValueError(
            f"{location} at version {at_version} has deletion vectors: rows deleted from it are still "
            f"inside its parquet files. Rewrite them with REORG TABLE {sql_name(location)} APPLY (PURGE) "
            f"(or rerun the stage that writes the table), then run again.")
    return files


def readable_files(spark: SparkSession, location: str, at_version: int, staging_root: str, min_files: int) -> list[str]:
    """Parquet files holding exactly the table at a pinned version, for a reader outside Spark
    (Petastorm). A table at a path: its active files. A catalog table: a copy of that version, written
    under staging_root in at least min_files files (the caller removes it after use); a catalog governs
    its tables' storage (Unity Catalog refuses direct reads of a managed table's files), so only Spark
    reads the table itself."""
    if not is_table_name(location):
        return active_files(spark, location, at_version)
    copy = os.path.join(staging_root, f"{location}@v{int(at_version)}")
    if not os.path.isdir(copy):
        snapshot = read(spark, location, at_version)
        partial = f"{copy}.partial-{uuid.uuid4().hex[:8]}"
        snapshot.repartition(max(min_files, snapshot.rdd.getNumPartitions())).write.parquet(partial)
        os.replace(partial, copy)  # a copy is complete or absent
    return sorted("file:" + f for f in glob.glob(os.path.join(glob.escape(copy), "*.parquet")))


def delta_tables(spark: SparkSession, root_tables: str) -> dict[str, str]:
    """Every Delta table under the tables root (a folder, local or remote, or a catalog schema):
    {its name under the root: its location}."""
    if is_table_name(root_tables):
        found = {}
        for table in spark.catalog.listTables(root_tables):
            loc = f"{root_tables}.{table.name}"
            try:
                if spark.sql(f"DESCRIBE DETAIL {loc}").first().format == "delta":
                    found[table.name] = loc
            except AnalysisException:  # a view, or a table of another format
                continue
        return found
    fs, root = filesystem(spark, root_tables)
    found, pending = {}, [root] if fs.exists(root) else []
    while pending:
        folder = pending.pop()
        children = [st for st in fs.listStatus(folder) if st.isDirectory()]
        if any(st.getPath().getName() == "_delta_log" for st in children):
            name = os.path.relpath(folder.toUri().getPath(), root.toUri().getPath())
            found[name] = location(root_tables, name)
        else:
            pending.extend(st.getPath() for st in children)
    return dict(sorted(found.items()))


def purge(spark: SparkSession, location: str, retention_hours: float) -> None:
    """Remove deleted rows physically: rewrite files that carry deletion vectors, then VACUUM files
    (data and change-data) no version younger than retention_hours needs."""
    spark.sql(f"REORG TABLE {sql_name(location)} APPLY (PURGE)")
    settings = {
        # Delta refuses a retention under its default unless told; privacy.vacuum_retention_hours is that word.
        "spark.databricks.delta.retentionDurationCheck.enabled": "false",
        # VACUUM lists files in this many tasks; Spark's legacy default (10,000) makes every VACUUM of
        # a small table take ~30 s of empty tasks.
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(max(2, spark.sparkContext.defaultParallelism * 4)),
    }
    with temporary_conf(spark, settings):
        delta_table(spark, location).vacuum(retention_hours)


def _save(spark: SparkSession, writer, location: str) -> None:
    """Run a Delta write to a path, or to a catalog table (created with its schema on first write)."""
    if not is_table_name(location):
        if not (location.startswith("/") or is_uri(location)):
            # Config paths are absolute once loaded; a relative one here is a malformed location.
            raise ValueError(f"table location {location!r} is neither a catalog name nor an absolute path or URI")
        writer.save(location)
        return
    schema_name = location.rsplit(".", 1)[0]
    if not spark.catalog.databaseExists(schema_name):
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema_name}")
    writer.saveAsTable(location)


def overwrite(df: DataFrame, location: str, partition_by: Optional[list[str]] = None,
              metadata: Optional[dict] = None, deletion_vectors: bool = False) -> None:
    """Replace a table's contents atomically (a new Delta version; readers of the old one are safe).

    metadata, if given, is stored as JSON in the commit (read back with commit_metadata).
    deletion_vectors: the table keeps them on (see enable_deletion_vectors), set before the write so
    that the write stays the table's newest commit."""
    spark = df.sparkSession
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if metadata is not None:
        writer = writer.option("userMetadata", json.dumps(metadata, sort_keys=True))
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if deletion_vectors and exists(spark, location):
        enable_deletion_vectors(spark, location)
    new_tables = {"spark.databricks.delta.properties.defaults.enableDeletionVectors": "true"} if deletion_vectors else {}
    with temporary_conf(spark, new_tables):
        _save(spark, writer, location)


def append(df: DataFrame, location: str) -> None:
    _save(df.sparkSession, df.write.format("delta").mode("append").option("mergeSchema", "true"), location)


def replace_partition(df: DataFrame, location: str, predicate: str, partition_by: list[str],
                      metadata: Optional[dict] = None) -> None:
    """Atomically replace the rows matching predicate (one partition) with df; other rows stay.
    New columns of df are added to the table (older partitions read them as null)."""
    writer = df.write.format("delta").mode("overwrite").option("replaceWhere", predicate).option("mergeSchema", "true")
    if metadata is not None:
        writer = writer.option("userMetadata", json.dumps(metadata, sort_keys=True))
    _save(df.sparkSession, writer.partitionBy(*partition_by), location)


def commit_metadata(spark: SparkSession, location: str, at_version: int) -> dict:
    """The JSON metadata stored with the commit that made the table's rows as they are at
    at_version ({} when there is none): that version's own commit, or, when that commit only
    compacted files (COMPACTION), the newest commit before it that wrote rows."""
    # Only the commits since at_version (and a few before it) are read, so the lookup does not
    # grow with the table's age.
    since = version(spark, location) - int(at_version) + 1
    rows = (delta_table(spark, location).history(max(since, 1) + 8).where(f"version <= {int(at_version)}")
            .select("version", "operation", "userMetadata").orderBy(F.desc("version")).collect())
    row = next((r for r in rows if r.operation != COMPACTION), None)
    if row is None or not row.userMetadata:
        return {}
    try:
        return json.loads(row.userMetadata)
    except ValueError:
        return {}


def rows_changed_since(spark: SparkSession, location: str, since_version: Optional[int]) -> bool:
    """Whether a commit after since_version changed the table's rows (a compaction does not, so a
    table compacted since still holds the rows of since_version). True without a since_version."""
    if since_version is None:
        return True
    current = version(spark, location)
    if current <= since_version:
        return current < since_version
    commits = (delta_table(spark, location).history(current - since_version)
               .where(f"version > {int(since_version)}").select("operation").collect())
    return len(commits) < current - since_version or any(c.operation != COMPACTION for c in commits)


def _enable(spark: SparkSession, location: str, prop: str) -> None:
    """Set a boolean Delta table property to true (a no-op when it already is)."""
    # SHOW TBLPROPERTIES reads the table's metadata only; DESCRIBE DETAIL also sizes its files.
    props = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES {sql_name(location)}").collect()}
    if props.get(prop, "false").lower() != "true":
        spark.sql(f"ALTER TABLE {sql_name(location)} SET TBLPROPERTIES ({prop} = true)")


def enable_change_feed(spark: SparkSession, location: str) -> None:
    """Turn on Delta Change Data Feed for a table (a no-op when it is already on)."""
    _enable(spark, location, "delta.enableChangeDataFeed")


def enable_deletion_vectors(spark: SparkSession, location: str) -> None:
    """Let DELETE, UPDATE and MERGE mark replaced rows in a deletion vector instead of rewriting
    every file that holds one: a MERGE of a few keys then writes only their new rows. Only for
    tables that nothing reads by file list (see active_files)."""
    _enable(spark, location, "delta.enableDeletionVectors")


def changes(spark: SparkSession, location: str, start_version: int, end_version: int) -> DataFrame:
    """Rows inserted or updated in versions start..end (inclusive), from the Change Data Feed.

    Raises the Delta error when the feed was not enabled for the whole range."""
    reader = (spark.read.format("delta").option("readChangeFeed", "true")
              .option("startingVersion", int(start_version)).option("endingVersion", int(end_version)))
    return ((reader.table(location) if is_table_name(location) else reader.load(location)).where("_change_type IN ('insert', 'update_postimage')"))


def change_stream(spark: SparkSession, location: str, start_version: int) -> DataFrame:
    """A streaming DataFrame of the rows inserted or updated from start_version on (Change Data
    Feed), with _commit_version; where a stream restarts is its checkpoint's business."""
    # Delta refuses a starting version that does not exist yet; the version after the newest is
    # what "latest" reads from.
    start = int(start_version) if start_version <= version(spark, location) else "latest"
    reader = (spark.readStream.format("delta").option("readChangeFeed", "true")
              .option("startingVersion", start))
    return ((reader.table(location) if is_table_name(location) else reader.load(location))
            .where("_change_type IN ('insert', 'update_postimage')"))


def run_micro_batches(stream: DataFrame, apply: Callable[[DataFrame, int], None], checkpoint: str, once: bool,
                      trigger_seconds: float) -> None:
    """Run apply(batch, batch_id) on every micro-batch of a streaming DataFrame, recording progress
    in checkpoint: with once, what is there now, then return; else a batch every trigger_seconds
    until stopped (Ctrl-C stops it cleanly). A batch that raises stops the stream unrecorded."""
    writer = stream.writeStream.foreachBatch(apply).option("checkpointLocation", checkpoint)
    writer = writer.trigger(availableNow=True) if once else writer.trigger(processingTime=f"{trigger_seconds} seconds")
    query = writer.start()
    try:
        query.awaitTermination()
    except KeyboardInterrupt:
        query.stop()


def upsert(spark: SparkSession, df: DataFrame, location: str, keys: list[str]) -> None:
    """Update rows whose keys exist and insert the rest; create the table if it is missing. A column
    df brings that the table lacks is added to it (a feed that gained a column)."""
    if not exists(spark, location):
        _save(spark, df.write.format("delta"), location)
        return
    cond = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    target = delta_table(spark, location)
    stored = target.toDF()
    # Rows that arrive unchanged (a full feed resent nightly) are left out, so the files holding
    # them are not rewritten; when the feed brings a new column every row takes it.
    if not set(df.columns) - set(stored.columns):
        df = df.join(stored, [df[c].eqNullSafe(stored[c]) for c in df.columns], "left_anti")
    (
        target.alias("t").merge(df.alias("s"), cond).withSchemaEvolution()
        .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
    )


def replace_rows(spark: SparkSession, df: DataFrame, location: str, keys: list[str], keep: str,
                 metadata: Optional[dict] = None) -> None:
    """One MERGE by keys: a table row whose key has a df row with `keep` true is replaced by it, one
    with `keep` false is deleted, and df rows with `keep` true and a new key are inserted. Running
    it twice with the same df leaves the same table (a replayed stream batch changes nothing)."""
    cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    values = {f"`{c}`": f"s.`{c}`" for c in df.columns if c != keep}
    conf_key = "spark.databricks.delta.commitInfo.userMetadata"
    if metadata is not None:
        spark.conf.set(conf_key, json.dumps(metadata, sort_keys=True))
    try:
        (delta_table(spark, location).alias("t").merge(df.alias("s"), cond)
         .whenMatchedDelete(condition=f"NOT s.`{keep}`").whenMatchedUpdate(set=values)
         .whenNotMatchedInsert(condition=f"s.`{keep}`", values=values).execute())
    finally:
        if metadata is not None:
            spark.conf.unset(conf_key)


# replace_groups names up to this many groups in its predicate; more go through a MERGE. A long
# list costs as much as the MERGE's join at about 4,000 users and twice as much at 19,000
# (docs/scoring.md), and Delta stores the predicate in each commit.
MAX_LISTED_GROUPS = 2_000


def replace_groups(spark: SparkSession, df: DataFrame, location: str, group: str, keys: list[str],
                   groups: DataFrame, metadata: Optional[dict] = None, max_listed: int = MAX_LISTED_GROUPS,
                   rewrite: Optional[Callable[[], None]] = None) -> None:
    """Make the rows of every group listed in `groups` (a one-column DataFrame of integer or string
    `group` values, users for instance) exactly df's rows, atomically; other groups are untouched.
    df holds rows of those groups only.

    Up to max_listed groups: one overwrite whose replaceWhere predicate lists them (deleting their
    rows, with deletion vectors where the table has them, and appending df's): cheaper than a
    MERGE, which joins df with the whole table to find the rows to change. More groups: rewrite()
    when the caller has the table's whole new contents at hand (cheaper than the MERGE's join),
    else one MERGE by keys."""
    listed = [r[0] for r in groups.limit(max_listed + 1).collect()]
    if not listed:  # nothing to replace; Delta would not commit an empty write either
        return
    if len(listed) <= max_listed:
        predicate = f"`{group}` IN ({', '.join(map(sql_literal, sorted(listed)))})"
        writer = df.write.format("delta").mode("overwrite").option("replaceWhere", predicate)
        if metadata is not None:
            writer = writer.option("userMetadata", json.dumps(metadata, sort_keys=True))
        _save(spark, writer, location)
        return
    if rewrite is not None:
        logger.info(f"{location}: more than {max_listed} {group}s to replace: rewriting the table")
        rewrite()
        return
    current = read(spark, location).join(groups, group, "left_semi").select(*keys)
    gone = current.join(df.select(*keys), keys, "left_anti")
    keep = "_keep_row"
    source = df.withColumn(keep, F.lit(True)).unionByName(gone.withColumn(keep, F.lit(False)), allowMissingColumns=True)
    replace_rows(spark, source, location, keys, keep, metadata)


def sql_literal(value) -> str:
    """An integer or string as a Spark SQL literal (quotes and backslashes in strings escaped)."""
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(int(value))


def insert_missing(spark: SparkSession, df: DataFrame, location: str, key: str) -> None:
    """Insert the rows of df whose key the table does not hold yet (an insert-only MERGE; creates
    the table when it is missing). Unlike a blind append, two writers inserting the same key at
    once conflict in Delta instead of both succeeding: run it inside retry_on_conflict."""
    if not exists(spark, location):
        _save(spark, df.write.format("delta").mode("append"), location)
        return
    target = delta_table(spark, location)
    missing = [f for f in df.schema.fields if f.name not in target.toDF().columns]
    if missing:
        cols = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE {sql_name(location)} ADD COLUMNS ({cols})")
    (target.alias("t").merge(df.alias("s"), f"t.`{key}` = s.`{key}`")
     .whenNotMatchedInsertAll().execute())


class ConcurrentRunsError(RuntimeError):
    """Another run kept committing to the same table; nothing of this attempt was written."""


# Delta's commit conflicts (its Python classes do not share a base class).
_CONFLICTS = (delta_errors.DeltaConcurrentModificationException, delta_errors.ConcurrentWriteException,
              delta_errors.MetadataChangedException, delta_errors.ProtocolChangedException,
              delta_errors.ConcurrentAppendException, delta_errors.ConcurrentDeleteReadException,
              delta_errors.ConcurrentDeleteDeleteException, delta_errors.ConcurrentTransactionException)


def retry_on_conflict(write: Callable[[], T], what: str, attempts: int = 5) -> T:
    """Run write(); when another run committed to the same table first (Delta's optimistic
    concurrency), run it again so it sees that run's rows. write must read the table afresh."""
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except _CONFLICTS as e:
            if attempt == attempts:
                raise ConcurrentRunsError(f"{what}: another run kept committing to the same table; gave up after "
                                   f"{attempts} attempts. Nothing of this attempt was written; run it again "
                                   f"when the other run has finished. ({type(e).__name__})") from e
            logger.info(f"{what}: another run committed first ({type(e).__name__}); retrying ({attempt}/{attempts})")
    raise AssertionError("unreachable")
