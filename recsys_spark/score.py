"""Scoring: the nightly run that writes every user's top-K over the whole catalog, with business
rules and explanations, to the recommendations table; full or incremental.

How a run works (ranking itself is recsys_spark.ranking)
- The driver loads the checkpoint once, computes the vectors of the current catalog once (items
  newer than the model through the checkpoint's own content encoder) and ships them with the item
  ids, the eligibility mask, the item categories and the popularity fallbacks as one broadcast.
- Executors compute user vectors and top-K per partition (the model is loaded once per Python
  worker), on the GPU when the executor has one.
- Output goes to gold/recommendations, partitioned by run_date (a rerun of a date replaces it), and
  to gold/recommendations_latest, every user's newest list: a full run overwrites it, an incremental
  one replaces only the rescored users' rows (see _write_latest). Every run appends what produced it
  to gold/score_runs.
- Exploration (score.explore_slots) fills the last slots of model-made lists with a repeatable
  random draw among the next candidates, and every row carries its propensity (ranking.ScoringSpec).
- With bandit.serve, the model ranks bandit.pool candidates and the bandit's re-ranker (LinUCB,
  recsys_spark.bandit) chooses the k shown, after learning from the logged nights whose rewards are
  in; what it showed, with its features, goes to gold/bandit_exposures.
- Incremental mode rescores only users with new events since the last successful run (read from the
  events table's Change Data Feed) and copies the other users' rows from that run's partition.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Optional

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import bandit, checkpoints, features, promotion, schema, splits, tables
from recsys_spark.baselines import fallback_lists
from recsys_spark.config import Config
from recsys_spark.ranking import ScoringSpec, item_catalog, popularity_rows, score_users
from recsys_spark.table_schemas import RECOMMENDATIONS_SCHEMA, SCORE_RUNS_SCHEMA

logger = logging.getLogger(__name__)

# The tables a scoring run reads, pinned at the newest complete feature set when it starts.
INPUT_TABLES = (schema.SEQUENCES, schema.USER_PROFILE, schema.ITEM_INDEX, schema.ITEM_CONTENT, schema.USER_INDEX)


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
    loc = tables.location(root, schema.SCORE_RUNS)
    if not tables.exists(spark, loc):
        return None
    row = tables.read(spark, loc).orderBy(F.desc("finished_at")).first()
    return row.asDict() if row else None


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


@dataclass
class Scope:
    """Which users this run scores, the rows it carries forward from the last run, and what it
    cached to find them (`release` frees it once the run is written)."""
    mode: str
    reason: str
    users: DataFrame
    carried: Optional[DataFrame] = None
    rescored: Optional[DataFrame] = None  # incremental: user_id of the users scored afresh
    cached: tuple = ()

    def release(self) -> None:
        for df in self.cached:
            df.unpersist()


def pin_inputs(spark: SparkSession, root: str) -> tuple[dict, Optional[int]]:
    """Versions of the input tables, and the events version the sequences were built from."""
    for name in INPUT_TABLES:
        tables.require(spark, tables.location(root, name), "features")
    versions = tables.pinned_versions(spark, root, INPUT_TABLES)
    events_version = tables.commit_metadata(spark, tables.location(root, schema.SEQUENCES),
                                            versions[schema.SEQUENCES]).get("events_version")
    return versions, events_version


def _eligibility(spark: SparkSession, cfg: Config, item_index: DataFrame, n_items: int,
                 version: Optional[int] = None) -> tuple[np.ndarray, Optional[int]]:
    """(ineligible mask, eligibility table version) from score.eligibility at `version` (the newest
    when None); all eligible without one."""
    if not cfg.score.eligibility:
        return np.zeros(n_items, dtype=bool), None
    loc = tables.locate(cfg.tables_root, cfg.score.eligibility)
    tables.require(spark, loc, "an upstream job that maintains item eligibility (score.eligibility)")
    version = tables.version(spark, loc) if version is None else version
    return _ineligible_mask(spark, loc, version, item_index, n_items), version


def current_catalog(spark: SparkSession, cfg: Config, model, versions: dict, users: DataFrame,
                    eligibility_version: Optional[int] = None) -> tuple[dict, Optional[int]]:
    """The item side, once per run: the current catalog, including items newer than the model
    (their vectors come from the checkpoint's own encoders), with the eligibility table at
    eligibility_version (the newest when None). Returns (catalog, eligibility version)."""
    import torch

    root = cfg.tables_root
    item_index = tables.read_pinned(spark, root, schema.ITEM_INDEX, versions)
    content = tables.read_pinned(spark, root, schema.ITEM_CONTENT, versions)
    value_col = schema.OBJECTIVE_VALUE.get(cfg.score.objective)
    kind = (F.col(schema.ITEM_KIND_COLUMN) if schema.ITEM_KIND_COLUMN in content.columns
            else F.lit(schema.DEFAULT_ITEM_KIND)).alias("kind")
    rows = content.select("item_idx", "item_id", "category_idx", kind,
                          F.col(value_col).alias("value") if value_col else F.lit(None).alias("value")).collect()
    n_items = max([model.cfg.n_items] + [r.item_idx + 1 for r in rows])
    ids = np.array([""] * n_items, dtype=object)
    categories = np.zeros(n_items, dtype=np.int64)
    value = np.zeros(n_items, dtype=np.float64)
    kinds = np.array([""] * n_items, dtype=object)
    for r in rows:
        ids[r.item_idx], categories[r.item_idx], value[r.item_idx] = r.item_id, int(r.category_idx or 0), r.value or 0.0
        kinds[r.item_idx] = r.kind
    if value_col and not (value > 0).any():
        raise ValueError(f"score.objective is {cfg.score.objective} but no item has a positive {value_col}: add a "
                         f"{value_col} column to the items input (then rerun ingest and features), or set "
                         f"score.objective: relevance")
    feats = {k: torch.as_tensor(v) for k, v in features.item_feature_arrays(content, n_items).items()}
    with torch.no_grad():
        vectors = model.item_vectors(feats).numpy()
    ineligible, elig_version = _eligibility(spark, cfg, item_index, n_items, eligibility_version)
    ineligible |= ids == ""  # an index row the model knows but the catalog lost
    if cfg.score.item_kinds:
        ineligible |= ~np.isin(kinds, cfg.score.item_kinds)
        if ineligible[1:].all():
            raise ValueError(f"score.item_kinds is {cfg.score.item_kinds} but the catalog has no eligible item of those "
                             f"kinds (its kinds: {sorted(set(kinds[ids != '']))}); set the items input's kind column "
                             f"or change score.item_kinds")
    # Fresh items (no interactions the model was trained on): new since training, or never touched.
    fresh = np.zeros(n_items, dtype=bool)
    fresh[model.cfg.n_items:] = True
    fresh[:model.cfg.n_items] = ~model.trained_ids.numpy()
    fresh[0] = False
    fresh &= ids != ""
    popular, segments = fallback_lists(users)
    return item_catalog(vectors, ids, ineligible, categories, popular, segments, fresh,
                        value if value_col else None), elig_version


def scoring_spec(cfg: Config, ckpt_path: str, ckpt: dict, run_date: date) -> ScoringSpec:
    """How the nightly ranks (score.*: business rules, objective, exploration), for this checkpoint."""
    sc = cfg.score
    # The re-ranker chooses the k shown among the model's pool (bandit.serve).
    return ScoringSpec(k=cfg.bandit.pool if cfg.bandit.serve else sc.k, ckpt_path=ckpt_path, batch_users=sc.batch_users,
                       max_per_category=sc.max_per_category, mmr_lambda=sc.mmr_lambda, explain=sc.explain, device=sc.device, block_mb=sc.block_mb,
                       new_item_slots=sc.new_item_slots, with_ids=True,
                       calibration=checkpoints.calibration(ckpt), objective=sc.objective,
                       explore_slots=sc.explore_slots, explore_pool=sc.explore_pool,
                       explore_seed=run_date.toordinal())


def scored_nights(spark: SparkSession, root: str) -> list[date]:
    """The run dates gold/score_runs holds, oldest first."""
    loc = tables.location(root, schema.SCORE_RUNS)
    if not tables.exists(spark, loc):
        return []
    return sorted(r.run_date for r in tables.read(spark, loc).select("run_date").distinct().collect())


def night_run(spark: SparkSession, root: str, night: date) -> dict:
    """The newest scoring run of `night`: its gold/score_runs row, with `versions`, the input tables'
    versions its lists were made from (stored with its partition's commit)."""
    loc = tables.location(root, schema.SCORE_RUNS)
    runs = tables.read(spark, loc) if tables.exists(spark, loc) else None
    row = runs.where(F.col("run_date") == F.lit(night)).orderBy(F.desc("finished_at")).first() if runs is not None else None
    if row is None:
        nights = [str(d) for d in scored_nights(spark, root)]
        raise ValueError(f"no scoring run for {night} in {loc}; the nights scored: {', '.join(nights[-10:]) or 'none'}")
    run = row.asDict()
    versions = tables.commit_metadata(spark, tables.location(root, schema.RECOMMENDATIONS),
                                      run["recommendations_version"]).get("versions")
    if not versions:
        raise ValueError(f"the scoring run of {night} (recommendations version {run['recommendations_version']}) did "
                         f"not record the versions of its inputs, so its lists cannot be made again; evaluate a "
                         f"night scored since")
    return {**run, "versions": versions}


def _replay_config(cfg: Config, rules: dict, policy: str) -> Config:
    """cfg with a night's rules (score.k and the business rules its run recorded), ranking by
    `policy`'s objective, without exploration, the bandit or explanations."""
    sc = dataclasses.replace(cfg.score, k=rules["k"], max_per_category=rules["max_per_category"],
                             mmr_lambda=rules["mmr_lambda"], new_item_slots=rules.get("new_item_slots", 0),
                             item_kinds=rules.get("item_kinds", []), explain=0, explore_slots=0,
                             objective="relevance" if policy == "popularity" else policy)
    return dataclasses.replace(cfg, score=sc, bandit=dataclasses.replace(cfg.bandit, serve=False))


def replayed_lists(spark: SparkSession, cfg: Config, run: dict, users: DataFrame, policy: str) -> DataFrame:
    """user_id, item_id: the lists `policy` would have shown `users` (user_id) on a scored night
    (`run`, from night_run): the same checkpoint, input versions, eligibility and rules as that
    night's run, ranked by the policy's objective (popularity: the popularity lists the night gave
    users the model cannot serve), without exploration or the bandit."""
    ckpt_path = promotion.checkpoint_of(cfg, run["model_run_id"])
    if ckpt_path is None:
        raise ValueError(f"the checkpoint of model {run['model_run_id']}, which scored {run['run_date']}, is not in "
                         f"{cfg.models_dir}: that night's lists cannot be made again")
    model, ckpt = checkpoints.load(ckpt_path)
    replay = _replay_config(cfg, json.loads(run["rules"]), policy)
    everyone = splits.scoring_input(spark, replay, run["versions"])
    catalog, _ = current_catalog(spark, replay, model, run["versions"], everyone, run["eligibility_version"])
    catalog_bc = spark.sparkContext.broadcast(catalog)
    shown = everyone.join(users, "user_id", "left_semi")
    if policy == "popularity":
        return popularity_rows(shown, replay.score.k, catalog_bc).select("user_id", "item_id")
    return score_users(shown, scoring_spec(replay, ckpt_path, ckpt, run["run_date"]), catalog_bc).select("user_id", "item_id")


def _rules(cfg: Config) -> str:
    sc, bc = cfg.score, cfg.bandit
    return json.dumps({"k": sc.k, "max_per_category": sc.max_per_category, "mmr_lambda": sc.mmr_lambda,
                       "explain": sc.explain, **({"new_item_slots": sc.new_item_slots} if sc.new_item_slots else {}),
                       **({"objective": sc.objective} if sc.objective != "relevance" else {}),
                       **({"explore_slots": sc.explore_slots, "explore_pool": sc.explore_pool}
                          if sc.explore_slots else {}),
                       **({"item_kinds": sorted(sc.item_kinds)} if sc.item_kinds else {}),
                       **({"bandit": {"pool": bc.pool, "alpha": bc.alpha, "reward": bc.reward}} if bc.serve else {})},
                      sort_keys=True)


def serving_reranker(spark: SparkSession, cfg: Config, run_date: date, catalog: dict, users: DataFrame,
                     versions: dict) -> bandit.Reranker:
    """The bandit's re-ranker for this run, after it learned from the nights whose rewards are in."""
    return bandit.Reranker.open(spark, cfg, bandit.learn_closed_nights(spark, cfg, run_date), catalog["ids"], users,
                                versions)


def _scope(spark: SparkSession, root: str, users: DataFrame, last: Optional[dict], mode: str, reason: str,
           events_version: Optional[int]) -> Scope:
    """Everyone (full), or in incremental mode the users with new events and the users the last run
    did not serve (new profiles), with every other user's rows carried from the last run."""
    if mode != "incremental":
        return Scope(mode, reason, users)
    try:
        changed = features.changed_users(spark, root, last["events_version"], events_version).persist()
        changed.count()
    except Exception as exc:  # the feed does not cover the range (e.g. enabled later, or vacuumed)
        return Scope("full", f"the events change feed cannot be read from version {last['events_version'] + 1}: "
                             f"{str(exc).splitlines()[0]}", users)
    previous = (tables.read(spark, tables.location(root, schema.RECOMMENDATIONS), last["recommendations_version"])
                .where(F.col("run_date") == F.lit(last["run_date"])))
    if "served_by" not in previous.columns:  # written before the column existed
        previous = previous.withColumn("served_by", F.lit(schema.SERVED_HISTORY))
    for column in ("probability", "purchase_probability"):
        if column not in previous.columns:
            previous = previous.withColumn(column, F.lit(None).cast("float"))
    previous = previous.withColumn("propensity", recorded_propensity(previous).cast("float"))
    unserved = users.select("user_id").join(previous.select("user_id"), "user_id", "left_anti")
    # Materialised, so the planner knows its size and broadcasts it when small (the usual night)
    # instead of shuffling the last run's million rows to join them.
    rescore = changed.unionByName(unserved).distinct().persist()
    rescore.count()
    return Scope(mode, reason, users.join(rescore, "user_id", "left_semi"),
                 previous.join(rescore, "user_id", "left_anti").drop("model_run_id", "run_date"), rescore,
                 (changed, rescore))


def recorded_propensity(lists: DataFrame) -> Column:
    """The chance each row's item was shown, from a partition of gold/recommendations. Lists written
    before propensities were recorded never explored: each of their items was shown for sure."""
    return F.coalesce(F.col("propensity") if "propensity" in lists.columns else F.lit(None), F.lit(1.0))


def _staged(scored: DataFrame, carried: Optional[DataFrame], run_id: str, run_date: date) -> DataFrame:
    """The partition to write, in RECOMMENDATIONS_SCHEMA: the scored lists and the carried ones."""
    if carried is not None:
        scored = scored.unionByName(carried)
    # Column order and types of the schema (arrays keep Spark's nullable element flag).
    return scored.select(*[F.col(f.name) if f.name == "because_item_ids" else F.col(f.name).cast(f.dataType).alias(f.name)
                           for f in RECOMMENDATIONS_SCHEMA.fields if f.name not in ("model_run_id", "run_date")],
                         F.lit(run_id).alias("model_run_id"), F.lit(run_date).alias("run_date"))


def _publish(spark: SparkSession, cfg: Config, staged: DataFrame, rescored: DataFrame, run_date: date, meta: dict,
             scope: Scope, last: Optional[dict]) -> tuple[int, Optional[int]]:
    """Write the run_date partition (staged, atomically replacing it) and the latest lists (from
    rescored, this run's fresh lists, when only those change); (the partition's new version, the
    latest table's new version or None when score.write_latest is off)."""
    loc = tables.location(cfg.tables_root, schema.RECOMMENDATIONS)

    def write_list() -> int:
        if tables.exists(spark, loc):
            tables.replace_partition(staged, loc, f"run_date = '{run_date.isoformat()}'", ["run_date"], metadata=meta)
        else:
            tables.overwrite(staged, loc, partition_by=["run_date"], metadata=meta)
        return tables.version(spark, loc)

    # Another scoring run committing first (a concurrent nightly) makes Delta refuse this commit;
    # it is retried, replacing the partition whole again.
    version = tables.retry_on_conflict(write_list, f"score: writing {run_date} to {loc}")
    if not cfg.score.write_latest:
        return version, None
    partition = tables.read(spark, loc, version).where(F.col("run_date") == F.lit(run_date))
    return version, _write_latest(spark, cfg.tables_root, partition, rescored, scope, last,
                                  {**meta, "recommendations_version": version})


def latest_rewrites(spark: SparkSession, location: str, since_version: int) -> tuple[Optional[str], int]:
    """(the first commit to the latest lists after since_version that the refresh stream did not
    make and that changed rows (a compaction does not), as "version N (OPERATION)", or None; the
    newest version checked). Only those commits' history is read, so the check does not grow with
    the table's age."""
    current = tables.version(spark, location)
    if current <= since_version:
        return None, since_version
    # A margin for commits landing between the two reads; the range is checked to start right after.
    rows = (tables.delta_table(spark, location).history(current - since_version + 16)
            .where(f"version > {int(since_version)}").select("version", "operation", "userMetadata")
            .orderBy("version").collect())
    if not rows or rows[0].version != since_version + 1:
        return f"versions after {since_version} (their history is gone)", since_version
    for r in rows:
        if r.operation != tables.COMPACTION and "refresh_events_version" not in json.loads(r.userMetadata or "{}"):
            return f"version {r.version} ({r.operation})", r.version - 1
    return None, rows[-1].version


def _write_latest(spark: SparkSession, root: str, partition: DataFrame, rescored: DataFrame, scope: Scope,
                  last: Optional[dict], meta: dict) -> int:
    """Bring gold/recommendations_latest to this run's lists; its new version. A full run overwrites
    it with the partition. An incremental run replaces only the rescored users' rows when the
    table still holds the last run's lists (changed since by the refresh stream alone): the other
    users' rows are the lists it carried, and keep the run_date they were made on (or, for a user
    with only events newer than this run's, the list the refresh stream made from them)."""
    loc = tables.location(root, schema.RECOMMENDATIONS_LATEST)

    def rewrite() -> None:
        tables.overwrite(partition, loc, metadata=meta, deletion_vectors=True)

    why_whole = _latest_whole_reason(spark, loc, scope, last)
    if why_whole is None:
        # Beyond the users a listed predicate takes, the replacement would be a MERGE joining
        # every list: at 300k users and 3,005 rescored it took 10.4 s, the rewrite 7.0 s.
        tables.retry_on_conflict(
            lambda: tables.replace_groups(spark, rescored, loc, "user_id", ["user_id", "rank"], scope.rescored, meta,
                                          rewrite=rewrite),
            "score: replacing the rescored users' latest lists")
    else:
        if scope.mode == "incremental":
            logger.info(f"score: rewriting every latest list: {why_whole}")
        tables.retry_on_conflict(rewrite, "score: writing the latest lists")
    return tables.version(spark, loc)


def _latest_whole_reason(spark: SparkSession, location: str, scope: Scope, last: Optional[dict]) -> Optional[str]:
    """Why the latest lists must be rewritten whole (None when replacing the rescored users' rows
    gives every user this run's list)."""
    if scope.mode != "incremental":
        return "a full run"
    recorded = (last or {}).get("latest_version")
    if recorded is None or not tables.exists(spark, location):
        return "the last run did not write the latest lists"
    rewrite, _ = latest_rewrites(spark, location, int(recorded))
    return None if rewrite is None else f"another job rewrote them after the last run, at {rewrite}"


@dataclass
class RunCounts:
    scored: int
    carried: int
    rows: int
    served_by: dict

    @staticmethod
    def of(scored: DataFrame, carried: Optional[DataFrame]) -> "RunCounts":
        """Users scored and carried, rows, and users by how their list was made (a user's rows share
        one served_by). Only the user_id and served_by columns of the carried lists are read."""
        def tally(df: Optional[DataFrame]) -> dict:
            if df is None:
                return {}
            return {r["served_by"]: (r["rows"], r["users"]) for r in df.groupBy("served_by").agg(
                F.count("*").alias("rows"), F.countDistinct("user_id").alias("users")).collect()}

        fresh, kept = tally(scored), tally(carried)
        served = {path: fresh.get(path, (0, 0))[1] + kept.get(path, (0, 0))[1] for path in {*fresh, *kept}}
        return RunCounts(sum(u for _, u in fresh.values()), sum(u for _, u in kept.values()),
                         sum(r for r, _ in [*fresh.values(), *kept.values()]), served)


def _record_run(spark: SparkSession, root: str, run_date: date, run_id: str, scope: Scope, rules: str,
                events_version: Optional[int], versions: dict, elig_version: Optional[int], written: tuple,
                counts: RunCounts, elapsed: float) -> None:
    version, latest_version = written
    row = (run_date, run_id, scope.mode, scope.reason, rules, int(events_version if events_version is not None else -1),
           versions[schema.SEQUENCES], versions[schema.USER_PROFILE], elig_version, version,
           counts.scored, counts.carried, counts.rows, float(elapsed), datetime.now(timezone.utc).replace(tzinfo=None),
           latest_version)
    tables.append(spark.createDataFrame([row], SCORE_RUNS_SCHEMA), tables.location(root, schema.SCORE_RUNS))


def run(spark: SparkSession, cfg: Config) -> dict:
    """Score every user with the serving model (the champion, or score.model_run_id) into the
    recommendations table."""
    t0 = time.time()
    root, sc = cfg.tables_root, cfg.score
    ckpt_path = promotion.serving_checkpoint(spark, cfg)
    model, ckpt = checkpoints.load(ckpt_path)
    run_id = ckpt["run_id"]
    run_date = date.fromisoformat(sc.run_date) if sc.run_date else datetime.now(timezone.utc).date()
    versions, events_version = pin_inputs(spark, root)
    users = splits.scoring_input(spark, cfg, versions).persist()
    catalog, elig_version = current_catalog(spark, cfg, model, versions, users)
    rules = _rules(cfg)
    last = _last_run(spark, root)
    scope = _scope(spark, root, users, last, *_choose_mode(cfg, last, run_id, rules, elig_version, events_version),
                   events_version)
    spec = scoring_spec(cfg, ckpt_path, ckpt, run_date)
    lists = score_users(scope.users, spec, spark.sparkContext.broadcast(catalog))
    reranker = serving_reranker(spark, cfg, run_date, catalog, users, versions) if cfg.bandit.serve else None
    if reranker is not None:
        lists = reranker.rerank(lists)
    # Scored once: counted, then written to the partition (and to the latest lists).
    lists = lists.persist()
    counts = RunCounts.of(lists, scope.carried)
    meta = {"model_run_id": run_id, "mode": scope.mode, "events_version": events_version,
            "versions": versions, "eligibility_version": elig_version}
    written = _publish(spark, cfg, _staged(lists, scope.carried, run_id, run_date), _staged(lists, None, run_id, run_date),
                       run_date, meta, scope, last)
    version = written[0]
    if reranker is not None:  # logged once the lists are published: only what users can see is learned from
        bandit.log_exposures(lists, tables.location(root, schema.BANDIT_EXPOSURES), run_date, run_id)
    lists.unpersist()
    scope.release()
    users.unpersist()
    elapsed = time.time() - t0
    _record_run(spark, root, run_date, run_id, scope, rules, events_version, versions, elig_version, written,
                counts, elapsed)
    logger.info(f"score ({scope.mode}: {scope.reason}): {counts.scored} users scored, {counts.carried} carried forward, "
          f"top-{sc.k} with model {run_id} for {run_date} -> {tables.location(root, schema.RECOMMENDATIONS)} (version "
          f"{version}, {counts.rows} rows, {elapsed:.1f}s); users by path: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.served_by.items())))
    return {"run_id": run_id, "run_date": run_date.isoformat(), "rows": counts.rows,
            "users": counts.scored + counts.carried, "users_scored": counts.scored, "users_carried": counts.carried,
            "mode": scope.mode, "reason": scope.reason, "version": version, "seconds": elapsed,
            "served_by": counts.served_by}
