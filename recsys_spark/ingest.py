"""Ingest raw behaviour (and optional user / item files) into Delta, validating every row.

Contract:
- The events input must have the columns user_id, item_id, event_type and timestamp (event_id and
  rating are optional). Missing required columns stop the job with an error naming them.
- A row with a null or empty id, an unknown event type, an unparseable timestamp or a non-numeric
  rating goes to the quarantine table with the reason, its source file and its raw values.
- Duplicates (same event_id, or same user/item/type/timestamp) are kept once, within the batch and
  against what the events table already holds; re-ingesting the same files inserts nothing.
- Empty input (no files, or no rows) raises before any table is written, so nothing downstream is
  overwritten with emptiness. Input whose rows are all malformed is quarantined, then raises.
"""
from __future__ import annotations

import glob
import os
import uuid
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import schema, tables
from recsys_spark.config import Config, IngestConfig


class IngestError(RuntimeError):
    """Raw input cannot be ingested; the message says what was wrong and what to do."""


@dataclass
class IngestReport:
    run_id: str
    raw_rows: int
    valid_rows: int
    quarantined_rows: int
    duplicate_rows: int
    inserted_rows: int
    users_upserted: int
    items_upserted: int
    events_version: int

    def summary(self) -> str:
        return (f"ingest {self.run_id}: {self.raw_rows} raw rows, {self.inserted_rows} new events, "
                f"{self.duplicate_rows} duplicates skipped, {self.quarantined_rows} quarantined "
                f"(see table {schema.QUARANTINE}), users upserted {self.users_upserted}, "
                f"items upserted {self.items_upserted}; events table now at version {self.events_version}")


def _detect_format(path: str, configured: str) -> str:
    if configured != "auto":
        return configured
    if "://" in path and not path.startswith("file:"):
        raise IngestError(f"ingest.format is 'auto' but {path} is remote; set ingest.format to csv, parquet or json")
    local = path[len("file:"):] if path.startswith("file:") else path
    files = [local] if os.path.isfile(local) else [
        f for f in (glob.glob(os.path.join(local, "**", "*"), recursive=True) if os.path.isdir(local) else glob.glob(local))
        if os.path.isfile(f) and not os.path.basename(f).startswith(("_", "."))
    ]
    if not files:
        raise IngestError(f"no input files found at {path}; check ingest.events (or paths.raw) "
                          f"or run 'python -m recsys_spark generate' for a synthetic shop")
    names = {os.path.basename(f).lower() for f in files}
    if names and all(n.startswith("ratings.") and n.endswith((".dat", ".csv")) for n in names):
        first = open(sorted(files)[0], encoding="latin-1").readline()
        if "::" in first or first.lower().startswith("userid,"):
            return "movielens"
    exts = {os.path.splitext(f)[1].lower().lstrip(".") for f in files}
    exts = {"json" if e in ("jsonl", "ndjson") else "sasrec" if e == "txt" else e for e in exts}
    known = exts & {"csv", "parquet", "json", "sasrec"}
    if len(known) != 1 or exts - known:
        raise IngestError(f"cannot tell the input format of {path} from its file extensions {sorted(exts)}; "
                          f"set ingest.format to csv, parquet, json, sasrec or movielens (one format per input path)")
    return known.pop()


def read_raw(spark: SparkSession, path: str, fmt: str) -> DataFrame:
    """Read raw files as they are, with a source_file column. CSV columns stay strings."""
    fmt = _detect_format(path, fmt)
    if fmt == "sasrec":
        return read_sasrec(spark, path)
    if fmt == "movielens":
        return read_movielens(spark, path)
    reader = spark.read.format(fmt)
    if fmt == "csv":
        reader = reader.option("header", "true").option("inferSchema", "false")
    if os.path.isdir(path):
        reader = reader.option("recursiveFileLookup", "true")
    return reader.load(path).withColumn("source_file", F.input_file_name())


