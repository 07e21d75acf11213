"""Features: persistent id indexes, the user-item matrix, profiles, item content, sequences, split.

Every function here is DataFrame -> DataFrame except the index helpers, which append to their
Delta table. `run` wires them and writes the gold tables.

Index contract: user ids map to dense ints from 0, item ids from 1 (0 is sequence padding),
attribute values from 1 per attribute (0 means unknown). Re-running with new ids appends new
numbers after the current maximum; an id, once numbered, keeps its number forever.
"""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import schema, tables
from recsys_spark.config import Config, FeaturesConfig

PROFILE_COUNT_TYPES = ("view", "add_to_cart", "purchase", "rating")


def extend_index(spark: SparkSession, ids: DataFrame, location: str, id_col: str, idx_col: str,
                 start: int) -> DataFrame:
    """Give every new value of ids[id_col] the next free integer; return the whole index.

    New ids are numbered in sorted order after the current maximum (or from `start`), so the
    result is deterministic for the same inputs and existing numbers never change.
    """
    distinct = ids.select(F.col(id_col).cast("string").alias(id_col)).where(F.col(id_col).isNotNull()).distinct()
    if tables.exists(spark, location):
        current = tables.read(spark, location)
        new = distinct.join(current.select(id_col), id_col, "left_anti")
        top = current.agg(F.max(idx_col)).first()[0]
        offset = start if top is None else int(top) + 1
    else:
        new, offset = distinct, start
    ordered = new.orderBy(id_col)
    numbered = ordered.rdd.zipWithIndex().map(lambda r: (r[0][0], int(r[1]) + offset))
    new_index = spark.createDataFrame(numbered, T.StructType([
        T.StructField(id_col, T.StringType(), False), T.StructField(idx_col, T.LongType(), False)]))
    if not tables.exists(spark, location):
        tables.overwrite(new_index, location)
    elif not new_index.isEmpty():
        tables.append(new_index, location)
    return tables.read(spark, location)


def extend_attribute_index(spark: SparkSession, df: DataFrame, columns: list[str], location: str) -> DataFrame:
    """Persistent index of categorical values: (attribute, value, idx), idx from 1 per attribute."""
    for col in columns:
        values = df.select(F.concat_ws("\u0001", F.lit(col), F.col(col).cast("string")).alias("key")).where(
            F.col(col).isNotNull())
        loc = f"{location}/{col}"
        extend_index(spark, values, loc, "key", "idx", 1)
    parts = []
    for col in columns:
        idx = tables.read(spark, f"{location}/{col}")
        parts.append(idx.select(F.lit(col).alias("attribute"),
                                F.split("key", "\u0001").getItem(1).alias("value"), "idx"))
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


def attach_attribute_indexes(df: DataFrame, attr_index: DataFrame, columns: list[str]) -> DataFrame:
    """Add <col>_idx for each categorical column (0 when the value is missing or unknown)."""
    for col in columns:
        lookup = attr_index.where(F.col("attribute") == col).select(
            F.col("value").alias(col), F.col("idx").cast("int").alias(f"{col}_idx"))
        df = df.join(F.broadcast(lookup), col, "left").fillna(0, subset=[f"{col}_idx"])
    return df


def user_item_matrix(events: DataFrame, cfg: FeaturesConfig, ref_ts) -> DataFrame:
    """(user_idx, item_idx, weight): sum over events of type weight x 0.5 ** (age / half-life).

    ref_ts is the reference time for ages (the newest event), so the result does not depend on
    when the job runs. Event types missing from event_weights weigh 0.
    """
    weights = F.create_map(*[x for k, v in cfg.event_weights.items() for x in (F.lit(k), F.lit(float(v)))])
    age_days = (F.lit(ref_ts).cast("long") - F.col("ts").cast("long")) / 86400.0
    w = F.coalesce(weights[F.col("event_type")], F.lit(0.0)) * F.pow(F.lit(0.5), age_days / cfg.half_life_days)
    return (events.groupBy("user_idx", "item_idx").agg(F.sum(w).alias("weight"))
            .where(F.col("weight") > 0))


