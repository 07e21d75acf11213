"""Ingest raw behaviour (and optional user / item files) into Delta, validating every row.

Contract:
- The events input must have the columns user_id, item_id, event_type and timestamp (event_id and
  rating are optional; any other column is kept in the events' attributes map). CSV columns are
  matched by name in every file's own header. No file with all required columns stops the job with
  an error naming them; a file without them has its rows quarantined.
- A row that cannot be trusted goes to the quarantine table with the reason, its source file and its
  raw values: a wrong field count or broken quoting, a null or empty id, an unknown event type, an
  unparseable or implausible timestamp (ingest.min_timestamp, ingest.max_clock_skew_hours), a
  non-numeric, NaN, infinite or out-of-range rating (ingest.rating_range), or an event_id that comes
  with two different payloads (in the batch, or against what the events table holds).
- Duplicates (same event_id, or same user/item/type/timestamp) are kept once, within the batch and
  against what the events table already holds; re-ingesting the same files inserts nothing and
  quarantines nothing twice. Concurrent ingests insert each event once (insert-only MERGE, retried
  when another run commits first).
- Empty input (no files, or no rows) raises before any table is written, so nothing downstream is
  overwritten with emptiness. Input whose rows are all malformed is quarantined, then raises.
"""
from __future__ import annotations

import csv
import glob
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import reduce
from typing import Optional

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import privacy, schema, tables
from recsys_spark.config import Config, IngestConfig
from recsys_spark.forget import without_suppressed

logger = logging.getLogger(__name__)

# Spark's name for a line it could not split into the header's fields; the quarantine reason
# names it in words.
CORRUPT = "_corrupt_record"
# Events columns the product reads; others travel in the attributes map.
KNOWN_EVENT_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "timestamp", "rating")


class IngestError(RuntimeError):
    """Raw input cannot be ingested; the message says what was wrong and what to do."""


class AllRowsQuarantined(IngestError):
    """Every row of the input was malformed: all are in the quarantine table, nothing else written."""


class EmptyInput(IngestError):
    """The events input has no rows: nothing was written."""


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
    suppressed_rows: int = 0  # rows of forgotten users (recsys_spark.forget), skipped unread


    def summary(self) -> str:
        return (f"ingest {self.run_id}: {self.raw_rows} raw rows, {self.inserted_rows} new events, "
                f"{self.duplicate_rows} duplicates skipped, {self.quarantined_rows} quarantined "
                f"(see table {schema.QUARANTINE}), users upserted {self.users_upserted}, "
                f"items upserted {self.items_upserted}; events table now at version {self.events_version}"
                + (f"; {self.suppressed_rows} rows of forgotten users skipped" if self.suppressed_rows else ""))


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


def read_raw(spark: SparkSession, path, cfg: IngestConfig, required: tuple = (),
             fmt: Optional[str] = None) -> tuple[DataFrame, str]:
    """Read raw files as they are, with a source_file column; returns (rows, format). path: a file,
    directory or glob, or a list of files of the format fmt (csv, parquet or json). CSV columns
    stay strings, matched by name per file; a line Spark cannot split into its file's fields keeps
    its text in the _corrupt_record column."""
    fmt = fmt or _detect_format(path, cfg.format)
    if fmt == "sasrec":
        return read_sasrec(spark, path), fmt
    if fmt == "movielens":
        return read_movielens(spark, path), fmt
    if fmt == "csv":
        return read_csv(spark, path, cfg, required), fmt
    reader = spark.read.format(fmt)
    if fmt == "json":
        reader = reader.option("columnNameOfCorruptRecord", CORRUPT)
    if isinstance(path, str) and os.path.isdir(path):
        reader = reader.option("recursiveFileLookup", "true")
    return reader.load(path).withColumn("source_file", F.input_file_name()), fmt


def _input_files(spark: SparkSession, path: str) -> list[str]:
    """Data files at a path, directory (recursively) or glob, through Hadoop (local or remote);
    names starting with _ or . (Spark's and editors' side files) are skipped."""
    fs, hpath = tables.filesystem(spark, path)
    out, pending = [], list(fs.globStatus(hpath) or [])
    while pending:
        st = pending.pop()
        if st.getPath().getName().startswith(("_", ".")):
            continue
        if st.isDirectory():
            pending.extend(fs.listStatus(st.getPath()))
        else:
            out.append(st.getPath().toString())
    return sorted(out)


