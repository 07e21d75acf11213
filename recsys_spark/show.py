"""Print where the tables are and a few users' latest recommendations with item names; or a
campaign's audience with reasons."""
from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import schema, tables
from recsys_spark.config import Config


def run(spark: SparkSession, cfg: Config, n_users: int = 5, campaign_id: str | None = None) -> None:
    if campaign_id:
        return campaign(spark, cfg, campaign_id, n_users)
    root = cfg.tables_root
    loc = tables.location(root, schema.RECOMMENDATIONS)
    tables.require(spark, loc, "score")
    print(f"Delta tables under {root}:")
    for name in (schema.EVENTS, schema.QUARANTINE, schema.USERS, schema.ITEMS, schema.USER_ITEM,
                 schema.USER_PROFILE, schema.ITEM_CONTENT, schema.SEQUENCES, schema.TRAIN_EXAMPLES,
                 schema.RECOMMENDATIONS, schema.RECOMMENDATIONS_LATEST, schema.SCORE_RUNS, schema.METRICS):
        path = tables.location(root, name)
        if tables.exists(spark, path):
            print(f"  {name:<22} version {tables.version(spark, path):>3}  {path}")
    recs = _current_lists(spark, root)
    latest = recs.agg(F.max("run_date")).first()[0]
    items_path = tables.location(root, schema.ITEM_CONTENT)
    titles = {r.item_id: r.title for r in tables.read(spark, items_path)
              .select("item_id", F.coalesce("title", "item_id").alias("title")).collect()}
    users = [r.user_id for r in recs.select("user_id").distinct().orderBy("user_id").limit(n_users).collect()]
    # Plus one new user (a profile, no events yet), when there is one.
    if "served_by" in recs.columns:
        paths = {r.served_by: r.n for r in recs.groupBy("served_by").agg(F.countDistinct("user_id").alias("n")).collect()}
        print("\nUsers by how their list was made: " + ", ".join(f"{k} {v}" for k, v in sorted(paths.items())))
        new_user = recs.where(F.col("served_by") != "history").select("user_id").orderBy("user_id").first()
        if new_user and new_user.user_id not in users:
            users.append(new_user.user_id)
    # New items: in the catalog, never interacted with, and how many lists they made it into.
    events = tables.read(spark, tables.location(root, schema.EVENTS)).select("item_id").distinct()
    new_items = (tables.read(spark, items_path).select("item_id").join(events, "item_id", "left_anti")
                 .join(recs.groupBy("item_id").agg(F.countDistinct("user_id").alias("users")), "item_id", "left")
                 .fillna(0, subset=["users"]).orderBy(F.desc("users"), "item_id").collect())
    if new_items:
        print(f"New items (content only, no events yet): {len(new_items)}; recommended to "
              + ", ".join(f"{titles.get(r.item_id, r.item_id)} [{r.item_id}] {r.users} users" for r in new_items[:5]))
    rows = recs.where(F.col("user_id").isin(users)).orderBy("user_id", "rank").collect()
    declared = {}
    users_loc = tables.location(root, schema.USERS)
    if tables.exists(spark, users_loc):
        u = tables.read(spark, users_loc)
        cols = [c for c in schema.USER_ATTRIBUTE_COLUMNS if c in u.columns]
        declared = {r.user_id: ", ".join(f"{c}={r[c]}" for c in cols if r[c] is not None)
                    for r in u.where(F.col("user_id").isin(users)).collect()}
    print(f"\nTop-{cfg.score.k} for {len(users)} users (lists made up to {latest}):")
    current = None
    for r in rows:
        if r.user_id != current:
            current = r.user_id
            how = f", served by {r.served_by}" if "served_by" in r.asDict() else ""
            if how and r.served_by != "history" and r.user_id in declared:
                how += f"; new user, no events; declared {declared[r.user_id]}"
            print(f"  {r.user_id}  (model {r.model_run_id}{how})")
        why = ""
        if r.because_item_ids:
            why = "  -- because you viewed " + ", ".join(titles.get(i, i) for i in r.because_item_ids)
        p = getattr(r, "probability", None) if "probability" in r.asDict() else None
        chance = f", next-item probability {p:.1%}" if p is not None else ""
        print(f"    {r.rank:>2}. {titles.get(r.item_id, r.item_id)}  [{r.item_id}]  score {r.score:.3f}{chance}{why}")


def _current_lists(spark: SparkSession, root: str):
    """Every user's newest list: the latest table (whichever night or refresh made each list), or
    without one the newest dated partition."""
    latest_loc = tables.location(root, schema.RECOMMENDATIONS_LATEST)
    if tables.exists(spark, latest_loc):
        return tables.read(spark, latest_loc)
    recs = tables.read(spark, tables.location(root, schema.RECOMMENDATIONS))
    return recs.where(F.col("run_date") == recs.agg(F.max("run_date")).first()[0])


def campaign(spark: SparkSession, cfg: Config, campaign_id: str, n_users: int = 5) -> None:
    """A campaign's latest audience: its first users with their probability, lift and reasons."""
    from recsys_spark import audience

    loc = tables.location(cfg.tables_root, schema.AUDIENCES)
    tables.require(spark, loc, "audience")
    rows = tables.read(spark, loc).where(F.col("campaign_id") == campaign_id)
    latest = rows.agg(F.max("run_date")).first()[0]
    if latest is None:
        known = [r.campaign_id for r in tables.read(spark, loc).select("campaign_id").distinct().orderBy("campaign_id").collect()]
        raise ValueError(f"no audience for campaign {campaign_id!r} in {loc}; campaigns there: {', '.join(known)}")
    rows = rows.where(F.col("run_date") == latest)
    size = rows.count()
    top = rows.orderBy("rank").limit(n_users).collect()
    titles = {r.item_id: r.title for r in tables.read(spark, tables.location(cfg.tables_root, schema.ITEM_CONTENT))
              .select("item_id", F.coalesce("title", "item_id").alias("title")).collect()}
    why = audience.reasons(spark, cfg, campaign_id, [r.user_id for r in top])
    print(f"Audience of campaign {campaign_id} for {latest}: {size} users (model {top[0].model_run_id if top else '-'}); "
          f"first {len(top)}:")
    for r in top:
        because = ", ".join(titles.get(i, i) for i in why.get(r.user_id, []))
        print(f"  {r.rank:>4}. {r.user_id}  probability {r.probability:.1%}, {r.score:.1f}x the campaign's mean"
              + (f"  -- closest in their history: {because}" if because else ""))