def sequences(events: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """Per user, the chronological item sequence with consecutive repeats collapsed.

    Ties on timestamp are ordered by event type (view, cart, purchase, rating), then event id.
    Output: user_idx, items array<int>, item_ts array<timestamp>.
    """
    type_order = F.create_map(*[x for i, k in enumerate(PROFILE_COUNT_TYPES) for x in (F.lit(k), F.lit(i))])
    ev = events.where(F.col("event_type").isin(*cfg.sequence_event_types)).select(
        "user_idx", "item_idx", "ts", "event_id", F.coalesce(type_order[F.col("event_type")], F.lit(9)).alias("t_ord"))
    grouped = ev.groupBy("user_idx").agg(F.array_sort(F.collect_list(
        F.struct("ts", "t_ord", "event_id", F.col("item_idx").cast("int").alias("item"))
    )).alias("evs"))
    keep = F.expr("filter(transform(sequence(1, size(evs)), i -> "
                  "if(i = 1 OR evs[i - 1].item != evs[i - 2].item, evs[i - 1], null)), x -> x IS NOT NULL)")
    return grouped.select("user_idx", keep.alias("evs")).select(
        "user_idx", F.col("evs.item").alias("items"), F.col("evs.ts").alias("item_ts"))


def split(seqs: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """Add train_items, valid_target, test_target.

    leave_last_out: users with >= 3 items get the last as test target and the one before as
    validation target; shorter histories are training only (targets null).
    time: items before time_cutoff are history; the first item at or after it is the test target,
    the last before it the validation target.
    """
    n = F.size("items")
    if cfg.split == "leave_last_out":
        return seqs.select(
            "*",
            F.when(n >= 3, F.slice("items", 1, n - 2)).otherwise(F.col("items")).alias("train_items"),
            F.when(n >= 3, F.element_at("items", -2)).alias("valid_target"),
            F.when(n >= 3, F.element_at("items", -1)).alias("test_target"),
        )
    cutoff = F.to_timestamp(F.lit(cfg.time_cutoff))
    pairs = F.arrays_zip("items", "item_ts")
    before = F.transform(F.filter(pairs, lambda p: p["item_ts"] < cutoff), lambda p: p["items"])
    after = F.transform(F.filter(pairs, lambda p: p["item_ts"] >= cutoff), lambda p: p["items"])
    nb = F.size(before)
    return seqs.select("*", before.alias("_b"), after.alias("_a")).select(
        *seqs.columns,
        F.when(nb >= 2, F.slice("_b", 1, nb - 1)).otherwise(F.col("_b")).alias("train_items"),
        F.when((nb >= 2) & (F.size("_a") > 0), F.element_at("_b", -1)).alias("valid_target"),
        F.when((nb >= 2) & (F.size("_a") > 0), F.element_at("_a", 1)).alias("test_target"),
    )


def training_windows(seqs: DataFrame, max_len: int) -> DataFrame:
    """Every training sequence cut into windows of max_len next-item steps, newest window first.

    Output: user_idx, window, input array<int> (left-padded with 0), target array<int> (the next item
    at each position, 0 where padded). Sequences with fewer than 2 items give no window.
    """
    L = max_len
    n = F.size("train_items")
    ends = F.expr(f"sequence(size(train_items), 2, -{L})")
    w = seqs.where(n >= 2).select("user_idx", "train_items", F.posexplode(ends).alias("window", "end"))
    start = F.greatest(F.lit(1), F.col("end") - L)
    win = F.slice("train_items", start, F.col("end") - start + 1)
    w = w.select("user_idx", "window", win.alias("w"))
    size = F.size("w") - 1
    pad = F.array_repeat(F.lit(0), F.lit(L) - size)
    return w.select(
        "user_idx", "window",
        F.concat(pad, F.slice("w", 1, size)).alias("input"),
        F.concat(pad, F.slice("w", 2, size)).alias("target"),
    )


def profiles(events: DataFrame, users: DataFrame | None, item_content: DataFrame, n_categories: int,
             ref_ts) -> DataFrame:
    """User profile: declared attributes (indexed), activity counts, recency and category shares.

    Output columns: user_idx, <attr>_idx for age_band/gender/region (0 when unknown), n_<type>
    counts, n_events, n_items, recency_days, active_days, category_shares array<double> of length
    n_categories + 1 (index = category idx, 0 = unknown category), profile_cat array<int> and
    profile_num array<float> (log1p-scaled numbers + shares: the model's fixed-width inputs).
    """
    counts = [F.sum(F.when(F.col("event_type") == t, 1).otherwise(0)).alias(f"n_{t}") for t in PROFILE_COUNT_TYPES]
    act = events.groupBy("user_idx").agg(
        *counts, F.count("*").alias("n_events"), F.countDistinct("item_idx").alias("n_items"),
        ((F.lit(ref_ts).cast("long") - F.max("ts").cast("long")) / 86400.0).alias("recency_days"),
        F.countDistinct(F.to_date("ts")).alias("active_days"),
    )
    by_cat = (events.join(item_content.select("item_idx", "category_idx"), "item_idx", "left")
              .fillna(0, subset=["category_idx"])
              .groupBy("user_idx", "category_idx").count())
    tot = Window.partitionBy("user_idx")
    by_cat = by_cat.withColumn("share", F.col("count") / F.sum("count").over(tot))
    shares = by_cat.groupBy("user_idx").agg(F.map_from_entries(F.collect_list(
        F.struct(F.col("category_idx").cast("int"), F.col("share")))).alias("m"))
    shares = shares.select("user_idx", F.expr(
        f"transform(sequence(0, {n_categories}), i -> coalesce(m[i], 0D))").alias("category_shares"))
    prof = act.join(shares, "user_idx", "left")
    attr_cols = [f"{c}_idx" for c in schema.USER_ATTRIBUTE_COLUMNS]
    if users is not None:
        prof = prof.join(users.select("user_idx", *attr_cols), "user_idx", "left")
    else:
        for c in attr_cols:
            prof = prof.withColumn(c, F.lit(0))
    prof = prof.fillna(0, subset=attr_cols)
    nums = [F.log1p(F.col(f"n_{t}").cast("double")) for t in PROFILE_COUNT_TYPES]
    nums += [F.log1p("n_events"), F.log1p("n_items"), F.log1p("recency_days"), F.log1p("active_days")]
    return prof.select(
        "*",
        F.array(*[F.col(c).cast("int") for c in attr_cols]).alias("profile_cat"),
        F.concat(F.array(*nums), F.col("category_shares")).cast("array<float>").alias("profile_num"),
    )


def auto_max_len(seqs: DataFrame) -> int:
    """Sequence length from data statistics: the 80th percentile of training history lengths,
    rounded up to a multiple of 10 and kept within [50, 200] (long histories, as in MovieLens, get
    200 steps; short ones, as in Amazon reviews, get 50)."""
    p80 = seqs.select(F.percentile_approx(F.size("train_items"), 0.8).alias("p")).first()["p"] or 0
    return int(min(200, max(50, -(-int(p80) // 10) * 10)))


@dataclass
class FeaturesReport:
    versions: dict[str, int]
    n_users: int
    n_items: int
    n_train_rows: int
    max_seq_len: int

    def summary(self) -> str:
        return (f"features: {self.n_users} users, {self.n_items} items, {self.n_train_rows} training windows "
                f"of {self.max_seq_len} steps; "
                f"table versions {self.versions}")


def run(spark: SparkSession, cfg: Config) -> FeaturesReport:
    root = cfg.tables_dir
    events_path = tables.path(root, schema.EVENTS)
    tables.require(spark, events_path, "ingest")
    events_version = tables.version(spark, events_path)
    events = tables.read(spark, events_path, events_version)
    if events.isEmpty():
        raise RuntimeError(f"events table {events_path} is empty; ingest some events first")
    fc = cfg.features

    users_path, items_path = tables.path(root, schema.USERS), tables.path(root, schema.ITEMS)
    users_raw = tables.read(spark, users_path) if tables.exists(spark, users_path) else None
    items_raw = tables.read(spark, items_path) if tables.exists(spark, items_path) else None

    user_ids = events.select("user_id")
    if users_raw is not None:
        user_ids = user_ids.unionByName(users_raw.select("user_id"))
    item_ids = events.select("item_id")
    if items_raw is not None:
        item_ids = item_ids.unionByName(items_raw.select("item_id"))
    user_index = extend_index(spark, user_ids, tables.path(root, schema.USER_INDEX), "user_id", "user_idx", 0)
    item_index = extend_index(spark, item_ids, tables.path(root, schema.ITEM_INDEX), "item_id", "item_idx", 1)

    attr_path = tables.path(root, schema.ATTRIBUTE_INDEX)
    # Item content: every indexed item, attributes where the items table has them.
    item_cols = [c for c in schema.ITEM_ATTRIBUTE_COLUMNS if items_raw is not None and c in items_raw.columns]
    content = item_index
    if items_raw is not None:
        content = content.join(items_raw, "item_id", "left")
    for c in schema.ITEM_ATTRIBUTE_COLUMNS:
        if c not in content.columns:
            content = content.withColumn(c, F.lit(None).cast("string"))
    for c in ("title", "price"):
        if c not in content.columns:
            content = content.withColumn(c, F.lit(None).cast("string" if c == "title" else "double"))
    user_cols = [c for c in schema.USER_ATTRIBUTE_COLUMNS if users_raw is not None and c in users_raw.columns]
    attr_source_cols = item_cols + user_cols
    if attr_source_cols:
        src = content.select(*item_cols) if item_cols else None
        if user_cols:
            u = users_raw.select(*user_cols)
            src = u if src is None else src.unionByName(u, allowMissingColumns=True)
        attr_index = extend_attribute_index(spark, src, attr_source_cols, attr_path)
    else:
        attr_index = spark.createDataFrame([], "attribute string, value string, idx long")
    content = attach_attribute_indexes(content, attr_index, list(schema.ITEM_ATTRIBUTE_COLUMNS))
    content = content.select("item_idx", "item_id", "title", "category", "brand",
                             F.col("price").cast("double").alias("price"), "category_idx", "brand_idx")
    n_categories = int(attr_index.where(F.col("attribute") == "category").agg(F.max("idx")).first()[0] or 0)

    ev = (events.join(user_index, "user_id")
          .join(item_index, "item_id")).persist()
    ref_ts = ev.agg(F.max("ts")).first()[0]

    users_df = None
    if users_raw is not None:
        u = users_raw.join(user_index, "user_id")
        for c in schema.USER_ATTRIBUTE_COLUMNS:
            if c not in u.columns:
                u = u.withColumn(c, F.lit(None).cast("string"))
        users_df = attach_attribute_indexes(u, attr_index, list(schema.USER_ATTRIBUTE_COLUMNS))

    written = {}
    out = {
        schema.ITEM_CONTENT: content,
        schema.USER_ITEM: user_item_matrix(ev, fc, ref_ts),
        schema.USER_PROFILE: profiles(ev, users_df, content, n_categories, ref_ts),
    }
    for name, df in out.items():
        loc = tables.path(root, name)
        tables.overwrite(df, loc)
        written[name] = tables.version(spark, loc)

    seqs = split(sequences(ev, fc), fc).join(user_index, "user_idx")
    seq_path = tables.path(root, schema.SEQUENCES)
    # The events version is recorded in the commit: incremental scoring reads the events' change
    # feed from the version the previous scoring run's sequences were built from.
    tables.overwrite(seqs, seq_path, metadata={"events_version": events_version})
    written[schema.SEQUENCES] = tables.version(spark, seq_path)
    ev.unpersist()

    seqs = tables.read(spark, seq_path, written[schema.SEQUENCES])
    prof = tables.read(spark, tables.path(root, schema.USER_PROFILE), written[schema.USER_PROFILE])
    max_len = fc.max_seq_len or auto_max_len(seqs)
    train = (training_windows(seqs, max_len)
             .join(prof.select("user_idx", "profile_cat", "profile_num"), "user_idx", "left")
             .repartition(fc.train_files, "user_idx").sortWithinPartitions("user_idx", "window"))
    train_path = tables.path(root, schema.TRAIN_EXAMPLES)
    tables.overwrite(train, train_path)
    written[schema.TRAIN_EXAMPLES] = tables.version(spark, train_path)
    written[schema.EVENTS] = events_version
    for name in (schema.USER_INDEX, schema.ITEM_INDEX):
        written[name] = tables.version(spark, tables.path(root, name))

    report = FeaturesReport(written, user_index.count(), item_index.count(),
                            tables.read(spark, train_path).count(), max_len)
    print(report.summary(), flush=True)
    return report