# Sequence-only formats carry order but no time: event k of line n gets this many seconds after
# SEQUENCE_EPOCH, so the order of lines and of items within a line is the chronological order.
SEQUENCE_EPOCH = 1_000_000_000
SEQUENCE_LINE_SECONDS = 100_000


def read_sasrec(spark: SparkSession, path: str) -> DataFrame:
    """The SASRec / S3-Rec text formats: `user item` per line, or `user item1 item2 ...` per line.

    Lines are chronological (per user, in file order). Every item becomes a 'purchase' event with
    a synthetic, order-preserving timestamp. A line with a user and no item is kept as a row with
    a null item_id, so validation quarantines it instead of dropping it silently.
    """
    lines = spark.read.text(path).withColumn("source_file", F.input_file_name())
    numbered = lines.rdd.zipWithIndex().map(lambda r: (r[0][0], r[0][1], r[1]))
    df = spark.createDataFrame(numbered, "line string, source_file string, line_no long")
    df = df.where(F.trim("line") != "").withColumn("tok", F.split(F.trim("line"), r"\s+"))
    df = df.select("source_file", "line_no", F.col("tok")[0].alias("user_id"),
                   F.posexplode_outer(F.expr("slice(tok, 2, greatest(size(tok) - 1, 1))")).alias("pos", "item_id"))
    ts = F.lit(SEQUENCE_EPOCH) + F.col("line_no") * SEQUENCE_LINE_SECONDS + F.coalesce(F.col("pos"), F.lit(0))
    return df.select("user_id", "item_id", F.lit("purchase").alias("event_type"),
                     ts.cast("long").alias("timestamp"), "source_file")


def read_movielens(spark: SparkSession, path: str) -> DataFrame:
    """MovieLens ratings: `ratings.csv` (userId,movieId,rating,timestamp) or `ratings.dat`
    (UserID::MovieID::Rating::Timestamp). Each rating becomes a 'rating' event."""
    local = path[len("file:"):] if path.startswith("file:") else path
    sample = sorted(glob.glob(os.path.join(local, "*")) if os.path.isdir(local) else glob.glob(local))
    first = open(sample[0], encoding="latin-1").readline() if sample else ""
    if "::" in first:
        raw = spark.read.text(path).withColumn("source_file", F.input_file_name())
        parts = F.split("value", "::")
        df = raw.select(parts[0].alias("user_id"), parts[1].alias("item_id"), parts[2].alias("rating"),
                        parts[3].alias("timestamp"), "source_file")
    else:
        raw = (spark.read.option("header", "true").csv(path)
               .withColumn("source_file", F.input_file_name()))
        missing = [c for c in ("userId", "movieId", "rating", "timestamp") if c not in raw.columns]
        if missing:
            raise IngestError(f"{path}: not a MovieLens ratings.csv, missing column(s) {', '.join(missing)}")
        df = raw.select(F.col("userId").alias("user_id"), F.col("movieId").alias("item_id"), "rating",
                        "timestamp", "source_file")
    return df.withColumn("event_type", F.lit("rating"))


def _epoch_to_timestamp(c):
    """Epoch numbers in seconds, milliseconds, microseconds or nanoseconds (told apart by size:
    any date after 1973 in one unit is out of range of the next). Parquet nanosecond timestamps
    arrive here as longs (spark.sql.legacy.parquet.nanosAsLong)."""
    x = c.cast("double")
    secs = (F.when(F.abs(x) >= 1e17, x / 1e9).when(F.abs(x) >= 1e14, x / 1e6)
            .when(F.abs(x) >= 1e11, x / 1e3).otherwise(x))
    return F.timestamp_micros((secs * 1e6).cast("long"))


def _parse_timestamp(col: DataFrame, dtype: str, fmt: str):
    c = F.col("timestamp")
    if dtype in ("timestamp", "timestamp_ntz"):
        return c.cast("timestamp")
    if dtype in ("bigint", "int", "double", "float", "long") or dtype.startswith("decimal"):
        return _epoch_to_timestamp(c)
    s = F.trim(c.cast("string"))
    return F.when(s.rlike(r"^\d{9,19}$"), _epoch_to_timestamp(s)).otherwise(
        F.coalesce(F.to_timestamp(s, fmt), F.to_timestamp(s))
    )


