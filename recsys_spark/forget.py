"""Forget users: `python -m recsys_spark forget --users FILE` (one user id per line; a first line
`user_id` is a header).

1. Their ids' sha256 joins the suppression list (silver/suppressed_users); ingest skips their rows
   from then on, so re-read raw files do not bring them back.
2. Every Delta table under the tables folder loses their rows: by user_id, or by user_idx where a
   table has only that; quarantine rows whose raw values name them. The user index keeps their
   numbers (numbers are never reused) with the ids replaced by tombstones.
3. The newest feature set is recorded again at the cleaned versions, so training and scoring pin
   versions without them.
4. History is purged: files with deletion vectors rewritten, then VACUUM with
   privacy.vacuum_retention_hours (old versions and change-data files go once older than that).
5. HTML reports that name them are deleted (run `report` for a new one).
It prints what it removed from where.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import uuid
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import privacy, schema, tables
from recsys_spark.config import Config

logger = logging.getLogger(__name__)


@dataclass
class ForgetReport:
    users: int
    rows_removed: dict[str, int] = field(default_factory=dict)
    reports_removed: list[str] = field(default_factory=list)
    retention_hours: float = 0.0

    def summary(self) -> str:
        lines = [f"forget: {self.users} user(s); rows removed: {sum(self.rows_removed.values())}"]
        lines += [f"  {name:<28} {n:>7}" for name, n in sorted(self.rows_removed.items())]
        lines.append(f"  reports deleted: {', '.join(self.reports_removed) or 'none'}")
        lines.append(f"  history purged beyond {self.retention_hours:g} h (privacy.vacuum_retention_hours)"
                     + ("; versions younger than that still hold the users: run forget again once they have aged "
                        "out" if self.retention_hours > 0 else "; no older version or change-data file is left"))
        return "\n".join(lines)


def read_user_ids(spark: SparkSession, path: str) -> DataFrame:
    """Distinct ids (user_id column) from a text file: one per line, optional `user_id` header.
    These are the ids as the source systems know them (before any pseudonymization)."""
    fs, hpath = tables.filesystem(spark, path)
    if not fs.exists(hpath):
        raise FileNotFoundError(f"forget --users {path}: no such file; give a file with one user id per line")
    lines = spark.read.text(path).select(F.trim("value").alias("user_id"))
    ids = lines.where((F.col("user_id") != "") & (F.col("user_id") != "user_id")).distinct()
    if ids.isEmpty():
        raise ValueError(f"{path} names no user ids: write one user id per line")
    return ids


def _as_stored(spark: SparkSession, cfg: Config, ids: DataFrame) -> DataFrame:
    """The ids as the tables hold them: their pseudonyms under privacy.pseudonymize."""
    if not cfg.privacy.pseudonymize:
        return ids
    key = privacy.pseudonym_key(cfg.privacy, spark)
    return spark.createDataFrame([(privacy.pseudonym(r.user_id, key),) for r in ids.collect()], "user_id string")


def user_hash(col) -> "F.Column":
    """How the suppression list stores an id (never the id itself)."""
    return F.sha2(col.cast("string"), 256)


def without_suppressed(spark: SparkSession, root: str, df: DataFrame) -> DataFrame:
    """df without the rows of users on the suppression list."""
    loc = tables.location(root, schema.SUPPRESSED_USERS)
    if not tables.exists(spark, loc):
        return df
    return df.join(F.broadcast(tables.read(spark, loc).select("user_hash").distinct()),
                   user_hash(F.trim(F.col("user_id").cast("string"))) == F.col("user_hash"), "left_anti")


def _suppress(spark: SparkSession, root: str, ids: DataFrame) -> None:
    rows = ids.select(user_hash(F.col("user_id")).alias("user_hash"), F.current_timestamp().alias("suppressed_at"))
    tables.retry_on_conflict(lambda: tables.insert_missing(spark, rows, tables.location(root, schema.SUPPRESSED_USERS),
                                                           "user_hash"), "forget: suppression list")


def _quarantine_match():
    """A quarantined row names the user: its raw user_id, or a field of its unsplit line."""
    fields = "transform(split(get_json_object(t.raw, '$.line'), '[,;\\t|]'), x -> trim(BOTH '\"' FROM trim(x)))"
    return F.expr(f"get_json_object(t.raw, '$.user_id') = s.user_id OR array_contains({fields}, s.user_id)")


def _delete(spark: SparkSession, location: str, keys: DataFrame, cond) -> int:
    """Delete the table's rows matching keys (as s) under cond; the number deleted."""
    target = tables.delta_table(spark, location)
    n = target.toDF().alias("t").join(F.broadcast(keys.alias("s")), cond, "left_semi").count()
    if n:
        tables.retry_on_conflict(lambda: target.alias("t").merge(F.broadcast(keys.alias("s")), cond)
                                 .whenMatchedDelete().execute(), f"forget: {location}")
    return n


