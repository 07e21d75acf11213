"""Scoring: every user's top-K over the whole catalog, on executors, with business rules and
explanations; full or incremental.

How a run works
- The driver loads the checkpoint once, computes the item vectors once and ships them with the
  item ids, the eligibility mask and the item categories to the executors as one broadcast.
- Executors compute user vectors per partition (the attention encoder over each user's history and
  profile; the model is loaded once per Python worker), then top-K by blocked matmul + torch.topk
  (recsys_spark.topk) with seen and ineligible items masked and ties broken by item id, on the GPU
  when the executor has one. Each recommended item carries up to score.explain history items of that
  user, the most similar to it in the model's item space.
- Output goes to gold/recommendations, partitioned by run_date (a rerun of a date replaces it), and
  to gold/recommendations_latest; every run appends what produced it to gold/score_runs.
- Incremental mode rescored only users with new events since the last successful run (read from the
  events table's Change Data Feed) and copies the other users' rows from that run's partition.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Iterator, Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark import schema, tables
from recsys_spark.config import Config

TOPK_SCHEMA = "user_idx long, rank int, item_idx long, score double"
REC_ROWS_SCHEMA = ("user_id string, rank int, item_id string, score float, because_item_ids array<string>, "
                   "served_by string")
# How a user's list was made (the served_by column): the model over the user's history (and
# profile); the model's profile path alone (no history yet); popularity among users with the same
# declared attributes; global popularity (the model has nothing for this user).
SERVED_HISTORY, SERVED_PROFILE, SERVED_SEGMENT, SERVED_POPULAR = "history", "profile", "segment_popularity", "popularity"
FALLBACK_DEPTH = 200


@dataclass(frozen=True)
class ScoringSpec:
    """Everything an executor needs, as plain picklable values (the catalog travels by broadcast)."""
    k: int
    ckpt_path: Optional[str] = None  # None: user vectors come from `vector_col`
    vector_col: Optional[str] = None
    batch_users: int = 1024
    max_per_category: int = 0
    mmr_lambda: float = 0.0
    explain: int = 0
    device: str = "auto"
    block_mb: float = 8.0
    new_item_slots: int = 0
    with_ids: bool = False  # output REC_ROWS_SCHEMA (ids, explanations) instead of TOPK_SCHEMA


def item_catalog(item_vectors: np.ndarray, item_ids: Optional[np.ndarray] = None,
                 ineligible: Optional[np.ndarray] = None, categories: Optional[np.ndarray] = None,
                 popular: Optional[np.ndarray] = None, segments: Optional[dict] = None,
                 fresh: Optional[np.ndarray] = None) -> dict:
    """The item side of scoring, computed once per run: vectors (n, d) float32 (row 0 = padding),
    ids (n,) str, ineligible (n,) bool, categories (n,) int; for users the model cannot serve,
    popular (item indexes, most popular first) and segments {declared attributes as "a,b,c": item
    indexes, most popular first}."""
    n = item_vectors.shape[0]
    inel = np.zeros(n, dtype=bool) if ineligible is None else np.asarray(ineligible, dtype=bool)
    if inel.shape != (n,):
        raise ValueError(f"ineligible must have shape ({n},), got {inel.shape}")
    return {
        "vectors": np.ascontiguousarray(item_vectors, dtype=np.float32),
        "ids": np.asarray(item_ids if item_ids is not None else [str(i) for i in range(n)], dtype=object),
        "ineligible": inel,
        "categories": np.zeros(n, dtype=np.int64) if categories is None else np.asarray(categories, dtype=np.int64),
        "popular": np.zeros(0, dtype=np.int64) if popular is None else np.asarray(popular, dtype=np.int64),
        "segments": segments or {},
        "fresh": np.zeros(n, dtype=bool) if fresh is None else np.asarray(fresh, dtype=bool),
    }


def segment_key(profile_cat) -> str:
    return ",".join(str(int(x)) for x in profile_cat)


def _fallback_list(cat: dict, profile_cat, seen: np.ndarray, ineligible: np.ndarray, k: int) -> tuple[list, str]:
    """Top-k by segment popularity (or global popularity) with seen and ineligible items removed."""
    key = segment_key(profile_cat) if profile_cat is not None else ""
    ranked, how = (cat["segments"][key], SERVED_SEGMENT) if key in cat["segments"] else (cat["popular"], SERVED_POPULAR)
    from recsys_spark.topk import first_unseen

    row = first_unseen(ranked, [seen], k, ineligible)[0]
    return [int(i) for i in row if i >= 0], how


@functools.lru_cache(maxsize=2)
def _cached_model(path: str):
    from recsys_spark.train import load_checkpoint

    model, _ = load_checkpoint(path)
    return model


def _item_tensors(catalog: dict, device: str):
    """Item tensors on the scoring device. On CPU they share memory with the broadcast arrays; a GPU
    copy is made once per Python worker and kept in the catalog dict (which the worker caches)."""
    import torch

    key = f"_tensors_{device}"
    if key not in catalog:
        catalog[key] = (torch.as_tensor(catalog["vectors"], device=device),
                        torch.as_tensor(catalog["ineligible"], device=device))
    return catalog[key]


def _pick_device(name: str) -> str:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("score.device is 'cuda' but this executor has no CUDA device; use 'auto' or 'cpu'")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _score_partition(batches: Iterator[pd.DataFrame], spec: ScoringSpec, catalog_bc) -> Iterator[pd.DataFrame]:
    import torch

    from recsys_spark.model import pad_left, pad_right
    from recsys_spark.topk import explain, recommend, reserve_fresh

    torch.set_num_threads(1)  # Spark runs one task per core
    device = _pick_device(spec.device)
    cat = catalog_bc.value
    items, ineligible = _item_tensors(cat, device)
    n_items = items.shape[0]
    model = _cached_model(spec.ckpt_path).to(device) if spec.ckpt_path else None
    with torch.no_grad():
        for pdf in batches:
            for lo in range(0, len(pdf), spec.batch_users):
                part = pdf.iloc[lo: lo + spec.batch_users]
                seen = [np.asarray(s if s is not None else (), dtype=np.int64) for s in part["seen"]]
                if model is None:
                    users = torch.as_tensor(np.stack([np.asarray(v, dtype=np.float32) for v in part[spec.vector_col]]))
                    history = seen
                else:
                    # History items outside the catalog (deleted since) cannot be encoded: left out.
                    history = [h[(h > 0) & (h < n_items)] for h in (np.asarray(x if x is not None else (), dtype=np.int64)
                                                                    for x in part["input"])]
                    seq = pad_left(history, model.cfg.max_len)
                    # Columns that are padding for every user change nothing (padding is masked from
                    # attention): drop them, so short histories cost less to encode.
                    used = np.flatnonzero((seq != 0).any(0))
                    seq = torch.as_tensor(seq[:, min(used[0], seq.shape[1] - 1) if len(used) else -1:], device=device)
                    pc = pn = None
                    if model.use_profile and "profile_cat" in part:
                        pc = torch.as_tensor(pad_right(list(part["profile_cat"]), len(model.cfg.attr_cardinalities)),
                                             device=device)
                    if model.use_behaviour and "profile_num" in part:
                        n_num = model.cfg.n_profile_num
                        pn = torch.as_tensor(np.stack([np.asarray(x if x is not None and len(x) == n_num else np.zeros(n_num))
                                                       for x in part["profile_num"]]), dtype=torch.float32, device=device)
                    users = model.user_vectors(seq, pc, pn, items)
                    history = [h[-model.cfg.max_len:] for h in history]
                top, scores = recommend(users.to(device), items, seen, spec.k, ineligible=ineligible,
                                        categories=cat["categories"], max_per_category=spec.max_per_category,
                                        mmr_lambda=spec.mmr_lambda, budget_mb=spec.block_mb)
                if spec.new_item_slots:
                    top, scores = reserve_fresh(top, scores, users.to(device), items, seen,
                                                torch.as_tensor(cat["fresh"]), spec.new_item_slots,
                                                ineligible=ineligible, budget_mb=spec.block_mb)
                if not spec.with_ids:
                    yield _to_rows(part["user_idx"].to_numpy(), top, scores)
                    continue
                because = explain(top, history, items, spec.explain) if spec.explain else None
                served = np.array([SERVED_HISTORY if len(h) else SERVED_PROFILE for h in history], dtype=object)
                if model is not None:
                    # No history and no profile path (or nothing declared): the model has nothing.
                    pcs = list(part["profile_cat"]) if "profile_cat" in part else [None] * len(part)
                    for i, h in enumerate(history):
                        known = pcs[i] is not None and any(int(x) > 0 for x in pcs[i])
                        if len(h) == 0 and not (model.use_profile and known):
                            ranked, served[i] = _fallback_list(cat, pcs[i], seen[i], cat["ineligible"], spec.k)
                            top[i] = -1
                            top[i, :len(ranked)] = ranked
                            scores[i] = 0.0
                yield _to_id_rows(part["user_id"].to_numpy(), top, scores, cat["ids"], because, served)


def _to_rows(user_idx: np.ndarray, top: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    k = top.shape[1]
    ok = (top >= 0).ravel()
    return pd.DataFrame({
        "user_idx": np.repeat(user_idx, k)[ok],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(user_idx))[ok],
        "item_idx": top.ravel()[ok],
        "score": scores.ravel()[ok],
    })


def _to_id_rows(user_id: np.ndarray, top: np.ndarray, scores: np.ndarray, ids: np.ndarray,
                because: Optional[list], served: Optional[np.ndarray] = None) -> pd.DataFrame:
    k = top.shape[1]
    ok = (top >= 0).ravel()
    flat = top.ravel()[ok]
    if because is None:
        expl = [[] for _ in range(len(flat))]
    else:
        expl = [[ids[i] for i in b] for row in because for b in row]
        expl = [e for e, keep in zip(expl, ok) if keep]
    return pd.DataFrame({
        "user_id": np.repeat(user_id, k)[ok],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(user_id))[ok],
        "item_id": ids[flat],
        "score": scores.ravel()[ok].astype(np.float32),
        "because_item_ids": expl,
        "served_by": (np.repeat(served, k)[ok] if served is not None
                      else np.full(int(ok.sum()), SERVED_HISTORY, dtype=object)),
    })


def score_users(users: DataFrame, spec: ScoringSpec, catalog_bc) -> DataFrame:
    """Top-K per user on the executors.

    users needs user_idx (or user_id when spec.with_ids), seen (array<int> of items never to
    recommend) and either input + profile_cat + profile_num (model path) or spec.vector_col.
    Returns TOPK_SCHEMA rows, or REC_ROWS_SCHEMA rows when spec.with_ids.
    """
    out = REC_ROWS_SCHEMA if spec.with_ids else TOPK_SCHEMA
    return users.mapInPandas(lambda it: _score_partition(it, spec, catalog_bc), out)


def attention_topk(users: DataFrame, ckpt_path: str, k: int, batch_users: int = 1024) -> DataFrame:
    """Evaluation path: plain top-K (no business rules) of the checkpoint's model, TOPK_SCHEMA.
    users: user_idx, input array<int> (history), seen array<int>, profile_cat, profile_num."""
    model = _cached_model(ckpt_path)
    catalog = item_catalog(model.item_vectors().detach().numpy())
    bc = users.sparkSession.sparkContext.broadcast(catalog)
    return score_users(users, ScoringSpec(k=k, ckpt_path=ckpt_path, batch_users=batch_users, device="cpu"), bc)


def _popularity_topk(batches: Iterator[pd.DataFrame], popularity: np.ndarray, k: int) -> Iterator[pd.DataFrame]:
    import torch

    from recsys_spark.topk import topk_excluding

    # Break ties by item id inside the score itself: counts are integers, the bonus is < 1.
    n = len(popularity)
    item_vecs = torch.as_tensor(popularity + (n - np.arange(n)) / (n + 1.0), dtype=torch.float64).unsqueeze(1)
    for pdf in batches:
        users = torch.ones(len(pdf), 1, dtype=torch.float64)
        top, scores = topk_excluding(users, item_vecs, list(pdf["seen"]), k)
        yield _to_rows(pdf["user_idx"].to_numpy(), top, np.floor(scores))


def popularity_topk(users: DataFrame, popularity: np.ndarray, k: int) -> DataFrame:
    """users: user_idx, seen. popularity[i] = interaction count of item i (index 0 unused)."""
    return users.select("user_idx", "seen").mapInPandas(lambda it: _popularity_topk(it, popularity, k), TOPK_SCHEMA)


def scoring_input(spark: SparkSession, cfg: Config, history_col: str, versions: Optional[dict] = None) -> DataFrame:
    """Every known user -- with events, or only a profile (a new user) -- with their history
    (input = seen = history_col, empty without events) and serving profile, at pinned versions."""
    root = cfg.tables_dir
    v = versions or {}
    seqs = tables.read(spark, tables.path(root, schema.SEQUENCES), v.get(schema.SEQUENCES))
    prof = tables.read(spark, tables.path(root, schema.USER_PROFILE), v.get(schema.USER_PROFILE))
    index = tables.read(spark, tables.path(root, schema.USER_INDEX), v.get(schema.USER_INDEX))
    hist = F.coalesce(F.col(history_col), F.array().cast("array<int>"))
    return (prof.select("user_idx", "profile_cat", "profile_num").join(index, "user_idx")
            .join(seqs.select("user_idx", history_col), "user_idx", "left")
            .select("user_idx", "user_id", hist.alias("input"), hist.alias("seen"), "profile_cat", "profile_num"))


def fallback_lists(users: DataFrame, depth: int = FALLBACK_DEPTH, min_users: int = 20) -> tuple[np.ndarray, dict]:
    """(global, {segment: items}) popularity rankings, most popular first (ties by item index), from
    users' histories (user_idx, input, profile_cat). A segment (one combination of declared
    attributes) needs min_users users with history, else its users get the global list."""
    w = Window.partitionBy("seg").orderBy(F.desc("n"), "item")
    seg = F.concat_ws(",", F.transform("profile_cat", lambda x: x.cast("string")))
    ex = users.where(F.size("input") > 0).select(seg.alias("seg"), "user_idx", F.explode("input").alias("item"))
    sizes = ex.groupBy("seg").agg(F.countDistinct("user_idx").alias("u")).where(F.col("u") >= min_users)
    counts = ex.groupBy("seg", "item").agg(F.countDistinct("user_idx").alias("n"))
    top = (counts.join(sizes, "seg", "left_semi").withColumn("r", F.row_number().over(w)).where(F.col("r") <= depth)
           .groupBy("seg").agg(F.array_sort(F.collect_list(F.struct("r", "item"))).alias("l")).collect())
    segments = {r.seg: np.array([x.item for x in r.l], dtype=np.int64) for r in top}
    glob = (ex.groupBy("item").agg(F.countDistinct("user_idx").alias("n")).orderBy(F.desc("n"), "item")
            .limit(depth).collect())
    return np.array([r.item for r in glob], dtype=np.int64), segments


# ------------------------------------------------------------------------------------------------
# The nightly scoring run


def _ineligible_mask(spark: SparkSession, location: str, version: int, item_index: DataFrame, n_items: int) -> np.ndarray:
    elig = tables.read(spark, location, version)
    missing = {"item_id", "eligible"} - set(elig.columns)
    if missing:
        raise ValueError(f"eligibility table {location} lacks column(s) {sorted(missing)}: it needs "
                         f"item_id (string) and eligible (boolean), one row per item to include or exclude")
    blocked = (elig.where(~F.coalesce(F.col("eligible").cast("boolean"), F.lit(False)))
               .select(F.col("item_id").cast("string").alias("item_id")).distinct()
               .join(item_index, "item_id").select("item_idx").collect())
    mask = np.zeros(n_items, dtype=bool)
    for r in blocked:
        if r.item_idx < n_items:
            mask[r.item_idx] = True
    return mask


def _last_run(spark: SparkSession, root: str) -> Optional[dict]:
    loc = tables.path(root, schema.SCORE_RUNS)
    if not tables.exists(spark, loc):
        return None
    row = tables.read(spark, loc).orderBy(F.desc("finished_at")).first()
    return row.asDict() if row else None


def _changed_users(spark: SparkSession, root: str, from_version: int, to_version: int) -> DataFrame:
    """user_id of every user with an event added in events versions (from_version, to_version]."""
    loc = tables.path(root, schema.EVENTS)
    if to_version <= from_version:
        return spark.createDataFrame([], "user_id string")
    return tables.changes(spark, loc, from_version + 1, to_version).select("user_id").distinct()


def _choose_mode(cfg: Config, last: Optional[dict], model_run_id: str, rules: str,
                 eligibility_version: Optional[int], events_version: Optional[int]) -> tuple[str, str]:
    if cfg.score.mode == "full":
        return "full", "score.mode is full"
    if last is None:
        return "full", "no previous scoring run"
    if events_version is None:
        return "full", "the sequences table does not record its events version (re-run features)"
    for what, now, before in (("model", model_run_id, last["model_run_id"]), ("rules", rules, last["rules"]),
                              ("eligibility table version", eligibility_version, last["eligibility_version"])):
        if now != before:
            return "full", f"the {what} changed since the last run ({before} -> {now})"
    if last["events_version"] < 0:
        return "full", "the last run does not record its events version"
    if events_version < last["events_version"]:
        return "full", "the events version went back since the last run"
    return "incremental", f"same model and rules; events {last['events_version']} -> {events_version}"


def run(spark: SparkSession, cfg: Config) -> dict:
    """Score users with the latest (or configured) checkpoint into the recommendations table."""
    from recsys_spark.train import latest_checkpoint, load_checkpoint

    t0 = time.time()
    root, sc = cfg.tables_dir, cfg.score
    ckpt_path = latest_checkpoint(cfg.models_dir, sc.model_run_id)
    model, ckpt = load_checkpoint(ckpt_path)
    run_id = ckpt["run_id"]
    run_date = date.fromisoformat(sc.run_date) if sc.run_date else datetime.now(timezone.utc).date()
    for name in (schema.SEQUENCES, schema.USER_PROFILE, schema.ITEM_INDEX, schema.ITEM_CONTENT):
        tables.require(spark, tables.path(root, name), "features")
    versions = {name: tables.version(spark, tables.path(root, name))
                for name in (schema.SEQUENCES, schema.USER_PROFILE, schema.ITEM_INDEX, schema.ITEM_CONTENT,
                             schema.USER_INDEX)}
    events_version = tables.commit_metadata(spark, tables.path(root, schema.SEQUENCES),
                                            versions[schema.SEQUENCES]).get("events_version")

    # The item side, once per run: the current catalog, including items newer than the model
    # (scored through their content) -- their vectors come from the checkpoint's own encoders.
    import torch

    from recsys_spark.features import item_feature_arrays

    item_index = tables.read(spark, tables.path(root, schema.ITEM_INDEX), versions[schema.ITEM_INDEX])
    content = tables.read(spark, tables.path(root, schema.ITEM_CONTENT), versions[schema.ITEM_CONTENT])
    rows = content.select("item_idx", "item_id", "category_idx").collect()
    n_items = max([model.cfg.n_items] + [r.item_idx + 1 for r in rows])
    ids = np.array([""] * n_items, dtype=object)
    categories = np.zeros(n_items, dtype=np.int64)
    for r in rows:
        ids[r.item_idx], categories[r.item_idx] = r.item_id, int(r.category_idx or 0)
    feats = {k: torch.as_tensor(v) for k, v in item_feature_arrays(content, n_items).items()}
    with torch.no_grad():
        vectors = model.item_vectors(feats).numpy()
    elig_loc = tables.locate(root, sc.eligibility) if sc.eligibility else ""
    elig_version = None
    ineligible = np.zeros(n_items, dtype=bool)
    if elig_loc:
        tables.require(spark, elig_loc, "an upstream job that maintains item eligibility (score.eligibility)")
        elig_version = tables.version(spark, elig_loc)
        ineligible = _ineligible_mask(spark, elig_loc, elig_version, item_index, n_items)
    ineligible |= ids == ""  # an index row the model knows but the catalog lost
    users = scoring_input(spark, cfg, "items", versions).persist()
    popular, segments = fallback_lists(users)
    # Fresh items (no interactions the model was trained on): new since training, or never touched.
    fresh = np.zeros(n_items, dtype=bool)
    fresh[model.cfg.n_items:] = True
    fresh[:model.cfg.n_items] = ~model.feat_has_id.numpy()
    fresh[0] = False
    fresh &= ids != ""
    catalog = item_catalog(vectors, ids, ineligible, categories, popular, segments, fresh)
    bc = spark.sparkContext.broadcast(catalog)
    rules = json.dumps({"k": sc.k, "max_per_category": sc.max_per_category, "mmr_lambda": sc.mmr_lambda,
                        "explain": sc.explain, **({"new_item_slots": sc.new_item_slots} if sc.new_item_slots else {})},
                       sort_keys=True)

    last = _last_run(spark, root)
    mode, reason = _choose_mode(cfg, last, run_id, rules, elig_version, events_version)
    loc = tables.path(root, schema.RECOMMENDATIONS)
    carried = None
    if mode == "incremental":
        try:
            changed = _changed_users(spark, root, last["events_version"], events_version).persist()
            changed.count()
        except Exception as exc:  # the feed does not cover the range (e.g. enabled later, or vacuumed)
            mode, reason = "full", f"the events change feed cannot be read from version {last['events_version'] + 1}: {str(exc).splitlines()[0]}"
        else:
            previous = (tables.read(spark, loc, last["recommendations_version"])
                        .where(F.col("run_date") == F.lit(last["run_date"])))
            if "served_by" not in previous.columns:  # written before the column existed
                previous = previous.withColumn("served_by", F.lit(SERVED_HISTORY))
            # Rescore users with new events and users the last run did not serve (new profiles).
            unserved = users.select("user_id").join(previous.select("user_id"), "user_id", "left_anti")
            rescore = changed.unionByName(unserved).distinct()
            users = users.join(rescore, "user_id", "left_semi")
            carried = previous.join(rescore, "user_id", "left_anti").drop("model_run_id", "run_date")
    spec = ScoringSpec(k=sc.k, ckpt_path=ckpt_path, batch_users=sc.batch_users, max_per_category=sc.max_per_category,
                       mmr_lambda=sc.mmr_lambda, explain=sc.explain, device=sc.device, block_mb=sc.block_mb,
                       new_item_slots=sc.new_item_slots, with_ids=True)
    scored = score_users(users, spec, bc)
    if carried is not None:
        scored = scored.withColumn("_scored", F.lit(True)).unionByName(carried.withColumn("_scored", F.lit(False)))
    else:
        scored = scored.withColumn("_scored", F.lit(True))
    # Column order and types of RECOMMENDATIONS_SCHEMA (arrays keep Spark's nullable element flag).
    out = scored.select(*[F.col(f.name) if f.name == "because_item_ids" else F.col(f.name).cast(f.dataType).alias(f.name)
                          for f in schema.RECOMMENDATIONS_SCHEMA.fields if f.name not in ("model_run_id", "run_date")],
                        F.lit(run_id).alias("model_run_id"), F.lit(run_date).alias("run_date"), "_scored")
    # Materialise once: the partition is written from it and its counts come from it.
    staged = out.persist()
    stats = staged.groupBy("_scored").agg(F.count("*").alias("rows"), F.countDistinct("user_id").alias("users")).collect()
    by = {r["_scored"]: (r["rows"], r["users"]) for r in stats}
    served = {r["served_by"]: r["users"] for r in
              staged.groupBy("served_by").agg(F.countDistinct("user_id").alias("users")).collect()}
    final = staged.drop("_scored")
    meta = {"model_run_id": run_id, "mode": mode, "events_version": events_version,
            "versions": versions, "eligibility_version": elig_version}
    if tables.exists(spark, loc):
        tables.replace_partition(final, loc, f"run_date = '{run_date.isoformat()}'", ["run_date"], metadata=meta)
    else:
        tables.overwrite(final, loc, partition_by=["run_date"], metadata=meta)
    version = tables.version(spark, loc)
    if sc.write_latest:
        tables.overwrite(tables.read(spark, loc, version).where(F.col("run_date") == F.lit(run_date)),
                         tables.path(root, schema.RECOMMENDATIONS_LATEST), metadata=meta)
    staged.unpersist()
    users.unpersist()
    n_scored, n_carried = by.get(True, (0, 0))[1], by.get(False, (0, 0))[1]
    n_rows = sum(r for r, _ in by.values())
    elapsed = time.time() - t0
    run_row = (run_date, run_id, mode, reason, rules, int(events_version if events_version is not None else -1),
               versions[schema.SEQUENCES], versions[schema.USER_PROFILE], elig_version, version,
               int(n_scored), int(n_carried), int(n_rows), float(elapsed),
               datetime.now(timezone.utc).replace(tzinfo=None))
    tables.append(spark.createDataFrame([run_row], schema.SCORE_RUNS_SCHEMA), tables.path(root, schema.SCORE_RUNS))
    print(f"score ({mode}: {reason}): {n_scored} users scored, {n_carried} carried forward, top-{sc.k} with model "
          f"{run_id} for {run_date} -> {loc} (version {version}, {n_rows} rows, {elapsed:.1f}s); users by path: "
          + ", ".join(f"{k} {v}" for k, v in sorted(served.items())), flush=True)
    return {"run_id": run_id, "run_date": run_date.isoformat(), "rows": n_rows, "users": n_scored + n_carried,
            "users_scored": n_scored, "users_carried": n_carried, "mode": mode, "reason": reason,
            "version": version, "seconds": elapsed, "served_by": served}