def validate_events(raw: DataFrame, cfg: IngestConfig, run_id: str) -> tuple[DataFrame, DataFrame]:
    """Split raw events into (valid rows in EVENTS_SCHEMA, quarantined rows in QUARANTINE_SCHEMA)."""
    missing = [c for c in schema.REQUIRED_EVENT_COLUMNS if c not in raw.columns]
    if missing:
        raise IngestError(
            f"events input is missing required column(s): {', '.join(missing)}. "
            f"Found columns: {', '.join(c for c in raw.columns if c != 'source_file')}. "
            f"Rename them in the source or export (required: {', '.join(schema.REQUIRED_EVENT_COLUMNS)})."
        )
    dtypes = dict(raw.dtypes)
    value_cols = [c for c in raw.columns if c != "source_file"]
    df = raw.withColumn("_raw", F.to_json(F.struct(*[F.col(c).cast("string").alias(c) for c in value_cols])))
    df = (
        df.withColumn("user_id", F.trim(F.col("user_id").cast("string")))
        .withColumn("item_id", F.trim(F.col("item_id").cast("string")))
        .withColumn("event_type", F.lower(F.trim(F.col("event_type").cast("string"))))
        .withColumn("ts", _parse_timestamp(df, dtypes["timestamp"], cfg.timestamp_format))
    )
    if "rating" in raw.columns:
        df = df.withColumn("_rating_raw", F.trim(F.col("rating").cast("string")))
        df = df.withColumn("rating", F.col("rating").cast("double"))
        bad_rating = F.col("_rating_raw").isNotNull() & (F.col("_rating_raw") != "") & F.col("rating").isNull()
    else:
        df = df.withColumn("rating", F.lit(None).cast("double"))
        bad_rating = F.lit(False)
    known = F.col("event_type").isin(*cfg.event_types)
    reason = (
        F.when(F.col("user_id").isNull() | (F.col("user_id") == ""), F.lit("null or empty user_id"))
        .when(F.col("item_id").isNull() | (F.col("item_id") == ""), F.lit("null or empty item_id"))
        .when(F.col("event_type").isNull() | ~known,
              F.concat(F.lit("unknown event_type '"), F.coalesce(F.col("event_type"), F.lit("null")),
                       F.lit(f"' (allowed: {', '.join(cfg.event_types)})")))
        .when(F.col("ts").isNull(), F.concat(F.lit("unparseable timestamp '"),
                                              F.coalesce(F.col("timestamp").cast("string"), F.lit("null")), F.lit("'")))
        .when(bad_rating, F.lit("non-numeric rating"))
    )
    df = df.withColumn("_reason", reason)
    quarantined = df.where(F.col("_reason").isNotNull()).select(
        F.col("_reason").alias("reason"), "source_file", F.col("_raw").alias("raw"),
        F.lit(run_id).alias("ingest_run_id"), F.current_timestamp().alias("quarantined_at"),
    )
    valid = df.where(F.col("_reason").isNull())
    natural = F.sha2(F.concat_ws("|", "user_id", "item_id", "event_type", F.col("ts").cast("string")), 256)
    if "event_id" in raw.columns:
        eid = F.trim(F.col("event_id").cast("string"))
        valid = valid.withColumn("event_id", F.when(eid.isNull() | (eid == ""), natural).otherwise(eid))
    else:
        valid = valid.withColumn("event_id", natural)
    valid = valid.select(
        "event_id", "user_id", "item_id", "event_type", "ts", "rating", "source_file",
        F.lit(run_id).alias("ingest_run_id"),
    )
    return valid, quarantined