def _csv_header(spark: SparkSession, file: str, encoding: str) -> list[str]:
    """The column names of one CSV file's first line: unquoted, trimmed, lower-cased, BOM removed."""
    jvm = spark.sparkContext._jvm
    fs, hpath = tables.filesystem(spark, file)
    stream = fs.open(hpath)
    try:
        line = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, encoding)).readLine()
    finally:
        stream.close()
    if not line:
        return []
    return [c.strip().lstrip("\ufeff").strip().lower() for c in next(csv.reader([line]))]


def _missing_columns_error(columns: list[str], where: str) -> IngestError:
    return IngestError(
        f"{where} is missing required column(s): "
        f"{', '.join(c for c in schema.REQUIRED_EVENT_COLUMNS if c not in columns)}. "
        f"Found columns: {', '.join(columns)}. "
        f"Rename them in the source or export (required: {', '.join(schema.REQUIRED_EVENT_COLUMNS)})."
    )


def read_csv(spark: SparkSession, path, cfg: IngestConfig, required: tuple = ()) -> DataFrame:
    """CSV files read by name: files are grouped by their own header, each group read with that
    header's columns (all strings) and the groups unioned by name. A row whose field count differs
    from its header keeps its line in _corrupt_record; a file whose header lacks a required column or
    repeats one gets a _file_problem on all its rows. Raises when no file has the required columns."""
    groups: dict[tuple, list[str]] = {}
    for f in (path if isinstance(path, list) else _input_files(spark, path)):
        header = tuple(_csv_header(spark, f, cfg.csv_encoding))
        if header:  # an empty file has no header and no rows
            groups.setdefault(header, []).append(f)
    if not groups:
        return spark.createDataFrame([], "source_file string")
    frames, usable = [], False
    for header, files in groups.items():
        names = [c if c not in header[:i] else f"{c}#{i}" for i, c in enumerate(header)]
        problems = [f"file header lacks required column(s) {', '.join(c for c in required if c not in header)}"
                    ] if any(c not in header for c in required) else []
        if len(set(header)) < len(header):
            problems.append("file header names a column twice")
        usable = usable or not problems
        fields = [T.StructField(c or f"_c{i}", T.StringType()) for i, c in enumerate(names)]
        df = (spark.read.schema(T.StructType(fields + [T.StructField(CORRUPT, T.StringType())]))
              .option("header", "true").option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
              .option("multiLine", str(cfg.csv_multiline).lower()).option("encoding", cfg.csv_encoding)
              .csv(files))
        frames.append(df.withColumn("source_file", F.input_file_name())
                      .withColumn("_file_problem", F.lit("; ".join(problems) or None).cast("string")))
    if required and not usable:
        header = next(iter(groups))
        raise _missing_columns_error(list(header), "events input" if len(groups) == 1 else "every events input file")
    return reduce(lambda x, y: x.unionByName(y, allowMissingColumns=True), frames)


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
    arrive here as longs (spark.sql.legacy.parquet.nanosAsLong). NaN, infinite and absurdly large
    numbers give null (quarantined as unparseable)."""
    x = c.cast("double")
    secs = (F.when(F.abs(x) >= 1e17, x / 1e9).when(F.abs(x) >= 1e14, x / 1e6)
            .when(F.abs(x) >= 1e11, x / 1e3).otherwise(x))
    sane = ~F.isnan(x) & (F.abs(secs) < 1e13)
    return F.when(sane, F.timestamp_micros((secs * 1e6).cast("long")))


def _parse_timestamp(dtype: str, fmt: str):
    c = F.col("timestamp")
    if dtype in ("timestamp", "timestamp_ntz"):
        return c.cast("timestamp")
    if dtype in ("bigint", "int", "double", "float", "long") or dtype.startswith("decimal"):
        return _epoch_to_timestamp(c)
    s = F.trim(c.cast("string"))
    return F.when(s.rlike(r"^\d{9,19}$"), _epoch_to_timestamp(s)).otherwise(
        F.coalesce(F.to_timestamp(s, fmt), F.to_timestamp(s))
    )


def _file_reason(df: DataFrame):
    """Why a row cannot be read at all (null when it can): the reader's verdict on its line, or its
    file's header."""
    reason = F.lit(None).cast("string")
    if "_file_problem" in df.columns:
        reason = F.col("_file_problem")
    if CORRUPT in df.columns:
        reason = F.when(F.col(CORRUPT).isNotNull(),
                        F.lit("malformed line (field count differs from the header, or broken quoting)")
                        ).otherwise(reason)
    return reason