def _delete_everywhere(spark: SparkSession, root: str, ids: DataFrame, idxs: DataFrame) -> tuple[dict, list[str]]:
    """Delete the users' rows from every table; ({table: rows removed}, tables that hold user data)."""
    removed, personal = {}, []
    skipped = {tables.location(root, schema.USER_INDEX), tables.location(root, schema.SUPPRESSED_USERS)}
    for name, loc in tables.delta_tables(spark, root).items():
        if loc in skipped:
            continue
        columns = tables.read(spark, loc).columns
        if "user_id" in columns:
            n = _delete(spark, loc, ids, F.col("t.user_id") == F.col("s.user_id"))
        elif "user_idx" in columns:
            n = _delete(spark, loc, idxs, F.col("t.user_idx") == F.col("s.user_idx"))
        elif loc == tables.location(root, schema.QUARANTINE):
            n = _delete(spark, loc, ids, _quarantine_match())
        else:
            continue
        personal.append(loc)
        removed[name] = n
    return removed, personal


def _tombstone_index(spark: SparkSession, root: str, ids: DataFrame) -> int:
    """Replace the users' ids in the user index by tombstones; their numbers stay taken."""
    loc = tables.location(root, schema.USER_INDEX)
    if not tables.exists(spark, loc):
        return 0
    n = tables.read(spark, loc).join(ids, "user_id", "left_semi").count()
    if n:
        tables.retry_on_conflict(lambda: tables.delta_table(spark, loc).alias("t").merge(
            F.broadcast(ids.alias("s")), "t.user_id = s.user_id")
            .whenMatchedUpdate(set={"user_id": F.concat(F.lit("forgotten-"), F.col("t.user_idx").cast("string"))}).execute(),
            "forget: user index")
    return n


def _repin_feature_set(spark: SparkSession, root: str) -> None:
    """Record the newest feature set again at the tables' current (cleaned) versions."""
    latest = tables.newest_feature_set(spark, root)
    if latest is None:
        return
    versions = {name: tables.version(spark, tables.location(root, name)) for name in latest.versions}
    tables.record_feature_set(spark, root, f"{latest.run_id}+forget-{uuid.uuid4().hex[:8]}", versions)


def _delete_reports(report_dir: str, user_ids: list[str]) -> list[str]:
    """Delete the HTML reports that name any of the users; their file names."""
    if not user_ids:
        return []
    pattern = re.compile("|".join(rf"(?<![\w-]){re.escape(u)}(?![\w-])" for u in user_ids))
    removed = []
    for path in sorted(glob.glob(os.path.join(report_dir, "*.html"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            if pattern.search(f.read()):
                os.remove(path)
                removed.append(os.path.basename(path))
    return removed


def run(spark: SparkSession, cfg: Config, users_file: str) -> ForgetReport:
    """Suppress, delete everywhere, re-pin the feature set, purge history, delete reports."""
    root = cfg.tables_root
    source_ids = read_user_ids(spark, users_file)
    _suppress(spark, root, source_ids)
    ids = _as_stored(spark, cfg, source_ids).persist()
    user_ids = [r.user_id for r in ids.collect()]
    index = tables.location(root, schema.USER_INDEX)
    idxs = (tables.read(spark, index).join(ids, "user_id", "left_semi").select("user_idx")
            if tables.exists(spark, index) else spark.createDataFrame([], "user_idx long")).persist()
    idxs.count()  # the numbers, taken before the ids are tombstoned
    removed, personal = _delete_everywhere(spark, root, ids, idxs)
    removed[schema.USER_INDEX + " (tombstoned)"] = _tombstone_index(spark, root, ids)
    _repin_feature_set(spark, root)
    for loc in personal + ([index] if tables.exists(spark, index) else []):
        tables.purge(spark, loc, cfg.privacy.vacuum_retention_hours)
    report = ForgetReport(len(user_ids), removed,
                          _delete_reports(cfg.reports_dir, user_ids),
                          cfg.privacy.vacuum_retention_hours)
    ids.unpersist()
    idxs.unpersist()
    logger.info(report.summary())
    return report