def deduplicate(valid: DataFrame, existing: DataFrame | None) -> DataFrame:
    """Keep one row per event_id and per (user, item, type, ts), and drop rows already stored."""
    natural = ["user_id", "item_id", "event_type", "ts"]
    out = valid.dropDuplicates(["event_id"]).dropDuplicates(natural)
    if existing is not None:
        out = out.join(existing.select("event_id"), "event_id", "left_anti")
        out = out.join(existing.select(*natural), natural, "left_anti")
    return out


def _ingest_side_table(spark: SparkSession, path: str, fmt: str, key: str, target: str,
                       quarantine_path: str, run_id: str) -> int:
    raw = read_raw(spark, path, fmt)
    if key not in raw.columns:
        raise IngestError(f"{path}: required column {key} is missing (found: {', '.join(raw.columns)})")
    cols = [c for c in raw.columns if c != "source_file"]
    df = raw.withColumn(key, F.trim(F.col(key).cast("string")))
    bad = df.where(F.col(key).isNull() | (F.col(key) == ""))
    n_bad = bad.count()
    if n_bad:
        tables.append(bad.select(
            F.lit(f"null or empty {key}").alias("reason"), "source_file",
            F.to_json(F.struct(*[F.col(c).cast("string").alias(c) for c in cols])).alias("raw"),
            F.lit(run_id).alias("ingest_run_id"), F.current_timestamp().alias("quarantined_at"),
        ), quarantine_path)
    good = df.where(F.col(key).isNotNull() & (F.col(key) != "")).drop("source_file").dropDuplicates([key])
    n = good.count()
    if n:
        tables.upsert(spark, good, target, [key])
    return n


def run(spark: SparkSession, cfg: Config) -> IngestReport:
    """Validate and load raw events (+ users/items when configured) into the bronze/silver tables."""
    run_id = "ingest-" + uuid.uuid4().hex[:12]
    root = cfg.tables_dir
    events_path = tables.path(root, schema.EVENTS)
    quarantine_path = tables.path(root, schema.QUARANTINE)
    raw = read_raw(spark, cfg.ingest.events, cfg.ingest.format)
    valid, quarantined = validate_events(raw, cfg.ingest, run_id)
    raw_rows = raw.count()
    if raw_rows == 0:
        raise IngestError(f"events input {cfg.ingest.events} has no rows; nothing was written. "
                          f"Check the upstream export before re-running.")
    valid = valid.persist()
    n_valid = valid.count()
    n_quarantined = raw_rows - n_valid
    if n_quarantined:
        tables.append(quarantined, quarantine_path)
    if n_valid == 0:
        valid.unpersist()
        raise IngestError(f"all {raw_rows} rows of {cfg.ingest.events} are malformed and were quarantined "
                          f"(table {quarantine_path}); nothing else was written.")
    existing = tables.read(spark, events_path) if tables.exists(spark, events_path) else None
    new = deduplicate(valid, existing).persist()
    n_new = new.count()
    if existing is None:
        tables.overwrite(new, events_path)
    elif n_new:
        tables.append(new, events_path)
    # The change feed tells incremental scoring which users have new events.
    tables.enable_change_feed(spark, events_path)
    new.unpersist()
    valid.unpersist()
    users_n = items_n = 0
    users_path = cfg.ingest.users or (os.path.join(cfg.paths.raw, "users") if os.path.isdir(os.path.join(cfg.paths.raw, "users")) else "")
    items_path = cfg.ingest.items or (os.path.join(cfg.paths.raw, "items") if os.path.isdir(os.path.join(cfg.paths.raw, "items")) else "")
    if users_path:
        users_n = _ingest_side_table(spark, users_path, cfg.ingest.format, "user_id",
                                     tables.path(root, schema.USERS), quarantine_path, run_id)
    if items_path:
        items_n = _ingest_side_table(spark, items_path, cfg.ingest.format, "item_id",
                                     tables.path(root, schema.ITEMS), quarantine_path, run_id)
    report = IngestReport(run_id, raw_rows, n_valid, n_quarantined, n_valid - n_new, n_new,
                          users_n, items_n, tables.version(spark, events_path))
    print(report.summary(), flush=True)
    return report