def _raw_json(df: DataFrame):
    """The row's raw values as JSON (the unsplit line when the reader could not split it)."""
    cols = [c for c in df.columns if c != "source_file" and not c.startswith("_")]
    values = F.to_json(F.struct(*[F.col(c).cast("string").alias(c) for c in cols]))
    if CORRUPT in df.columns:
        values = F.when(F.col(CORRUPT).isNotNull(), F.to_json(F.struct(F.col(CORRUPT).alias("line")))).otherwise(values)
    return values


def _attributes(df: DataFrame):
    """Columns beyond the ones the product reads, as a map of their string values (kept, not dropped)."""
    extra = [c for c in df.columns if c not in KNOWN_EVENT_COLUMNS and c != "source_file" and not c.startswith("_")]
    if not extra:
        return F.lit(None).cast("map<string,string>")
    pairs = F.create_map(*[x for c in extra for x in (F.lit(c), F.col(c).cast("string"))])
    return F.map_filter(pairs, lambda k, v: v.isNotNull())


def _time_reason(cfg: IngestConfig, real_time: bool):
    """Why a parsed timestamp cannot be trusted (null when it can)."""
    unparseable = F.concat(F.lit("unparseable timestamp '"),
                           F.coalesce(F.col("timestamp").cast("string"), F.lit("null")), F.lit("'"))
    reason = F.when(F.col("ts").isNull(), unparseable)
    if not real_time:
        return reason
    horizon = F.unix_timestamp() + int(cfg.max_clock_skew_hours * 3600)
    return (reason.when(F.col("ts").cast("double") > horizon,
                        F.concat(F.lit("timestamp "), F.col("ts").cast("string"),
                                 F.lit(f" is in the future (beyond ingest.max_clock_skew_hours={cfg.max_clock_skew_hours:g})")))
            .when(F.col("ts") < F.lit(datetime.fromisoformat(cfg.min_timestamp)),
                  F.concat(F.lit("timestamp "), F.col("ts").cast("string"),
                           F.lit(f" is before ingest.min_timestamp={cfg.min_timestamp}"))))


def _rating_reason(df: DataFrame, cfg: IngestConfig):
    if "rating" not in df.columns:
        return F.lit(None).cast("string")
    text = F.trim(F.col("rating").cast("string"))
    value = F.col("rating").cast("double")
    low, high = cfg.rating_range
    return (F.when(text.isNull() | (text == ""), None)
            .when(value.isNull(), F.concat(F.lit("non-numeric rating '"), text, F.lit("'")))
            .when(F.isnan(value) | (F.abs(value) == float("inf")), F.lit("rating is NaN or infinite"))
            .when((value < low) | (value > high),
                  F.concat(F.lit("rating "), text, F.lit(f" outside ingest.rating_range [{low:g}, {high:g}]"))))


