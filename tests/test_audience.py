"""Campaign audiences on the nightly shop: sizes, thresholds, exclusions, opt-outs, the frequency
cap and rerunning a date (README "Probabilities, audiences and objectives")."""
import pytest
import yaml
from pyspark.sql import functions as F

from conftest import SHOP, make_config
from recsys_spark import audience, cli, schema, tables


def _audiences(spark, cfg, run_date="2026-07-01"):
    rows = tables.read(spark, tables.location(cfg.tables_root, schema.AUDIENCES)).where(F.col("run_date") == run_date)
    return {c: sorted(((r.rank, r.user_id, r.probability, r.score) for r in rows.where(F.col("campaign_id") == c).collect()))
            for c in [r.campaign_id for r in rows.select("campaign_id").distinct().collect()]}


@pytest.mark.slow
def test_audiences_respect_sizes_exclusions_opt_outs_and_the_cap(spark, shop_copy, tmp_path):
    campaigns = tmp_path / "campaigns.yaml"
    campaigns.write_text(yaml.safe_dump([
        {"campaign_id": "coffee", "category": "Coffee Bean", "size": 60},
        {"campaign_id": "acme", "brand": "Acme", "size": 60},
        {"campaign_id": "phones", "category": "Phone", "min_probability": 0.05},
    ]))
    root = shop_copy.paths.root
    plain = make_config(root, **SHOP, audience={"campaigns": str(campaigns), "run_date": "2026-07-01",
                                                "exclude_purchased_days": 0})
    cli.run_stage(spark, plain, "audience")
    first = _audiences(spark, plain)
    assert set(first) == {"coffee", "acme", "phones"}
    # The shop has purchases: each audience member's chance of buying one of the campaign's items
    # next is their probability times one share (the model's next steps that bought), below 1.
    ratio = (tables.read(spark, tables.location(plain.tables_root, schema.AUDIENCES))
             .select((F.col("purchase_probability") / F.col("probability")).alias("r"))
             .agg(F.min("r").alias("low"), F.max("r").alias("high")).first())
    assert 0 < ratio.low and ratio.high < 1 and ratio.high - ratio.low < 1e-9 * ratio.high, ratio
    for cid, rows in first.items():
        ranks, probs = [r[0] for r in rows], [r[2] for r in rows]
        assert ranks == list(range(1, len(rows) + 1))
        assert all(0 < p <= 1 for p in probs) and probs == sorted(probs, reverse=True)
        assert len(rows) == 60 if cid != "phones" else all(p >= 0.05 for p in probs) and len(rows) > 0
    # The category's buyers in the 90 days before the run date, and two of the best coffee prospects opting out.
    recent = (tables.read(spark, tables.location(plain.tables_root, schema.EVENTS))
              .where((F.col("event_type") == "purchase") & (F.col("ts") >= "2026-04-02")))
    coffee_items = tables.read(spark, tables.location(plain.tables_root, schema.ITEM_CONTENT)).where(
        F.col("category") == "Coffee Bean").select("item_id")
    buyers = {r.user_id for r in recent.join(coffee_items, "item_id").select("user_id").distinct().collect()}
    assert buyers & {r[1] for r in first["coffee"]}, "the test needs recent buyers among the plain audience"
    opted = [r[1] for r in first["coffee"] if r[1] not in buyers][:2]
    tables.overwrite(spark.createDataFrame([(u,) for u in opted], "user_id string"), tables.location(plain.tables_root, "silver/opt_out"))
    assert any(sum(u in {r[1] for r in rows} for rows in first.values()) > 1 for u in {r[1] for r in first["acme"]})

    ruled = make_config(root, **SHOP, audience={"campaigns": str(campaigns), "run_date": "2026-07-01",
                                                "exclude_purchased_days": 90, "opt_out": "silver/opt_out",
                                                "max_per_user": 1})
    cli.run_stage(spark, ruled, "audience")
    second = _audiences(spark, ruled)  # the date's partition replaced, not added to
    members = {cid: {r[1] for r in rows} for cid, rows in second.items()}
    assert not members["coffee"] & buyers
    assert not set(opted) & set().union(*members.values())
    every = [u for users in members.values() for u in users]
    assert len(every) == len(set(every)), "a user is in more than one audience under max_per_user 1"
    assert len(second["coffee"]) == 60  # the cap's candidates refill the audience
    for cid, rows in second.items():
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1))


def test_a_campaign_must_name_its_items_once_and_a_size_or_threshold():
    with pytest.raises(audience.CampaignError, match="exactly one of items, category or brand"):
        audience.Campaign.parse({"campaign_id": "x", "category": "Tent", "brand": "Acme", "size": 5}, "f.yaml")
    with pytest.raises(audience.CampaignError, match="needs size > 0"):
        audience.Campaign.parse({"campaign_id": "x", "category": "Tent"}, "f.yaml")
    with pytest.raises(audience.CampaignError, match="unknown field"):
        audience.Campaign.parse({"campaign_id": "x", "category": "Tent", "size": 5, "sise": 3}, "f.yaml")
    assert audience.Campaign.parse({"campaign_id": "x", "items": "a|b", "size": 5}, "t").items == ("a", "b")
