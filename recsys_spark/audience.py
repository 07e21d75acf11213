"""Campaign audiences: for each campaign (a list of items, a category or a brand), the users most
likely to pick one of its items next -- ad targeting, the reverse of "items for a user".

How a run works
- Campaigns come from a YAML/JSON file or a Delta table (`audience.campaigns`); each is resolved to
  its items in the pinned catalog (an item, category or brand the catalog lacks is an error).
- Executors score every user the model can encode against every campaign at once: the calibrated
  probability that the user's next new item is one of the campaign's (recsys_spark.ranking
  `campaign_candidates`: one matmul of the next-item distribution with the campaigns' item matrix),
  and keep each partition's best candidates per campaign.
- The driver's plan then leaves out users who bought one of the campaign's items in the last
  `exclude_purchased_days` and users on the opt-out table, applies the frequency cap (a user in at
  most `max_per_user` audiences, kept where their lift is highest) and cuts each audience to its
  size and/or probability threshold.
- gold/audiences is partitioned by run_date and campaign_id; a rerun of a date replaces the date.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta, timezone
from typing import Optional

import numpy as np
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark import calibration, checkpoints, promotion, schema, splits, tables
from recsys_spark.config import Config
from recsys_spark.ranking import CampaignSpec, campaign_candidates
from recsys_spark.score import current_catalog, pin_inputs
from recsys_spark.table_schemas import AUDIENCES_SCHEMA

logger = logging.getLogger(__name__)

# With a frequency cap, each partition keeps this many times a campaign's size as candidates, so
# that users capped out of it can be replaced by the next ones.
CAPPED_OVERFETCH = 3
# Campaigns listed one per line in the printed summary (the table has them all).
SUMMARY_LINES = 20


class CampaignError(ValueError):
    """A campaign definition is invalid; the message names the campaign and what to fix."""


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    items: tuple = ()
    category: str = ""
    brand: str = ""
    size: int = 0
    min_probability: float = 0.0

    @staticmethod
    def parse(row: dict, where: str) -> "Campaign":
        known = {f.name for f in fields(Campaign)}
        row = {k: v for k, v in row.items() if v is not None and v != "" and v != []}
        cid = str(row.get("campaign_id", "")).strip()
        if not cid:
            raise CampaignError(f"{where}: a campaign without campaign_id: {row}")
        unknown = sorted(set(row) - known)
        if unknown:
            raise CampaignError(f"campaign {cid!r} ({where}): unknown field(s) {unknown}; a campaign has "
                                f"{', '.join(sorted(known))}")
        items = row.get("items", ())
        if isinstance(items, str):
            items = [x.strip() for x in items.split("|") if x.strip()]
        c = Campaign(cid, tuple(str(x) for x in items), str(row.get("category", "")), str(row.get("brand", "")),
                     int(row.get("size", 0)), float(row.get("min_probability", 0.0)))
        chosen = [k for k in ("items", "category", "brand") if getattr(c, k)]
        if len(chosen) != 1:
            raise CampaignError(f"campaign {cid!r} ({where}): name its items with exactly one of items, category "
                                f"or brand (found {chosen or 'none'})")
        if c.size < 0 or not 0.0 <= c.min_probability < 1.0 or (c.size == 0 and c.min_probability == 0.0):
            raise CampaignError(f"campaign {cid!r} ({where}): needs size > 0 (users in the audience) and/or "
                                f"min_probability in (0, 1); got size {c.size}, min_probability {c.min_probability}")
        return c


def load_campaigns(spark: SparkSession, cfg: Config) -> list[Campaign]:
    """The campaigns of audience.campaigns: a .yaml/.yml/.json file (a list) or a Delta table."""
    loc = cfg.audience.campaigns
    if not loc:
        raise CampaignError("audience.campaigns is empty: name a YAML or JSON file listing campaigns, or a Delta "
                            "table of them (see conf/campaigns.yaml)")
    if loc.endswith((".yaml", ".yml", ".json")):
        import yaml

        if not os.path.isfile(loc):
            raise CampaignError(f"audience.campaigns: {loc} does not exist")
        with open(loc) as fh:
            data = yaml.safe_load(fh) if not loc.endswith(".json") else json.load(fh)
        if isinstance(data, dict) and "campaigns" in data:
            data = data["campaigns"]
        if not isinstance(data, list):
            raise CampaignError(f"audience.campaigns: {loc} must hold a list of campaigns")
        rows = data
    else:
        location = tables.locate(cfg.tables_root, loc)
        tables.require(spark, location, "the job that maintains campaigns (audience.campaigns)")
        rows = [r.asDict() for r in tables.read(spark, location).collect()]
    campaigns = [Campaign.parse(dict(r), loc) for r in rows]
    if not campaigns:
        raise CampaignError(f"audience.campaigns: {loc} lists no campaign")
    dup = sorted({c.campaign_id for c in campaigns if [x.campaign_id for x in campaigns].count(c.campaign_id) > 1})
    if dup:
        raise CampaignError(f"audience.campaigns: campaign_id(s) {dup} appear more than once in {loc}")
    return campaigns


def campaign_items(campaigns: list[Campaign], content: list, n_items: int) -> np.ndarray:
    """(n_items, C) float32 0/1: each campaign's items in the catalog. content: rows of item_idx,
    item_id, category, brand. A campaign none of whose items the catalog has is an error; item ids
    it lacks are named and left out."""
    by_id = {r.item_id: r.item_idx for r in content}
    members = np.zeros((n_items, len(campaigns)), dtype=np.float32)
    for c, camp in enumerate(campaigns):
        if camp.items:
            missing = [i for i in camp.items if i not in by_id]
            idx = [by_id[i] for i in camp.items if i in by_id]
            if missing:
                logger.info(f"audience: campaign {camp.campaign_id}: {len(missing)} item(s) not in the catalog, left out: "
                      f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        else:
            key, value = ("category", camp.category) if camp.category else ("brand", camp.brand)
            idx = [r.item_idx for r in content if getattr(r, key) == value]
        if not idx:
            what = f"items {list(camp.items)[:5]}" if camp.items else f"{'category' if camp.category else 'brand'} " \
                                                                     f"{camp.category or camp.brand!r}"
            raise CampaignError(f"campaign {camp.campaign_id!r}: the catalog has none of its {what}; check the "
                                f"ids against silver/items")
        members[np.asarray(idx), c] = 1.0
    members[0] = 0.0
    return members


def _recent_buyers(spark: SparkSession, cfg: Config, pairs: DataFrame, run_date: date) -> Optional[DataFrame]:
    """(user_id, campaign_id) of users who purchased one of the campaign's items within
    audience.exclude_purchased_days before run_date (None when the window is 0)."""
    days = cfg.audience.exclude_purchased_days
    if not days:
        return None
    start = datetime.combine(run_date - timedelta(days=days), datetime.min.time())
    end = datetime.combine(run_date + timedelta(days=1), datetime.min.time())
    events = tables.read(spark, tables.location(cfg.tables_root, schema.EVENTS))
    bought = events.where((F.col("event_type") == "purchase") & (F.col("ts") >= F.lit(start)) & (F.col("ts") < F.lit(end)))
    return bought.select("user_id", "item_id").join(F.broadcast(pairs), "item_id").select("user_id", "campaign_id").distinct()


def _opted_out(spark: SparkSession, cfg: Config) -> Optional[DataFrame]:
    if not cfg.audience.opt_out:
        return None
    loc = tables.locate(cfg.tables_root, cfg.audience.opt_out)
    tables.require(spark, loc, "the job that records marketing opt-outs (audience.opt_out)")
    out = tables.read(spark, loc)
    if "user_id" not in out.columns:
        raise ValueError(f"audience.opt_out table {loc} has no user_id column (found: {', '.join(out.columns)})")
    return out.select(F.col("user_id").cast("string").alias("user_id")).distinct()


def select_audiences(candidates: DataFrame, campaigns: DataFrame, excluded: Optional[DataFrame],
                     opted_out: Optional[DataFrame], max_per_user: int) -> DataFrame:
    """From campaign_candidates rows to the audiences: lift over each campaign's mean probability,
    exclusions, the frequency cap (kept where the lift is highest), then each campaign's size and
    threshold. campaigns: campaign (index), campaign_id, size, min_probability."""
    base = (candidates.where(F.col("user_id").isNull()).groupBy("campaign")
            .agg((F.sum("probability") / F.greatest(F.sum("users"), F.lit(1))).alias("base_rate")))
    cand = (candidates.where(F.col("user_id").isNotNull()).join(F.broadcast(campaigns), "campaign")
            .join(F.broadcast(base), "campaign")
            .withColumn("score", F.col("probability") / F.greatest("base_rate", F.lit(1e-300))))
    if excluded is not None:
        cand = cand.join(excluded, ["user_id", "campaign_id"], "left_anti")
    if opted_out is not None:
        cand = cand.join(opted_out, "user_id", "left_anti")
    cand = cand.where(F.col("probability") >= F.col("min_probability"))
    if max_per_user:
        by_user = Window.partitionBy("user_id").orderBy(F.desc("score"), "campaign_id")
        cand = cand.withColumn("_n", F.row_number().over(by_user)).where(F.col("_n") <= max_per_user)
    by_campaign = Window.partitionBy("campaign_id").orderBy(F.desc("probability"), "user_id")
    ranked = cand.withColumn("rank", F.row_number().over(by_campaign))
    return ranked.where((F.col("size") == 0) | (F.col("rank") <= F.col("size")))


def _publish(spark: SparkSession, cfg: Config, audiences: DataFrame, run_date: date, meta: dict) -> int:
    loc = tables.location(cfg.tables_root, schema.AUDIENCES)

    def write() -> int:
        if tables.exists(spark, loc):
            tables.replace_partition(audiences, loc, f"run_date = '{run_date.isoformat()}'", ["run_date", "campaign_id"],
                                     metadata=meta)
        else:
            tables.overwrite(audiences, loc, partition_by=["run_date", "campaign_id"], metadata=meta)
        return tables.version(spark, loc)

    return tables.retry_on_conflict(write, f"audience: writing {run_date} to {loc}")


def _spec(cfg: Config, ckpt_path: str, ckpt: dict, campaigns: list[Campaign]) -> CampaignSpec:
    ac, sc = cfg.audience, cfg.score
    capped = ac.max_per_user and ac.max_per_user < len(campaigns)
    fitted = checkpoints.calibration(ckpt)
    return CampaignSpec(ckpt_path, fitted["temperature"], fitted["new_share"],
                        tuple(c.size * (CAPPED_OVERFETCH if capped else 1) for c in campaigns),
                        tuple(c.min_probability for c in campaigns), sc.batch_users, sc.device, sc.block_mb)


def _purchase_share(ckpt: dict):
    """Of the model's next new items, the share that were bought (a column; null without purchases).
    A campaign's purchase probability is its probability times this share: a set's isotonic map is
    not fitted, as for the set probability itself."""
    ratio = calibration.purchase_ratio(checkpoints.calibration(ckpt))
    return F.lit(ratio).cast("double")


def _campaign_frames(spark: SparkSession, campaigns: list[Campaign], catalog: dict) -> tuple[DataFrame, DataFrame]:
    """(campaign, campaign_id, size, min_probability) and (item_id, campaign_id) of the campaigns."""
    table = spark.createDataFrame([(i, c.campaign_id, c.size, c.min_probability) for i, c in enumerate(campaigns)],
                                  "campaign long, campaign_id string, size int, min_probability double")
    pairs = spark.createDataFrame([(str(catalog["ids"][i]), campaigns[c].campaign_id)
                                   for i, c in zip(*np.nonzero(catalog["members"]))], "item_id string, campaign_id string")
    return table, pairs


def _summary(spark: SparkSession, cfg: Config, campaigns: list[Campaign], version: int, run_date: date,
             scored_users: int, run_id: str, elapsed: float) -> dict:
    """Print and return what was written: users and mean probability per campaign."""
    written = tables.read(spark, tables.location(cfg.tables_root, schema.AUDIENCES), version).where(
        F.col("run_date") == F.lit(run_date))
    sizes = {r.campaign_id: (r.users, r.mean_p) for r in written.groupBy("campaign_id").agg(
        F.count("*").alias("users"), F.avg("probability").alias("mean_p")).collect()}
    logger.info(f"audience: {len(campaigns)} campaigns over {scored_users} users with model {run_id} for {run_date} -> "
          f"{tables.location(cfg.tables_root, schema.AUDIENCES)} (version {version}, {elapsed:.1f}s)")
    for c in campaigns[:SUMMARY_LINES]:
        n, mean_p = sizes.get(c.campaign_id, (0, None))
        want = f"size {c.size}" if c.size else f"p >= {c.min_probability}"
        logger.info(f"  {c.campaign_id:<24} {n:>7} users ({want}; mean probability "
              f"{mean_p if mean_p is not None else 0:.4f})")
    if len(campaigns) > SUMMARY_LINES:
        logger.info(f"  ... and {len(campaigns) - SUMMARY_LINES} more campaigns")
    return {"run_date": run_date.isoformat(), "version": version, "users_scored": scored_users, "seconds": elapsed,
            "audiences": {c.campaign_id: sizes.get(c.campaign_id, (0, None))[0] for c in campaigns}}


def run(spark: SparkSession, cfg: Config) -> dict:
    """Write the day's audience of every campaign to gold/audiences."""
    t0 = time.time()
    ckpt_path = promotion.serving_checkpoint(spark, cfg)
    model, ckpt = checkpoints.load(ckpt_path)
    run_date = date.fromisoformat(cfg.audience.run_date) if cfg.audience.run_date else datetime.now(timezone.utc).date()
    campaigns = load_campaigns(spark, cfg)
    versions, _ = pin_inputs(spark, cfg.tables_root)
    users = splits.scoring_input(spark, cfg, versions)
    catalog, _ = current_catalog(spark, cfg, model, versions, users)
    content = (tables.read_pinned(spark, cfg.tables_root, schema.ITEM_CONTENT, versions)
               .select("item_idx", "item_id", "category", "brand").collect())
    catalog["members"] = campaign_items(campaigns, content, len(catalog["ids"]))
    spec = _spec(cfg, ckpt_path, ckpt, campaigns)
    candidates = campaign_candidates(users, spec, spark.sparkContext.broadcast(catalog)).persist()
    table, pairs = _campaign_frames(spark, campaigns, catalog)
    audiences = select_audiences(candidates, table, _recent_buyers(spark, cfg, pairs, run_date),
                                 _opted_out(spark, cfg), cfg.audience.max_per_user)
    out = (audiences.withColumn("purchase_probability", _purchase_share(ckpt) * F.col("probability"))
           .withColumn("model_run_id", F.lit(ckpt["run_id"])).withColumn("run_date", F.lit(run_date))
           .select(*[F.col(f.name).cast(f.dataType) for f in AUDIENCES_SCHEMA.fields]))
    meta = {"model_run_id": ckpt["run_id"], "versions": versions, "campaigns": [c.campaign_id for c in campaigns]}
    version = _publish(spark, cfg, out, run_date, meta)
    scored = candidates.where(F.col("user_id").isNull()).agg(F.sum("users")).first()[0] or 0
    candidates.unpersist()
    return _summary(spark, cfg, campaigns, version, run_date, int(scored // max(1, len(campaigns))), ckpt["run_id"],
                    time.time() - t0)


def reasons(spark: SparkSession, cfg: Config, campaign_id: str, user_ids: list, n: int = 3) -> dict:
    """{user_id: up to n item ids of the user's history closest to the campaign} by the serving
    model's item vectors (cosine to the mean vector of the campaign's items)."""
    import torch

    model, _ = checkpoints.load(promotion.serving_checkpoint(spark, cfg))
    campaigns = [c for c in load_campaigns(spark, cfg) if c.campaign_id == campaign_id]
    content = tables.read(spark, tables.location(cfg.tables_root, schema.ITEM_CONTENT)).select(
        "item_idx", "item_id", "category", "brand").collect()
    with torch.no_grad():
        vectors = torch.nn.functional.normalize(model.item_vectors(), dim=1).numpy()
    if not campaigns or not user_ids:
        return {}
    members = campaign_items(campaigns, [r for r in content if r.item_idx < len(vectors)], len(vectors))[:, 0]
    centre = vectors[members > 0].mean(0)
    ids = {r.item_idx: r.item_id for r in content}
    seqs = tables.read(spark, tables.location(cfg.tables_root, schema.SEQUENCES)).where(F.col("user_id").isin(user_ids))
    out = {}
    for r in seqs.select("user_id", "items").collect():
        hist = np.asarray([i for i in (r["items"] or []) if 0 < i < len(vectors)], dtype=np.int64)
        if len(hist):
            hist = np.unique(hist)
            best = hist[np.argsort(-(vectors[hist] @ centre), kind="stable")[:n]]
            out[r.user_id] = [ids.get(int(i), str(i)) for i in best]
    return out