def parse_events(raw: DataFrame, cfg: IngestConfig, run_id: str, real_time: bool = True) -> DataFrame:
    """Every raw row typed (the events columns) with _reason, why it cannot be trusted (null when it
    can), and _raw, its raw values as JSON. real_time=False (sequence formats) skips the plausibility
    checks of synthetic timestamps."""
    missing = [c for c in schema.REQUIRED_EVENT_COLUMNS if c not in raw.columns]
    if missing:
        raise _missing_columns_error([c for c in raw.columns if c != "source_file" and not c.startswith("_")],
                                     "events input")
    df = raw.withColumn("_raw", _raw_json(raw)).withColumn("attributes", _attributes(raw))
    df = (
        df.withColumn("user_id", F.trim(F.col("user_id").cast("string")))
        .withColumn("item_id", F.trim(F.col("item_id").cast("string")))
        .withColumn("event_type", F.lower(F.trim(F.col("event_type").cast("string"))))
        .withColumn("ts", _parse_timestamp(dict(raw.dtypes)["timestamp"], cfg.timestamp_format))
    )
    known = F.col("event_type").isin(*cfg.event_types)
    rating_reason = _rating_reason(df, cfg)
    reason = (
        F.when(_file_reason(raw).isNotNull(), _file_reason(raw))
        .when(F.col("user_id").isNull() | (F.col("user_id") == ""), F.lit("null or empty user_id"))
        .when(F.col("item_id").isNull() | (F.col("item_id") == ""), F.lit("null or empty item_id"))
        .when(F.col("event_type").isNull() | ~known,
              F.concat(F.lit("unknown event_type '"), F.coalesce(F.col("event_type"), F.lit("null")),
                       F.lit(f"' (allowed: {', '.join(cfg.event_types)})")))
        .otherwise(F.coalesce(_time_reason(cfg, real_time), rating_reason))
    )
    df = df.withColumn("_reason", reason)
    df = df.withColumn("rating", F.col("rating").cast("double") if "rating" in raw.columns else F.lit(None).cast("double"))
    natural = F.sha2(F.concat_ws("|", "user_id", "item_id", "event_type", F.col("ts").cast("string")), 256)
    eid = F.trim(F.col("event_id").cast("string")) if "event_id" in raw.columns else F.lit(None).cast("string")
    df = df.withColumn("event_id", F.when(eid.isNull() | (eid == ""), natural).otherwise(eid))
    return df.select("event_id", "user_id", "item_id", "event_type", "ts", "rating", "attributes", "source_file",
                     F.lit(run_id).alias("ingest_run_id"), "_raw", "_reason")


def _payload(df: DataFrame):
    return F.sha2(F.concat_ws("|", "user_id", "item_id", "event_type", F.col("ts").cast("string"),
                              F.coalesce(F.col("rating").cast("string"), F.lit(""))), 256)


def flag_conflicts(rows: DataFrame, existing: Optional[DataFrame]) -> DataFrame:
    """Give a reason to every trusted row whose event_id comes with a different payload (user, item,
    type, time, rating) than the events table already holds, or, for ids not stored yet, than
    another row of this input. Which version is right cannot be told, so none is inserted."""
    df = rows.withColumn("_payload", F.when(F.col("_reason").isNull(), _payload(rows)))
    stored = F.lit(None).cast("string")
    if existing is not None:
        df = df.join(existing.select("event_id", _payload(existing).alias("_stored")), "event_id", "left")
        stored = F.col("_stored")
        df = df.withColumn("_reason", F.when(F.col("_reason").isNull() & stored.isNotNull() & (stored != F.col("_payload")),
                                             F.concat(F.lit("event_id '"), F.col("event_id"),
                                                      F.lit("' is already stored with a different payload")))
                           .otherwise(F.col("_reason")))
    fresh = F.col("_reason").isNull() & stored.isNull()
    variants = F.size(F.collect_set(F.when(fresh, F.col("_payload"))).over(Window.partitionBy("event_id")))
    df = df.withColumn("_reason", F.when(fresh & (variants > 1), F.concat(
        F.lit("event_id '"), F.col("event_id"), F.lit("' comes with "), variants.cast("string"),
        F.lit(" different payloads in this input"))).otherwise(F.col("_reason")))
    return df.drop("_payload", "_stored")


def quarantine_rows(rows: DataFrame) -> DataFrame:
    """Rows with a reason, in the quarantine table's columns (quarantine_id: one row per reason,
    file and raw values, so re-ingesting the same files adds nothing)."""
    bad = rows.where(F.col("_reason").isNotNull())
    qid = F.sha2(F.concat_ws("|", "_reason", F.coalesce("source_file", F.lit("")), F.coalesce("_raw", F.lit(""))), 256)
    return bad.select(
        F.col("_reason").alias("reason"), "source_file", F.col("_raw").alias("raw"), "ingest_run_id",
        F.current_timestamp().alias("quarantined_at"), qid.alias("quarantine_id"),
    ).dropDuplicates(["quarantine_id"])


