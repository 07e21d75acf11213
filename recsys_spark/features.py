"""Features: persistent id indexes, the user-item matrix, profiles, item content, sequences, split.

Every function here is DataFrame -> DataFrame except the index helpers, which append to their
Delta table. `run` wires them and writes the gold tables.

Index contract: user ids map to dense ints from 0, item ids from 1 (0 is sequence padding),
attribute values from 1 per attribute (0 means unknown). Re-running with new ids appends new
numbers after the current maximum; an id, once numbered, keeps its number forever, and two runs
at once never give two ids one number.

A run records its table versions in gold/feature_sets as its last write; readers pin that set.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Optional

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import schema, tables
from recsys_spark.config import Config, FeaturesConfig
from recsys_spark.splits import held_out

logger = logging.getLogger(__name__)


def extend_index(spark: SparkSession, ids: DataFrame, location: str, id_col: str, idx_col: str,
                 start: int) -> DataFrame:
    """Give every new value of ids[id_col] the next free integer; return the whole index.

    New ids are numbered in sorted order after the current maximum (or from `start`), so the
    result is deterministic for the same inputs and existing numbers never change. The numbers are
    inserted with an insert-only MERGE: when another run numbered ids at the same time, Delta
    refuses the second commit and the numbering is redone after the first run's numbers.
    """
    distinct = ids.select(F.col(id_col).cast("string").alias(id_col)).where(F.col(id_col).isNotNull()).distinct()

    def number_new_ids() -> None:
        created = tables.exists(spark, location)
        if created:
            current = tables.read(spark, location)
            new = distinct.join(current.select(id_col), id_col, "left_anti")
            if new.isEmpty():  # most runs: nothing to number, no commit
                return
            top = current.agg(F.max(idx_col)).first()[0]
            offset = start if top is None else int(top) + 1
        else:
            new, offset = distinct, start
        numbered = new.orderBy(id_col).rdd.zipWithIndex().map(lambda r: (r[0][0], int(r[1]) + offset))
        new_index = spark.createDataFrame(numbered, T.StructType([
            T.StructField(id_col, T.StringType(), False), T.StructField(idx_col, T.LongType(), False)]))
        tables.insert_missing(spark, new_index, location, id_col)

    tables.retry_on_conflict(number_new_ids, f"numbering {id_col} in {location}")
    return tables.read(spark, location)


def extend_attribute_index(spark: SparkSession, df: DataFrame, columns: list[str], root: str) -> DataFrame:
    """Persistent index of categorical values: (attribute, value, idx), idx from 1 per attribute
    (one table per attribute, gold/attribute_index/<attribute>)."""
    locations = {col: tables.location(root, f"{schema.ATTRIBUTE_INDEX}/{col}") for col in columns}
    # Every (attribute, value) as one key column, from one scan of df.
    every = df.select(F.explode(F.array(*[
        F.when(F.col(col).isNotNull(), F.concat_ws("\u0001", F.lit(col), F.col(col).cast("string")))
        for col in columns])).alias("key")).where(F.col("key").isNotNull())
    keys = {col: every.where(F.col("key").startswith(col + "\u0001")) for col in columns}
    known = [tables.read(spark, loc).select("key") for loc in locations.values() if tables.exists(spark, loc)]
    # One query finds the attributes with values not numbered yet (usually none).
    unseen = every.join(functools.reduce(DataFrame.unionByName, known), "key", "left_anti") if known else every
    fresh = {r.attribute for r in unseen.select(F.split("key", "\u0001").getItem(0).alias("attribute"))
             .distinct().collect()}
    for col in columns:
        if col in fresh or not tables.exists(spark, locations[col]):
            extend_index(spark, keys[col], locations[col], "key", "idx", 1)
    return functools.reduce(DataFrame.unionByName, [
        tables.read(spark, locations[col]).select(F.lit(col).alias("attribute"),
                                                  F.split("key", "\u0001").getItem(1).alias("value"), "idx")
        for col in columns])


def attach_attribute_indexes(df: DataFrame, attr_index: DataFrame, columns: list[str]) -> DataFrame:
    """Add <col>_idx for each categorical column (0 when the value is missing or unknown)."""
    for col in columns:
        lookup = attr_index.where(F.col("attribute") == col).select(
            F.col("value").alias(col), F.col("idx").cast("int").alias(f"{col}_idx"))
        df = df.join(F.broadcast(lookup), col, "left").fillna(0, subset=[f"{col}_idx"])
    return df


def user_item_matrix(events: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """(user_idx, item_idx, weight, as_of): sum over events of type weight x 0.5 ** (age / half-life).

    Ages count back from the user's own newest event (as_of), so a user's weights change only with
    that user's events (incremental features rebuild just those users) and never depend on when the
    job runs. Weights as of a later time t are weight x 0.5 ** ((t - as_of) / half-life). Event types
    missing from event_weights weigh 0.
    """
    weights = F.create_map(*[x for k, v in cfg.event_weights.items() for x in (F.lit(k), F.lit(float(v)))])
    as_of = F.max("ts").over(Window.partitionBy("user_idx"))
    age_days = (as_of.cast("long") - F.col("ts").cast("long")) / 86400.0
    w = F.coalesce(weights[F.col("event_type")], F.lit(0.0)) * F.pow(F.lit(0.5), age_days / cfg.half_life_days)
    return (events.select("user_idx", "item_idx", w.alias("w"), as_of.alias("as_of"))
            .groupBy("user_idx", "item_idx").agg(F.sum("w").alias("weight"), F.first("as_of").alias("as_of"))
            .where(F.col("weight") > 0))


def sequences(events: DataFrame, cfg: FeaturesConfig, key: str = "user_idx") -> DataFrame:
    """Per user (the `key` column), the chronological item sequence with consecutive repeats collapsed.

    Ties on timestamp are ordered by event type (view, cart, purchase, rating), then event id.
    Output: key, items array<int>, item_ts array<timestamp> (each step's first event),
    item_bought array<boolean> (whether the step, a run of events on one item, holds a purchase).
    """
    type_order = F.create_map(*[x for i, k in enumerate(schema.EVENT_TYPES) for x in (F.lit(k), F.lit(i))])
    ev = events.where(F.col("event_type").isin(*cfg.sequence_event_types)).select(
        key, "item_idx", "ts", "event_id", F.coalesce(type_order[F.col("event_type")], F.lit(9)).alias("t_ord"),
        (F.col("event_type") == schema.PURCHASE).alias("bought"))
    grouped = ev.groupBy(key).agg(F.array_sort(F.collect_list(
        F.struct("ts", "t_ord", "event_id", F.col("item_idx").cast("int").alias("item"), "bought")
    )).alias("evs"))
    # 1-based positions of each run's first event; a run ends where the next one starts.
    starts = F.expr("filter(sequence(1, size(evs)), i -> i = 1 OR evs[i - 1].item != evs[i - 2].item)")
    steps = F.expr("transform(starts, (i, p) -> struct(evs[i - 1].item AS item, evs[i - 1].ts AS ts, "
                   "exists(slice(evs, i, coalesce(try_element_at(starts, p + 2), size(evs) + 1) - i), "
                   "e -> e.bought) AS bought))")
    return grouped.select(key, "evs", starts.alias("starts")).select(key, steps.alias("steps")).select(
        key, F.col("steps.item").alias("items"), F.col("steps.ts").alias("item_ts"),
        F.col("steps.bought").alias("item_bought"))


def split(seqs: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """Add train_items, valid_target, test_target.

    leave_last_out: users with >= 3 items get the last as test target and the one before as
    validation target; shorter histories are training only (targets null).
    time: items before time_cutoff are history; the first item at or after it is the test target,
    the last before it the validation target. A user with nothing after the cut-off, or fewer than
    2 items before it, trains on every item before it.
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
    held = (nb >= 2) & (F.size("_a") > 0)  # a validation and a test target exist
    return seqs.select("*", before.alias("_b"), after.alias("_a")).select(
        *seqs.columns,
        F.when(held, F.slice("_b", 1, nb - 1)).otherwise(F.col("_b")).alias("train_items"),
        F.when(held, F.element_at("_b", -1)).alias("valid_target"),
        F.when(held, F.element_at("_a", 1)).alias("test_target"),
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
             training_cut: DataFrame | None = None) -> DataFrame:
    """User profile: declared attributes (indexed), activity counts, last activity and category shares.

    Output columns: user_idx, <attr>_idx for each declared attribute (0 when unknown), n_<type>
    counts, n_events, n_items, last_active_day (days since 1970-01-01 of the newest event),
    active_days, category_shares array<double> of length n_categories + 1 (index = category idx,
    0 = unknown category), profile_cat array<int> (the declared attributes) and profile_num
    array<float> (log1p counts, last_active_day, shares; unscaled: the model standardises them with
    the statistics in gold/feature_stats, stored in its checkpoint). Every column depends on the
    user's own rows only, never on the run's time, so a user without new events keeps the same
    profile. Users of `users` without events get zero activity and last_active_day NaN (unknown: the
    model reads it as the training mean).

    training_cut (user_idx, cut_ts) adds train_profile_num: profile_num of the user's events before
    cut_ts (all of them without a cut_ts; profile_num when none is before it), from the same pass
    over the events.
    """
    ev = (events.join(item_content.select("item_idx", "category_idx"), "item_idx", "left")
          .fillna(0, subset=["category_idx"]))
    counted = {"": F.lit(True)}  # column prefix -> which events that profile counts
    if training_cut is not None:
        ev = ev.join(training_cut, "user_idx", "left")
        counted["train_"] = F.col("cut_ts").isNull() | (F.col("ts") < F.col("cut_ts"))
    act = ev.groupBy("user_idx").agg(*[c for p, keep in counted.items() for c in _activity(p, keep)])
    tot = Window.partitionBy("user_idx")
    by_cat = ev.groupBy("user_idx", "category_idx").agg(
        *[F.count(F.when(keep, 1)).alias(f"{p}count") for p, keep in counted.items()])
    share = lambda p: F.col(f"{p}count") / F.sum(f"{p}count").over(tot)  # noqa: E731
    by_cat = by_cat.select("user_idx", F.col("category_idx").cast("int").alias("category_idx"), *[
        F.when(F.col(f"{p}count") > 0, share(p)).otherwise(0.0).alias(f"{p}share") for p in counted])
    shares = by_cat.groupBy("user_idx").agg(*[
        F.map_from_entries(F.collect_list(F.struct("category_idx", f"{p}share"))).alias(f"{p}m") for p in counted])
    shares = shares.select("user_idx", *[F.expr(
        f"transform(sequence(0, {n_categories}), i -> coalesce({p}m[i], 0D))").alias(f"{p}category_shares")
        for p in counted])
    prof = act.join(shares, "user_idx", "left")
    attr_cols = [f"{c}_idx" for c in schema.USER_ATTRIBUTE_COLUMNS]
    if users is not None:
        prof = users.select("user_idx", *attr_cols).join(prof, "user_idx", "full")
    else:
        for c in attr_cols:
            prof = prof.withColumn(c, F.lit(0))
    zero_shares = F.array_repeat(F.lit(0.0), n_categories + 1)
    prof = (prof.fillna(0, subset=attr_cols + [f"n_{t}" for t in schema.EVENT_TYPES]
                        + ["n_events", "n_items", "active_days"])
            .withColumn("category_shares", F.coalesce("category_shares", zero_shares)))
    out = [F.array(*[F.col(c).cast("int") for c in attr_cols]).alias("profile_cat"),
           _profile_num("").alias("profile_num")]
    if training_cut is not None:
        out.append(F.when(F.col("train_n_events") > 0, _profile_num("train_"))
                   .otherwise(_profile_num("")).alias("train_profile_num"))
    extra = [f"{p}{c}" for p in counted if p for c in _ACTIVITY + ("category_shares",)]
    return prof.select("*", *out).drop(*extra)


_ACTIVITY = tuple(f"n_{t}" for t in schema.EVENT_TYPES) + ("n_events", "n_items", "last_active_day", "active_days")


def _activity(prefix: str, keep) -> list:
    """The activity aggregates (_ACTIVITY, prefixed) over a user's events where `keep` holds."""
    only = lambda c: F.when(keep, c)  # noqa: E731 (null rows are left out of every aggregate)
    return ([F.count(F.when(keep & (F.col("event_type") == t), 1)).alias(f"{prefix}n_{t}") for t in schema.EVENT_TYPES]
            + [F.count(only(F.lit(1))).alias(f"{prefix}n_events"),
               F.size(F.collect_set(only(F.col("item_idx")))).cast("long").alias(f"{prefix}n_items"),
               (F.max(only(F.col("ts"))).cast("long") / 86400.0).alias(f"{prefix}last_active_day"),
               F.size(F.collect_set(only(F.to_date("ts")))).cast("long").alias(f"{prefix}active_days")])


def _profile_num(prefix: str):
    """profile_num: log1p counts, last active day (NaN when unknown) and category shares."""
    col = lambda c: F.col(prefix + c)  # noqa: E731
    nums = [F.log1p(col(f"n_{t}").cast("double")) for t in schema.EVENT_TYPES]
    nums += [F.log1p(col("n_events")), F.log1p(col("n_items")), F.coalesce(col("last_active_day"), F.lit(float("nan"))),
             F.log1p(col("active_days"))]
    return F.concat(F.array(*nums), col("category_shares")).cast("array<float>")


def training_cut(seqs: DataFrame) -> DataFrame:
    """(user_idx, cut_ts): the time of each user's validation target. A user's profile in training
    and evaluation sees only the events before it (all events for users without held-out targets):
    profiles built from all events would leak the validation and test items into the features of
    the model under test."""
    return seqs.where(F.col("valid_target").isNotNull()).select(
        "user_idx", F.element_at("item_ts", F.size("train_items") + 1).alias("cut_ts"))


def array_stats(df: DataFrame, col: str, width: int) -> tuple[list[float], list[float]]:
    """Per-position mean and standard deviation (population; 1 where 0) of an array<float> column,
    NaN (unknown) entries left out."""
    if width == 0:
        return [], []
    rows = (df.select(F.posexplode(col).alias("i", "v")).where(~F.isnan("v")).groupBy("i")
            .agg(F.avg("v").alias("m"), F.stddev_pop("v").alias("s")).collect())
    mean, std = [0.0] * width, [1.0] * width
    for r in rows:
        if r.i < width:
            mean[r.i] = float(r.m or 0.0)
            std[r.i] = float(r.s) if r.s and r.s > 1e-9 else 1.0
    return mean, std


def item_content(spark: SparkSession, content: DataFrame, root: str, fc: FeaturesConfig) -> tuple[DataFrame, dict]:
    """Add tag_ids (persistently indexed tags), text_idx/text_tf (hashed title term counts),
    item_num (log1p price, price-missing flag) and item_vec (see catalog_width_vectors). Returns (content,
    statistics): the statistics are the title IDF (fitted on the catalog with Spark ML) and the
    item_num and item_vec means/stds."""
    from pyspark.ml.feature import IDF, HashingTF, RegexTokenizer

    content, vec_width = catalog_width_vectors(content)
    tags = F.col(schema.ITEM_TAGS_COLUMN)
    tag_arr = F.filter(F.transform(F.split(F.coalesce(tags.cast("string"), F.lit("")), r"\|"), lambda t: F.trim(t)),
                       lambda t: t != "")
    content = content.withColumn("_tags", tag_arr)
    exploded = content.select(F.explode("_tags").alias(schema.TAG_ATTRIBUTE))
    if not exploded.isEmpty():
        tag_index = extend_attribute_index(spark, exploded, [schema.TAG_ATTRIBUTE], root)
    else:
        tag_index = spark.createDataFrame([], "attribute string, value string, idx long")
    lookup = tag_index.where(F.col("attribute") == schema.TAG_ATTRIBUTE).select(
        F.col("value").alias("_tag"), F.col("idx").cast("int").alias("_tag_idx"))
    tag_ids = (content.select("item_idx", F.explode("_tags").alias("_tag")).join(F.broadcast(lookup), "_tag")
               .groupBy("item_idx").agg(F.array_sort(F.collect_set("_tag_idx")).alias("tag_ids")))
    content = (content.drop("_tags").join(tag_ids, "item_idx", "left")
               .withColumn("tag_ids", F.coalesce("tag_ids", F.array().cast("array<int>"))))

    stats: dict[str, list[float]] = {}
    if fc.text_encoder == "tfidf":
        words = RegexTokenizer(inputCol="_title", outputCol="_words", pattern=r"\W+", toLowercase=True)
        tf = HashingTF(inputCol="_words", outputCol="_tf", numFeatures=fc.text_features)
        with_tf = tf.transform(words.transform(content.withColumn("_title", F.coalesce("title", F.lit("")))))
        stats["idf"] = [float(x) for x in IDF(inputCol="_tf", outputCol="_tfidf", minDocFreq=fc.text_min_df).fit(with_tf).idf.toArray()]
        unpack = F.udf(lambda v: (v.indices.tolist(), v.values.tolist()),
                       "struct<i: array<int>, v: array<float>>")
        content = (with_tf.withColumn("_u", unpack("_tf"))
                   .select(*content.columns, F.col("_u.i").alias("text_idx"), F.col("_u.v").alias("text_tf")))
    else:
        content = (content.withColumn("text_idx", F.array().cast("array<int>"))
                   .withColumn("text_tf", F.array().cast("array<float>")))
    price = F.col("price").cast("double")
    content = content.withColumn("item_num", F.array(
        F.log1p(F.greatest(F.coalesce(price, F.lit(0.0)), F.lit(0.0))),
        F.when(price.isNull(), 1.0).otherwise(0.0)).cast("array<float>"))
    content = content.persist()
    stats["item_num_mean"], stats["item_num_std"] = array_stats(content, "item_num", 2)
    if vec_width:
        stats["item_vec_mean"], stats["item_vec_std"] = array_stats(content, "item_vec", vec_width)
    return content, stats


def catalog_width_vectors(content: DataFrame) -> tuple[DataFrame, int]:
    """(content with item_vec in place of the items' upstream vector, the vectors' width). The width
    is the catalog's most common one; a vector of another width (another encoder's) is left out, so
    its item is represented by its other content, and the log names a few such items."""
    vec = F.col(schema.ITEM_VECTOR_COLUMN)
    widths = (content.where(vec.isNotNull()).groupBy(F.size(vec).alias("width")).count()
              .orderBy(F.desc("count"), "width").collect())
    width = widths[0].width if widths else 0
    others = sum(r["count"] for r in widths[1:])
    if others:
        odd = content.where(vec.isNotNull() & (F.size(vec) != width)).select("item_id").limit(5).collect()
        logger.warning(f"features: {others} item(s) have a {schema.ITEM_VECTOR_COLUMN} of another length than the "
                       f"catalog's {width} (e.g. {', '.join(r.item_id for r in odd)}); they are represented without "
                       f"it. Send every item's vector from the same encoder.")
    return content.withColumn("item_vec", F.when(F.size(vec) == width, vec)).drop(schema.ITEM_VECTOR_COLUMN), width


def history_p80(seqs: DataFrame) -> int:
    """The 80th percentile of training history lengths (the data statistic that sizes the model's
    sequence window and, with `train.dropout: auto`, its dropout)."""
    return int(seqs.select(F.percentile_approx(F.size("train_items"), 0.8).alias("p")).first()["p"] or 0)


def auto_max_len(p80: int) -> int:
    """Sequence length from data statistics: the 80th percentile of training history lengths,
    rounded up to a multiple of 10 and kept within [50, 200] (long histories, as in MovieLens, get
    200 steps; short ones, as in Amazon reviews, get 50)."""
    return int(min(200, max(50, -(-int(p80) // 10) * 10)))


@dataclass
class FeaturesReport:
    versions: dict[str, int]
    n_users: int
    n_items: int
    n_train_rows: int
    max_seq_len: int
    mode: str
    reason: str
    users_rebuilt: int

    def summary(self) -> str:
        return (f"features ({self.mode}: {self.reason}): {self.users_rebuilt} of {self.n_users} users rebuilt, "
                f"{self.n_items} items, {self.n_train_rows} training windows of {self.max_seq_len} steps; "
                f"table versions {self.versions}")


@dataclass
class Inputs:
    """The pinned events and the optional users/items tables a features run reads."""
    events: DataFrame
    events_version: int
    users: Optional[DataFrame]
    items: Optional[DataFrame]
    side_versions: dict  # users / items table name -> version, for the tables that exist


@dataclass
class Indexes:
    user: DataFrame
    item: DataFrame
    attribute: DataFrame


def _read_inputs(spark: SparkSession, root: str) -> Inputs:
    events_path = tables.location(root, schema.EVENTS)
    tables.require(spark, events_path, "ingest")
    events_version = tables.version(spark, events_path)
    events = tables.read(spark, events_path, events_version)
    if events.isEmpty():
        raise RuntimeError(f"events table {events_path} is empty; ingest some events first")
    side, side_versions = {}, {}
    for name in (schema.USERS, schema.ITEMS):
        loc = tables.location(root, name)
        side[name] = None
        if tables.exists(spark, loc):
            side_versions[name] = tables.version(spark, loc)
            side[name] = tables.read(spark, loc, side_versions[name])
    return Inputs(events, events_version, side[schema.USERS], side[schema.ITEMS], side_versions)


def _present(df: Optional[DataFrame], columns: tuple) -> list[str]:
    return [c for c in columns if df is not None and c in df.columns]


def _indexes(spark: SparkSession, root: str, inp: Inputs, plan: Plan) -> Indexes:
    """Extend the persistent user, item and attribute-value indexes with the new values of the
    events and of the users and items tables: all their rows (full), or incrementally the events
    added since the previous run, the changed users' rows, and the items table only when an item
    row changed (other values were numbered by an earlier run)."""
    events, users, items = inp.events, inp.users, inp.items
    if plan.mode == INCREMENTAL:
        events = plan.new_events
        users = None if users is None else users.join(F.broadcast(plan.changed_ids), "user_id", "left_semi")
        items = None if items is None else items.where(F.lit(not plan.items_unchanged))
    user_ids, item_ids = events.select("user_id"), events.select("item_id")
    if users is not None:
        user_ids = user_ids.unionByName(users.select("user_id"))
    if items is not None:
        item_ids = item_ids.unionByName(items.select("item_id"))
    user_index = extend_index(spark, user_ids, tables.location(root, schema.USER_INDEX), "user_id", "user_idx", 0)
    item_index = extend_index(spark, item_ids, tables.location(root, schema.ITEM_INDEX), "item_id", "item_idx", 1)
    item_cols = _present(inp.items, schema.ITEM_ATTRIBUTE_COLUMNS)
    user_cols = _present(inp.users, schema.USER_ATTRIBUTE_COLUMNS)
    if not item_cols + user_cols:
        return Indexes(user_index, item_index, spark.createDataFrame([], "attribute string, value string, idx long"))
    src = items.select(*item_cols) if item_cols else None
    if user_cols:
        u = users.select(*user_cols)
        src = u if src is None else src.unionByName(u, allowMissingColumns=True)
    attr_index = extend_attribute_index(spark, src, item_cols + user_cols, root)
    return Indexes(user_index, item_index, attr_index)


def _content(spark: SparkSession, cfg: Config, inp: Inputs, idx: Indexes) -> tuple[DataFrame, dict]:
    """Every indexed item with its attributes where the items table has them, indexed and encoded
    (item_content); and the title IDF and item number statistics."""
    content = idx.item if inp.items is None else idx.item.join(inp.items, "item_id", "left")
    for c in schema.ITEM_ATTRIBUTE_COLUMNS + (schema.ITEM_TAGS_COLUMN, "title"):
        if c not in content.columns:
            content = content.withColumn(c, F.lit(None).cast("string"))
    for c in schema.ITEM_VALUE_COLUMNS:
        if c not in content.columns:
            content = content.withColumn(c, F.lit(None).cast("double"))
    if schema.ITEM_VECTOR_COLUMN not in content.columns:
        content = content.withColumn(schema.ITEM_VECTOR_COLUMN, F.lit(None).cast("array<float>"))
    kind = F.col(schema.ITEM_KIND_COLUMN).cast("string") if schema.ITEM_KIND_COLUMN in content.columns else F.lit(None)
    content = content.withColumn(schema.ITEM_KIND_COLUMN, F.coalesce(kind, F.lit(schema.DEFAULT_ITEM_KIND)))
    content = attach_attribute_indexes(content, idx.attribute, list(schema.ITEM_ATTRIBUTE_COLUMNS))
    content = content.select("item_idx", "item_id", "title", "category", "brand", schema.ITEM_TAGS_COLUMN,
                             *[F.col(c).cast("double").alias(c) for c in schema.ITEM_VALUE_COLUMNS],
                             schema.ITEM_KIND_COLUMN, "category_idx", "brand_idx",
                             F.col(schema.ITEM_VECTOR_COLUMN).cast("array<float>").alias(schema.ITEM_VECTOR_COLUMN))
    return item_content(spark, content, cfg.tables_root, cfg.features)


def _declared_users(inp: Inputs, idx: Indexes) -> Optional[DataFrame]:
    """The users table with user_idx and <attribute>_idx columns (None without a users table)."""
    if inp.users is None:
        return None
    u = inp.users.join(idx.user, "user_id")
    for c in schema.USER_ATTRIBUTE_COLUMNS:
        if c not in u.columns:
            u = u.withColumn(c, F.lit(None).cast("string"))
    return attach_attribute_indexes(u, idx.attribute, list(schema.USER_ATTRIBUTE_COLUMNS))


FULL, INCREMENTAL = "full", "incremental"
# The tables an incremental run merges the changed users into (the others it rewrites).
INCREMENTAL_TABLES = (schema.USER_ITEM, schema.SEQUENCES, schema.USER_PROFILE, schema.TRAIN_EXAMPLES)


@dataclass
class Plan:
    """What a run rebuilds: every user (full) or, incrementally, the users with new events since
    the feature set it builds on. Incremental: `changed_ids` (user_id), `new_events` (the events
    added since), `previous` (that set's table versions), `items_unchanged` (no item row changed:
    item content can be kept), and once the index is extended, `changed` (user_idx)."""
    mode: str
    reason: str
    changed_ids: Optional[DataFrame] = None
    new_events: Optional[DataFrame] = None
    previous: Optional[dict] = None
    items_unchanged: bool = False
    changed: Optional[DataFrame] = None

    def resolve(self, user_index: DataFrame) -> None:
        """Number the changed users (after the index took in the new ones)."""
        if self.changed_ids is not None:
            self.changed = self.changed_ids.join(user_index, "user_id").select("user_idx").persist()

    def events(self, events: DataFrame) -> DataFrame:
        """The events of the users this run rebuilds (all of them when full)."""
        return events if self.changed_ids is None else events.join(F.broadcast(self.changed_ids), "user_id", "left_semi")

    def scope(self, df: DataFrame) -> DataFrame:
        """df's rows of the users this run rebuilds."""
        return df if self.changed is None else df.join(F.broadcast(self.changed), "user_idx", "left_semi")

    def release(self) -> None:
        for df in (self.changed_ids, self.changed):
            if df is not None:
                df.unpersist()


# Raised whenever the feature tables' columns or meaning change, so that an incremental run never
# merges rows of the new layout into tables of the old one.
TABLES_LAYOUT = 2


def settings_digest(fc: FeaturesConfig) -> str:
    """A digest of the settings that shape the feature tables (all but mode) and of their layout:
    rows built under other settings cannot be mixed with new ones."""
    settings = {k: v for k, v in dataclasses.asdict(fc).items() if k != "mode"}
    settings["tables_layout"] = TABLES_LAYOUT
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def new_rows(spark: SparkSession, location: str, from_version: int, to_version: int, columns: list) -> DataFrame:
    """The rows added to a table in versions (from_version, to_version] (its change feed), with its
    own columns."""
    if to_version <= from_version:
        return spark.createDataFrame([], tables.read(spark, location).select(*columns).schema)
    return tables.changes(spark, location, from_version + 1, to_version).select(*columns)


def changed_users(spark: SparkSession, root: str, from_version: int, to_version: int) -> DataFrame:
    """user_id of every user with an event added in events versions (from_version, to_version]."""
    return new_rows(spark, tables.location(root, schema.EVENTS), from_version, to_version, ["user_id"]).distinct()


def rebuild_reason(fc: FeaturesConfig, built: dict, events_version: int) -> Optional[str]:
    """Why an incremental run must rebuild everything instead (None when it need not), from the
    metadata of the previous set's sequences commit (its events version and settings digest)."""
    if "events_version" not in built or "settings" not in built:
        return "the previous feature tables do not record their events version and settings"
    if built["settings"] != settings_digest(fc):
        return "the features settings changed since the previous run"
    if events_version < built["events_version"]:
        return f"the events version went back ({built['events_version']} -> {events_version})"
    return None


def _side_table_changes(spark: SparkSession, root: str, previous: dict, inp: Inputs
                        ) -> tuple[Optional[str], Optional[DataFrame], bool]:
    """(why everything must be rebuilt, or None; user_id of the users whose users-table row is new or
    changed; whether no item row changed). Ingest rewrites the users and items tables from full
    feeds, so their versions move every night: what counts is whether rows changed. An item that
    changed category, or a new category (every user's category shares change shape), needs a full
    rebuild; other item changes (title, price, tags) only touch item content."""
    def at(name):
        return None if previous.get(name) is None else tables.read(spark, tables.location(root, name), previous[name])

    if all(previous.get(n) == inp.side_versions.get(n) for n in (schema.USERS, schema.ITEMS)):
        return None, spark.createDataFrame([], "user_id string"), True  # the same versions: the same rows
    old_items, old_users = at(schema.ITEMS), at(schema.USERS)
    for name, old, now in ((schema.ITEMS, old_items, inp.items), (schema.USERS, old_users, inp.users)):
        if (old is None) != (now is None) or (old is not None and set(old.columns) != set(now.columns)):
            return f"the {name} table appeared, disappeared or changed columns since the previous run", None, False
    items_unchanged = True
    if old_items is not None:
        if "category" in old_items.columns:
            pairs = ("item_id", "category")
            moved = old_items.select(*pairs).exceptAll(inp.items.select(*pairs))
            grown = inp.items.select("category").join(old_items.select("category"), "category", "left_anti")
            if not moved.isEmpty() or not grown.isEmpty():
                return "an item changed or left its category, or a new category appeared", None, False
        now_items = inp.items.select(*old_items.columns)
        items_unchanged = old_items.exceptAll(now_items).isEmpty() and now_items.exceptAll(old_items).isEmpty()
    if old_users is None:
        return None, spark.createDataFrame([], "user_id string"), items_unchanged
    declared = inp.users.exceptAll(old_users.select(*inp.users.columns)).select("user_id").distinct()
    return None, declared, items_unchanged


def _plan(spark: SparkSession, cfg: Config, inp: Inputs) -> Plan:
    root = cfg.tables_root
    if cfg.features.mode == FULL:
        return Plan(FULL, "features.mode is full")
    last = tables.newest_feature_set(spark, root)
    if last is None or schema.SEQUENCES not in last.versions:
        return Plan(FULL, "no previous features run")
    previous = dict(last.versions)
    built = tables.commit_metadata(spark, tables.location(root, schema.SEQUENCES), previous[schema.SEQUENCES])
    reason = rebuild_reason(cfg.features, built, inp.events_version)
    if reason:
        return Plan(FULL, reason)
    moved = [n for n in INCREMENTAL_TABLES if tables.rows_changed_since(spark, tables.location(root, n), previous.get(n))]
    if moved:  # a run killed before recording its set: its partial writes are not the base to merge into
        return Plan(FULL, f"{', '.join(moved)} changed after the previous complete features run")
    reason, declared, items_unchanged = _side_table_changes(spark, root, previous, inp)
    if reason:
        return Plan(FULL, reason)
    since = int(built["events_version"])
    try:
        new_events = new_rows(spark, tables.location(root, schema.EVENTS), since, inp.events_version,
                              inp.events.schema.names)
        ids = new_events.select("user_id").unionByName(declared).distinct().persist()
        n = ids.count()
    except Exception as exc:  # the feed does not cover the range (enabled later, or vacuumed)
        return Plan(FULL, f"the events change feed cannot be read from version {since + 1}: {str(exc).splitlines()[0]}")
    return Plan(INCREMENTAL, f"{n} users with new events (events versions {since + 1}..{inp.events_version}) "
                             f"or changed attributes", ids, new_events, previous, items_unchanged)


class Writer:
    """Writes gold tables and records the version each write made."""

    def __init__(self, spark: SparkSession, root: str):
        self.spark, self.root, self.versions = spark, root, {}
        self._rebuilt: dict[str, DataFrame] = {}

    def write(self, name: str, df: DataFrame, metadata: Optional[dict] = None) -> DataFrame:
        """Overwrite table `name` with df; return the table as written (read back at its version)."""
        loc = tables.location(self.root, name)
        # A concurrent features run overwriting the same table makes Delta refuse one commit; it
        # is rewritten after the other's (each run's feature set pins its own versions).
        tables.retry_on_conflict(
            lambda: tables.overwrite(df, loc, metadata=metadata, deletion_vectors=name in schema.DELETION_VECTOR_TABLES),
            f"features: writing {name}")
        return self._written(name, loc)

    def put(self, name: str, df: DataFrame, plan: Plan, keys: list[str], metadata: Optional[dict] = None,
            keep_rows: bool = False) -> DataFrame:
        """Per the plan: overwrite table `name` with df, or replace just the changed users' rows
        with df's (a MERGE: the rows of those users that df lacks are deleted). keep_rows: a later
        step reads those rows (`rebuilt`), from memory rather than from the whole table."""
        if plan.mode == FULL:
            return self.write(name, df, metadata)
        loc = tables.location(self.root, name)
        if keep_rows:
            self._rebuilt[name] = df = df.persist()
        tables.retry_on_conflict(
            lambda: tables.replace_groups(self.spark, df, loc, "user_idx", keys, plan.changed, metadata),
            f"features: merging the changed users into {name}")
        return self._written(name, loc)

    def rebuilt(self, name: str, written: DataFrame, plan: Plan) -> DataFrame:
        """The rows of the plan's users in table `name` as written (`written`, the whole table)."""
        return self._rebuilt[name] if plan.mode == INCREMENTAL and name in self._rebuilt else plan.scope(written)

    def release(self) -> None:
        for df in self._rebuilt.values():
            df.unpersist()

    def keep(self, name: str, version: int) -> DataFrame:
        """Table `name` as the previous run wrote it (its version is recorded again)."""
        self.versions[name] = version
        return tables.read(self.spark, tables.location(self.root, name), version)

    def _written(self, name: str, loc: str) -> DataFrame:
        self.versions[name] = tables.version(self.spark, loc)
        return tables.read(self.spark, loc, self.versions[name])


def _feature_stats(spark: SparkSession, content_stats: dict, prof: DataFrame, seqs: DataFrame,
                   fc: FeaturesConfig) -> tuple[DataFrame, int]:
    """gold/feature_stats rows (content statistics, the training profiles' moments, the history
    length p80) and that p80."""
    stats = dict(content_stats)
    n_num = prof.select(F.max(F.size("profile_num"))).first()[0] or 0
    training_users = prof.join(seqs.where(~held_out("user_id", fc.holdout_users, fc.holdout_seed))
                               .select("user_idx"), "user_idx", "left_semi")
    stats["profile_num_mean"], stats["profile_num_std"] = array_stats(training_users, "train_profile_num", n_num)
    p80 = history_p80(seqs)
    stats["history_len_p80"] = [float(p80)]
    return spark.createDataFrame(sorted(stats.items()), "name string, values array<double>"), p80


def _training_examples(seqs: DataFrame, prof: DataFrame, content: DataFrame, fc: FeaturesConfig,
                       max_len: int) -> DataFrame:
    """Training windows with the training profile, in features.train_files files. Cold-start
    evaluation: held-out users are not trained on; held-out items are cut out of the training
    sequences (they keep their content, so the model can still score them)."""
    train_seqs = seqs.where(~held_out("user_id", fc.holdout_users, fc.holdout_seed))
    if fc.holdout_items > 0:
        cold = (content.where(held_out("item_id", fc.holdout_items, fc.holdout_seed))
                .agg(F.collect_list(F.col("item_idx").cast("int")).alias("c")))
        train_seqs = (train_seqs.crossJoin(F.broadcast(cold))
                      .withColumn("train_items", F.filter("train_items", lambda x: ~F.array_contains("c", x))).drop("c"))
    return (training_windows(train_seqs, max_len)
            .join(prof.select("user_idx", "profile_cat", F.col("train_profile_num").alias("profile_num")),
                  "user_idx", "left")
            .repartition(fc.train_files, "user_idx").sortWithinPartitions("user_idx", "window"))


def _put_training_examples(spark: SparkSession, out: Writer, plan: Plan, seqs: DataFrame, prof: DataFrame,
                           content: DataFrame, fc: FeaturesConfig, max_len: int) -> DataFrame:
    """Training examples of the plan's users, or of every user when the window length moved (the
    data-sized one, max_seq_len 0) since the previous run, as every window then changes."""
    if plan.mode == INCREMENTAL:
        built = tables.commit_metadata(spark, tables.location(out.root, schema.TRAIN_EXAMPLES),
                                       plan.previous[schema.TRAIN_EXAMPLES]).get("max_len")
        if built != max_len:
            plan = Plan(FULL, f"the training window length moved ({built} -> {max_len})")
            logger.info(f"features: rebuilding every training example: {plan.reason}")
    return out.put(schema.TRAIN_EXAMPLES, _training_examples(plan.scope(seqs), plan.scope(prof), content, fc, max_len),
                   plan, ["user_idx", "window"], metadata={"max_len": max_len})


def _item_content(spark: SparkSession, cfg: Config, inp: Inputs, idx: Indexes, plan: Plan,
                  out: Writer) -> tuple[DataFrame, dict]:
    """(item content as written, its statistics): rebuilt, or kept from the previous run when no
    item row changed and no item was numbered since (an incremental run's usual case)."""
    previous = plan.previous or {}
    loc = tables.location(cfg.tables_root, schema.ITEM_INDEX)
    if (plan.mode == INCREMENTAL and plan.items_unchanged and schema.ITEM_CONTENT in previous
            and previous.get(schema.ITEM_INDEX) == tables.version(spark, loc)):
        stats = read_stats(spark, tables.location(cfg.tables_root, schema.FEATURE_STATS), previous[schema.FEATURE_STATS])
        return out.keep(schema.ITEM_CONTENT, previous[schema.ITEM_CONTENT]), {
            k: v for k, v in stats.items() if k in schema.ITEM_STATISTICS}
    content, stats = _content(spark, cfg, inp, idx)
    written = out.write(schema.ITEM_CONTENT, content)
    content.unpersist()
    return written, stats


def run(spark: SparkSession, cfg: Config) -> FeaturesReport:
    """plan (every user, or those with new events) -> indexes -> item content -> user-item matrix ->
    sequences and split -> profiles -> feature statistics -> training examples, each a gold table."""
    root, fc = cfg.tables_root, cfg.features
    run_id = "features-" + uuid.uuid4().hex[:12]
    inp = _read_inputs(spark, root)
    plan = _plan(spark, cfg, inp)
    logger.info(f"features: {plan.mode} ({plan.reason})")
    idx = _indexes(spark, root, inp, plan)
    plan.resolve(idx.user)
    out = Writer(spark, root)
    content, content_stats = _item_content(spark, cfg, inp, idx, plan, out)
    n_categories = int(idx.attribute.where(F.col("attribute") == "category").agg(F.max("idx")).first()[0] or 0)
    ev = plan.events(inp.events).join(idx.user, "user_id").join(idx.item, "item_id").persist()
    users = _declared_users(inp, idx)
    users = None if users is None else plan.scope(users)
    out.put(schema.USER_ITEM, user_item_matrix(ev, fc), plan, ["user_idx", "item_idx"])
    # The sequences commit records the events version and settings the tables were built from:
    # incremental scoring and the next incremental features run read the change feed from there.
    seqs = out.put(schema.SEQUENCES, split(sequences(ev, fc), fc).join(idx.user, "user_idx"), plan, ["user_idx"],
                   metadata={"events_version": inp.events_version, "settings": settings_digest(fc)}, keep_rows=True)
    # Serving profiles from every event; training ones from the events before the held-out targets.
    prof = out.put(schema.USER_PROFILE, profiles(ev, users, content, n_categories,
                                                 training_cut(out.rebuilt(schema.SEQUENCES, seqs, plan))),
                   plan, ["user_idx"])
    ev.unpersist()
    stats, p80 = _feature_stats(spark, content_stats, prof, seqs, fc)
    out.write(schema.FEATURE_STATS, stats)
    max_len = fc.max_seq_len or auto_max_len(p80)
    train = _put_training_examples(spark, out, plan, seqs, prof, content, fc, max_len)
    written = {**out.versions, **inp.side_versions, schema.EVENTS: inp.events_version}
    for name in (schema.USER_INDEX, schema.ITEM_INDEX):
        written[name] = tables.version(spark, tables.location(root, name))
    tables.record_feature_set(spark, root, run_id, written)
    n_users = idx.user.count()
    rebuilt = plan.changed.count() if plan.changed is not None else n_users
    report = FeaturesReport(written, n_users, idx.item.count(), train.count(), max_len, plan.mode,
                            plan.reason, rebuilt)
    plan.release()
    out.release()
    logger.info(report.summary())
    return report


def item_feature_arrays(content: DataFrame, n_rows: int | None = None) -> dict:
    """The model's item features (recsys_spark.model.ITEM_FEATURES) as numpy arrays indexed by
    item_idx, from the item_content table; rows without an item (padding row 0, gaps) are zeros.
    has_id is all True here (the model's own mask says which ids were trained)."""
    import numpy as np

    from recsys_spark.model import pad_right

    has_vec = "item_vec" in content.columns  # item content written before item vectors existed has none
    rows = content.select("item_idx", "category_idx", "brand_idx", "tag_ids", "text_idx", "text_tf", "item_num",
                          F.col("item_vec") if has_vec else F.lit(None).cast("array<float>").alias("item_vec")).collect()
    n = max([r.item_idx for r in rows] + [0]) + 1 if n_rows is None else n_rows
    rows = [r for r in rows if r.item_idx < n]
    at = np.array([r.item_idx for r in rows], dtype=np.int64)

    def spread(values, width=None, dtype=np.int64):
        dense = pad_right(values, width, dtype)
        out = np.zeros((n, dense.shape[1]), dtype=dtype)
        out[at] = dense
        return out

    cat = np.zeros(n, dtype=np.int64)
    brand = np.zeros(n, dtype=np.int64)
    cat[at] = [int(r.category_idx or 0) for r in rows]
    brand[at] = [int(r.brand_idx or 0) for r in rows]
    n_num = max([len(r.item_num or []) for r in rows] + [0])
    n_vec = max([len(r.item_vec or []) for r in rows] + [0])
    vec = np.full((n, n_vec), np.nan, dtype=np.float32)  # NaN: no vector (the model reads it as the mean)
    for r in rows:
        if r.item_vec:
            vec[r.item_idx] = r.item_vec
    return {
        "category": cat, "brand": brand,
        "tags": spread([r.tag_ids for r in rows]),
        "text_idx": spread([r.text_idx for r in rows]),
        "text_tf": spread([r.text_tf for r in rows], dtype=np.float32),
        "num": spread([r.item_num for r in rows], n_num, np.float32) if n_num else np.zeros((n, 0), np.float32),
        "vec": vec,
        "has_id": np.ones(n, dtype=bool),
    }


def read_stats(spark: SparkSession, location: str, at_version: int | None = None) -> dict:
    """gold/feature_stats as {name: list of floats} (empty when the table does not exist)."""
    if not tables.exists(spark, location):
        return {}
    return {r.name: list(r["values"]) for r in tables.read(spark, location, at_version).collect()}
