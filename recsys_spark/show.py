"""Print where the tables are and a few users' latest recommendations with item names."""
from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import schema, tables
from recsys_spark.config import Config


def run(spark: SparkSession, cfg: Config, n_users: int = 5) -> None:
    root = cfg.tables_dir
    loc = tables.path(root, schema.RECOMMENDATIONS)
    tables.require(spark, loc, "score")
    print(f"Delta tables under {root}:")
    for name in (schema.EVENTS, schema.QUARANTINE, schema.USERS, schema.ITEMS, schema.USER_ITEM,
                 schema.USER_PROFILE, schema.ITEM_CONTENT, schema.SEQUENCES, schema.TRAIN_EXAMPLES,
                 schema.RECOMMENDATIONS, schema.RECOMMENDATIONS_LATEST, schema.SCORE_RUNS, schema.METRICS):
        path = tables.path(root, name)
        if tables.exists(spark, path):
            print(f"  {name:<22} version {tables.version(spark, path):>3}  {path}")
    latest_loc = tables.path(root, schema.RECOMMENDATIONS_LATEST)
    recs = tables.read(spark, latest_loc if tables.exists(spark, latest_loc) else loc)
    latest = recs.agg(F.max("run_date")).first()[0]
    recs = recs.where(F.col("run_date") == latest)
    items_path = tables.path(root, schema.ITEM_CONTENT)
    titles = {r.item_id: r.title for r in tables.read(spark, items_path)
              .select("item_id", F.coalesce("title", "item_id").alias("title")).collect()}
    users = [r.user_id for r in recs.select("user_id").distinct().orderBy("user_id").limit(n_users).collect()]
    rows = recs.where(F.col("user_id").isin(users)).orderBy("user_id", "rank").collect()
    print(f"\nTop-{cfg.score.k} for {len(users)} users (run_date {latest}):")
    current = None
    for r in rows:
        if r.user_id != current:
            current = r.user_id
            print(f"  {r.user_id}  (model {r.model_run_id})")
        why = ""
        if r.because_item_ids:
            why = "  -- because you viewed " + ", ".join(titles.get(i, i) for i in r.because_item_ids)
        print(f"    {r.rank:>2}. {titles.get(r.item_id, r.item_id)}  [{r.item_id}]  score {r.score:.3f}{why}")