def deduplicate(valid: DataFrame, existing: DataFrame | None) -> DataFrame:
    """Keep one row per event_id and per (user, item, type, ts), and drop rows already stored."""
    natural = ["user_id", "item_id", "event_type", "ts"]
    out = valid.dropDuplicates(["event_id"]).dropDuplicates(natural)
    if existing is not None:
        out = out.join(existing.select("event_id"), "event_id", "left_anti")
        out = out.join(existing.select(*natural), natural, "left_anti")
    return out


def _store_events(spark: SparkSession, root: str, rows: DataFrame, raw_rows: int) -> tuple[int, int, int]:
    """Quarantine what cannot be trusted and insert the new events; (valid, quarantined, inserted)."""
    events_path = tables.location(root, schema.EVENTS)
    existing = tables.read(spark, events_path) if tables.exists(spark, events_path) else None
    flagged = flag_conflicts(rows, existing).persist()
    try:
        n_valid = flagged.where(F.col("_reason").isNull()).count()
        n_quarantined = raw_rows - n_valid
        if n_quarantined:
            tables.insert_missing(spark, quarantine_rows(flagged), tables.location(root, schema.QUARANTINE), "quarantine_id")
        if n_valid == 0:
            raise AllRowsQuarantined(f"all {raw_rows} rows of the events input are malformed and were quarantined "
                              f"(table {tables.location(root, schema.QUARANTINE)}); nothing else was written.")
        valid = flagged.where(F.col("_reason").isNull()).drop("_raw", "_reason")
        new = deduplicate(valid, existing).persist()
        n_new = new.count()
        if n_new or existing is None:
            tables.insert_missing(spark, new, events_path, "event_id")
        new.unpersist()
    finally:
        flagged.unpersist()
    # The change feed tells incremental scoring which users have new events.
    tables.enable_change_feed(spark, events_path)
    return n_valid, n_quarantined, n_new


def protect_users(spark: SparkSession, cfg: Config, raw: DataFrame) -> DataFrame:
    """Raw rows as the privacy settings allow them in: forgotten users' rows dropped; with
    privacy.pseudonymize, user ids replaced by their pseudonyms and lines that could not be split
    (which may hold an id anywhere) replaced by their sha256."""
    raw = without_suppressed(spark, cfg.tables_root, raw)
    if not cfg.privacy.pseudonymize:
        return raw
    raw = raw.withColumn("user_id", privacy.pseudonymize(F.col("user_id"), privacy.pseudonym_key(cfg.privacy, spark)))
    if CORRUPT in raw.columns:
        raw = raw.withColumn(CORRUPT, F.when(F.col(CORRUPT).isNotNull(), F.concat(
            F.lit("withheld (privacy.pseudonymize), sha256 "), F.sha2(F.col(CORRUPT), 256))))
    return raw


def _allowed_user_columns(raw: DataFrame, cfg: Config) -> DataFrame:
    """The users input without the columns privacy.user_columns does not list (named when dropped)."""
    dropped = [c for c in raw.columns if c not in ("user_id", "source_file") and not c.startswith("_")
               and c not in cfg.privacy.user_columns]
    if dropped:
        logger.info(f"ingest: users columns not in privacy.user_columns dropped: {', '.join(dropped)}")
    return raw.drop(*dropped)


def _ingest_side_table(spark: SparkSession, cfg: Config, path: str, key: str, target: str, run_id: str) -> int:
    """Upsert users or items by key (bad rows quarantined; users as protect_users and
    privacy.user_columns allow); rows upserted."""
    quarantine_path = tables.location(cfg.tables_root, schema.QUARANTINE)
    raw, _ = read_raw(spark, path, cfg.ingest, (key,))
    if key not in raw.columns:
        raise IngestError(f"{path}: required column {key} is missing (found: {', '.join(raw.columns)})")
    if key == "user_id":
        raw = _allowed_user_columns(protect_users(spark, cfg, raw), cfg)
    df = raw.withColumn(key, F.trim(F.col(key).cast("string"))).withColumn("_raw", _raw_json(raw))
    vector_reason = F.lit(None).cast("string")
    if key == "item_id" and schema.ITEM_VECTOR_COLUMN in raw.columns:
        df = df.withColumn(schema.ITEM_VECTOR_COLUMN, item_vector(raw, schema.ITEM_VECTOR_COLUMN))
        vector_reason = _vector_reason(schema.ITEM_VECTOR_COLUMN)
    df = df.withColumn("_reason", F.coalesce(_file_reason(raw), F.when(
        F.col(key).isNull() | (F.col(key) == ""), F.lit(f"null or empty {key}")), vector_reason))
    df = df.withColumn("ingest_run_id", F.lit(run_id)).persist()
    if df.where(F.col("_reason").isNotNull()).count():
        tables.retry_on_conflict(lambda: tables.insert_missing(spark, quarantine_rows(df), quarantine_path, "quarantine_id"),
                                 "ingest quarantine")
    columns = [c for c in raw.columns if c != "source_file" and not c.startswith("_")]
    good = df.where(F.col("_reason").isNull()).select(*columns).dropDuplicates([key])
    n = good.count()
    if n:
        tables.retry_on_conflict(lambda: tables.upsert(spark, good, target, [key]), f"ingest {key}s")
    df.unpersist()
    return n


def item_vector(raw: DataFrame, column: str):
    """The items' upstream vector as array<float>, null when the row has none: an array column as
    it is, a string as its numbers (`0.1 -0.2 ...`, `[0.1, -0.2, ...]`; separated by spaces, commas,
    semicolons or |). A value that is not a number becomes a null element (see _vector_reason)."""
    if dict(raw.dtypes)[column].startswith("array"):
        vec = F.col(column).cast("array<float>")
    else:
        text = F.regexp_replace(F.trim(F.col(column).cast("string")), r"^\[|\]$", "")
        vec = F.filter(F.split(F.trim(text), r"[\s,;|]+"), lambda x: x != "").cast("array<float>")
    return F.when(F.size(vec) > 0, vec)


def _vector_reason(column: str):
    bad = F.exists(column, lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == float("inf")))
    return F.when(bad, F.lit(f"{column}: not a list of finite numbers"))


def _side_path(configured: str, raw_root: str, name: str) -> str:
    """The users or items input: as configured, else <paths.raw>/<name> when that folder exists."""
    default = os.path.join(raw_root, name)
    return configured or (default if os.path.isdir(default) else "")


def load_events(spark: SparkSession, cfg: Config, source, run_id: str, fmt: Optional[str] = None) -> tuple[int, int, int, int, int]:
    """Validate and insert the events of source (a path, or a list of files of format fmt):
    (rows read, rows after privacy, valid, quarantined, inserted)."""
    # Under Spark's default parser policy a date the old parser read differently (2026-1-5) fails
    # the whole job; CORRECTED makes an unreadable date null, so its row is quarantined instead.
    with tables.temporary_conf(spark, {"spark.sql.legacy.timeParserPolicy": "CORRECTED"}):
        raw, fmt = read_raw(spark, source, cfg.ingest, schema.REQUIRED_EVENT_COLUMNS, fmt)
        read_rows = raw.count()
        if read_rows == 0:
            raise EmptyInput(f"events input {cfg.ingest.events} has no rows; nothing was written. "
                              f"Check the upstream export before re-running.")
        raw = protect_users(spark, cfg, raw)
        raw_rows = raw.count()
        rows = parse_events(raw, cfg.ingest, run_id, real_time=fmt != "sasrec")
        n_valid, n_quarantined, n_new = tables.retry_on_conflict(
            lambda: _store_events(spark, cfg.tables_root, rows, raw_rows), "ingest events")
    return read_rows, raw_rows, n_valid, n_quarantined, n_new


def run(spark: SparkSession, cfg: Config) -> IngestReport:
    """Validate and load raw events (+ users/items when configured) into the bronze/silver tables."""
    run_id = "ingest-" + uuid.uuid4().hex[:12]
    root = cfg.tables_root
    read_rows, raw_rows, n_valid, n_quarantined, n_new = load_events(spark, cfg, cfg.ingest.events, run_id)
    side = {}
    with tables.temporary_conf(spark, {"spark.sql.legacy.timeParserPolicy": "CORRECTED"}):
        for key, name, configured in (("user_id", "users", cfg.ingest.users), ("item_id", "items", cfg.ingest.items)):
            path = _side_path(configured, cfg.paths.raw, name)
            side[key] = _ingest_side_table(spark, cfg, path, key, tables.location(root, getattr(schema, name.upper())),
                                           run_id) if path else 0
    report = IngestReport(run_id, read_rows, n_valid, n_quarantined, n_valid - n_new, n_new,
                          side["user_id"], side["item_id"], tables.version(spark, tables.location(root, schema.EVENTS)),
                          read_rows - raw_rows)
    logger.info(report.summary())
    return report


# What Spark's binaryFile source lists; the stream reads the paths only, never the bytes.
LISTED_FILES = "path string, modificationTime timestamp, length long, content binary"


def stream_checkpoint(cfg: Config) -> str:
    return cfg.ingest.stream_checkpoint or os.path.join(cfg.paths.root, "streams", "ingest")


def stream(spark: SparkSession, cfg: Config, once: bool = False) -> dict:
    """`ingest --stream`: watch the events folder and load every new file once, as `run` loads
    events (validation, quarantine, deduplication, privacy), a micro-batch of new files at a time:
    until stopped, or with once, the files there now. The checkpoint records the files loaded, so a
    restarted stream neither skips nor reloads one (and a reload would insert nothing: inserts are
    keyed by event_id). Users and items files are loaded by the batch `ingest`.

    A batch whose rows are all malformed is quarantined (an empty one skipped) and the stream goes
    on; input it cannot
    read (no file with the required columns) stops it before the batch is recorded, so the files
    are tried again on restart once fixed. Producers should write each file whole, then move it in."""
    folder = cfg.ingest.events
    fmt = cfg.ingest.format if cfg.ingest.format != "auto" else _detect_format(folder, "auto")
    if fmt not in ("csv", "parquet", "json"):
        raise IngestError(f"ingest --stream reads csv, parquet or json files; {folder} holds {fmt} "
                          f"(set ingest.format, or load it with the batch ingest)")
    loaded: list[dict] = []

    def load_batch(batch: DataFrame, batch_id: int) -> None:
        files = sorted(r.path for r in batch.collect())
        if not files:
            return
        run_id = f"ingest-stream-{batch_id}-" + uuid.uuid4().hex[:8]
        try:
            counts = dict(zip(("rows", "protected_rows", "valid", "quarantined", "inserted"),
                              load_events(spark, cfg, files, run_id, fmt)))
        except (AllRowsQuarantined, EmptyInput) as exc:  # nothing to lose: later files still load
            logger.error(f"ingest stream: batch {batch_id} ({', '.join(files)}): {exc}")
            counts = {"inserted": 0, "error": str(exc)}
        loaded.append({"batch": int(batch_id), "files": len(files), **counts})
        logger.info(f"ingest stream: batch {batch_id}: {len(files)} file(s), {counts['inserted']} new events")

    files = (spark.readStream.format("binaryFile").schema(LISTED_FILES).option("recursiveFileLookup", "true")
             .load(folder).select("path"))
    logger.info(f"ingest stream: new {fmt} files in {folder} -> {tables.location(cfg.tables_root, schema.EVENTS)} "
                f"(checkpoint {stream_checkpoint(cfg)}; {'the files there now' if once else 'until stopped'})")
    tables.run_micro_batches(files, load_batch, stream_checkpoint(cfg), once, cfg.ingest.stream_trigger_seconds)
    return {"batches": loaded, "files": sum(b["files"] for b in loaded), "inserted": sum(b["inserted"] for b in loaded)}
