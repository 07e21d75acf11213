"""The nightly scoring run and its output contract (README: the recommendations table)."""
import numpy as np
import pytest
from pyspark.sql import functions as F

from conftest import make_config
from recsys_spark import cli, schema, score, tables


def _recs(spark, cfg):
    return tables.read(spark, tables.location(cfg.tables_root, schema.RECOMMENDATIONS))


@pytest.mark.slow
def test_recommendations_contract(spark, shop):
    cfg, _ = shop
    recs = _recs(spark, cfg).where(F.col("run_date") == "2026-07-01")
    # Every known user, with events or only a profile, gets a full list.
    n_users = tables.read(spark, tables.location(cfg.tables_root, schema.USER_INDEX)).count()
    assert n_users == 606
    assert recs.count() == n_users * 10
    ranks = recs.groupBy("user_id").agg(F.sort_array(F.collect_list("rank")).alias("r"),
                                         F.countDistinct("item_id").alias("n"))
    assert ranks.where((F.col("r") != F.array(*[F.lit(i) for i in range(1, 11)])) | (F.col("n") != 10)).count() == 0
    # Scores are non-increasing with rank.
    bad = (recs.alias("a").join(recs.alias("b"), (F.col("a.user_id") == F.col("b.user_id"))
                                & (F.col("b.rank") == F.col("a.rank") + 1))
           .where(F.col("b.score") > F.col("a.score")))
    assert bad.count() == 0
    # No item the user has already touched.
    seen = (tables.read(spark, tables.location(cfg.tables_root, schema.EVENTS))
            .select("user_id", "item_id").distinct())
    assert recs.join(seen, ["user_id", "item_id"]).count() == 0
    # Calibrated probabilities: for model lists, in (0, 1], ordered like the scores, at most 1 per
    # list; none for popularity lists.
    model_rows = recs.where(F.col("served_by").isin("history", "profile"))
    assert model_rows.where(F.col("probability").isNull() | (F.col("probability") <= 0)
                            | (F.col("probability") > 1)).count() == 0
    assert recs.where(F.col("served_by").isin("segment_popularity", "popularity")
                      & F.col("probability").isNotNull()).count() == 0
    assert model_rows.groupBy("user_id").agg(F.sum("probability").alias("p")).agg(F.max("p")).first()[0] <= 1.0
    worse = (model_rows.alias("a").join(model_rows.alias("b"), (F.col("a.user_id") == F.col("b.user_id"))
                                        & (F.col("b.rank") == F.col("a.rank") + 1))
             .where(F.col("b.probability") > F.col("a.probability") * (1 + 1e-5)))
    assert worse.count() == 0
    # Purchase probabilities (the shop has purchases): for model lists only, in (0, 1], at most 1 per
    # list and on average below the chance of a next interaction.
    assert model_rows.where(F.col("purchase_probability").isNull() | (F.col("purchase_probability") <= 0)
                            | (F.col("purchase_probability") > 1)).count() == 0
    assert recs.where(F.col("served_by").isin("segment_popularity", "popularity")
                      & F.col("purchase_probability").isNotNull()).count() == 0
    means = model_rows.agg(F.avg("probability").alias("p"), F.avg("purchase_probability").alias("buy")).first()
    assert means.buy < means.p


@pytest.mark.slow
def test_item_kinds_make_lists_of_one_kind_of_catalog(spark, shop_copy):
    cfg = shop_copy
    content_loc = tables.location(cfg.tables_root, schema.ITEM_CONTENT)
    offers = [f"i{i:06d}" for i in range(0, 120, 6)]  # 20 items become offers
    tables.overwrite(tables.read(spark, content_loc).withColumn(
        "kind", F.when(F.col("item_id").isin(offers), "offer").otherwise("product")), content_loc)
    newest = tables.newest_feature_set(spark, cfg.tables_root)  # as if features had written the kinds
    tables.record_feature_set(spark, cfg.tables_root, "kinds", {**newest.versions,
                                                               schema.ITEM_CONTENT: tables.version(spark, content_loc)})
    actions = make_config(cfg.paths.root, score={"k": 3, "run_date": "2026-07-04", "item_kinds": ["offer"]})
    cli.run_stage(spark, actions, "score")
    got = _recs(spark, cfg).where(F.col("run_date") == "2026-07-04")
    assert got.select("user_id").distinct().count() == 606 and got.count() >= 606 * 2
    assert {r.item_id for r in got.select("item_id").distinct().collect()} <= set(offers)
    # Probabilities stay the model's over the whole catalog: offers are a small part of it.
    assert got.where(F.col("served_by") == "history").groupBy("user_id").agg(F.sum("probability").alias("p")) \
        .agg(F.avg("p")).first()[0] < 0.5
    with pytest.raises(ValueError, match=r"score.item_kinds is \['article'\].*its kinds: \['offer', 'product'\]"):
        cli.run_stage(spark, make_config(cfg.paths.root, score={"k": 3, "item_kinds": ["article"]}), "score")


@pytest.mark.slow
def test_expected_revenue_ranks_by_probability_times_price(spark, shop_copy):
    cfg = shop_copy
    relevance = _recs(spark, cfg).where(F.col("run_date") == "2026-07-01")
    valued = make_config(cfg.paths.root, score={"k": 10, "run_date": "2026-07-03", "objective": "expected_revenue"})
    cli.run_stage(spark, valued, "score")
    got = _recs(spark, cfg).where((F.col("run_date") == "2026-07-03") & (F.col("served_by") == "history"))
    prices = tables.read(spark, tables.location(cfg.tables_root, schema.ITEM_CONTENT)).select("item_id", "price")
    rows = got.join(prices, "item_id")
    # score = probability x price, non-increasing with rank.
    assert rows.where(F.abs(F.col("score") - F.col("probability") * F.col("price")) > 1e-3 * F.col("score")).count() == 0
    drops = (rows.alias("a").join(rows.alias("b"), (F.col("a.user_id") == F.col("b.user_id"))
                                  & (F.col("b.rank") == F.col("a.rank") + 1)).where(F.col("b.score") > F.col("a.score") * (1 + 1e-5)))
    assert drops.count() == 0
    # Each user's list is worth about as much as their relevance list or more (the best k by the
    # temperature-scaled expected value; the shown probabilities add a monotone, not linear,
    # correction), and clearly more in total.
    ev = lambda df, name: (df.join(prices, "item_id").groupBy("user_id")  # noqa: E731
                           .agg(F.sum(F.col("probability") * F.col("price")).alias(name)))
    both = ev(got, "valued").join(ev(relevance.where(F.col("served_by") == "history"), "relevant"), "user_id")
    assert both.count() > 500
    assert both.where(F.col("valued") < F.col("relevant") * 0.97).count() == 0
    totals = both.agg(F.sum("valued"), F.sum("relevant")).first()
    assert totals[0] > 1.02 * totals[1]


@pytest.mark.slow
def test_exploring_lists_carry_propensities_and_a_rerun_of_a_date_replaces_it_alone(spark, shop_copy):
    cfg = shop_copy
    first = _recs(spark, cfg).where(F.col("run_date") == "2026-07-01")
    before = first.count()
    assert first.where(F.col("propensity") != 1.0).count() == 0  # no exploration: every item shown for sure
    exploring = make_config(cfg.paths.root, score={"k": 10, "run_date": "2026-07-02", "explore_slots": 3,
                                                   "explore_pool": 20})
    cli.run_stage(spark, exploring, "score")
    once = {tuple(r) for r in _recs(spark, cfg).where(F.col("run_date") == "2026-07-02")
            .select("user_id", "rank", "item_id", "propensity").collect()}
    cli.run_stage(spark, exploring, "score")  # the same date again: replaced by the same draws
    recs = _recs(spark, cfg)
    counts = {str(r.run_date): r["count"] for r in recs.groupBy("run_date").count().collect()}
    assert counts == {"2026-07-01": before, "2026-07-02": before}
    again = recs.where(F.col("run_date") == "2026-07-02")
    assert {tuple(r) for r in again.select("user_id", "rank", "item_id", "propensity").collect()} == once

    # Model lists: the first 7 are the unexplored list's first 7 (propensity 1); the last 3 are drawn
    # from the next 20 candidates (propensity 3/20), so they are mostly not its ranks 8-10.
    model = again.where(F.col("served_by") == "history")
    base = first.where(F.col("served_by") == "history").select("user_id", "item_id", F.col("rank").alias("was"))
    rows = model.join(base, ["user_id", "item_id"], "left")
    assert rows.where((F.col("rank") <= 7) & ((F.col("was") != F.col("rank")) | (F.col("propensity") != 1.0))).count() == 0
    explored = rows.where(F.col("rank") > 7)
    assert explored.where(F.abs(F.col("propensity") - 3 / 20) > 1e-6).count() == 0
    assert explored.where(F.col("was") <= 7).count() == 0
    assert explored.where(F.col("was").isNull()).count() > 0.5 * explored.count()
    # Popularity lists (users the model cannot serve) do not explore.
    assert again.where(F.col("served_by").isin("segment_popularity", "popularity")
                       & (F.col("propensity") != 1.0)).count() == 0


@pytest.mark.slow
def test_explanations_are_items_of_the_users_own_history(spark, shop):
    cfg, _ = shop
    recs = _recs(spark, cfg).where(F.col("run_date") == "2026-07-01")
    seqs = tables.read(spark, tables.location(cfg.tables_root, schema.SEQUENCES))
    index = tables.read(spark, tables.location(cfg.tables_root, schema.ITEM_INDEX))
    history = (seqs.select("user_id", F.explode("items").alias("item_idx")).join(index, "item_idx")
               .select("user_id", F.col("item_id").alias("because")).distinct())
    because = recs.select("user_id", "item_id", F.explode("because_item_ids").alias("because"))
    assert because.count() > 0
    assert because.join(history, ["user_id", "because"], "left_anti").count() == 0
    sizes = {r.n for r in recs.where(F.col("served_by") == "history")
             .select(F.size("because_item_ids").alias("n")).distinct().collect()}
    assert sizes <= {1, 2, 3} and 3 in sizes


@pytest.mark.slow
def test_business_rules_remove_ineligible_items_and_cap_categories(spark, shop_copy):
    cfg = shop_copy
    recs = _recs(spark, cfg).where(F.col("run_date") == "2026-07-01")
    top = [r.item_id for r in recs.groupBy("item_id").count().orderBy(F.desc("count"), "item_id").limit(5).collect()]
    elig_path = tables.location(cfg.tables_root, "silver/eligibility")
    rows = [(i, False) for i in top] + [("i000001", True)]
    tables.overwrite(spark.createDataFrame(rows, "item_id string, eligible boolean"), elig_path)
    ruled = make_config(cfg.paths.root, score={"k": 10, "run_date": "2026-07-05", "eligibility": "silver/eligibility",
                                               "max_per_category": 2})
    cli.run_stage(spark, ruled, "score")
    got = _recs(spark, cfg).where(F.col("run_date") == "2026-07-05")
    n_users = recs.select("user_id").distinct().count()
    assert got.count() == n_users * 10
    assert got.where(F.col("item_id").isin(top)).count() == 0
    cats = tables.read(spark, tables.location(cfg.tables_root, schema.ITEM_CONTENT)).select("item_id", "category")
    per_cat = got.join(cats, "item_id").groupBy("user_id", "category").count()
    assert per_cat.agg(F.max("count")).first()[0] == 2
    # A different eligibility version forbids carrying yesterday's lists forward.
    runs = tables.read(spark, tables.location(cfg.tables_root, schema.SCORE_RUNS)).orderBy(F.desc("finished_at")).first()
    assert runs.mode == "full" and runs.eligibility_version == tables.version(spark, elig_path)


@pytest.mark.slow
def test_incremental_scoring_equals_a_full_run_for_changed_users(spark, shop_copy, tmp_path):
    import pandas as pd

    cfg = shop_copy
    root = cfg.paths.root
    base = make_config(root, score={"k": 10, "run_date": "2026-07-10", "mode": "full"})
    cli.run_stage(spark, base, "score")
    seqs = tables.read(spark, tables.location(cfg.tables_root, schema.SEQUENCES))
    changed = [r.user_id for r in seqs.select("user_id").orderBy("user_id").limit(6).collect()]
    new = pd.DataFrame({
        "user_id": changed + ["u_new_1"],
        "item_id": ["i000003", "i000004", "i000005", "i000006", "i000007", "i000008", "i000009"],
        "event_type": ["purchase", "view", "view", "add_to_cart", "view", "view", "view"],
        "timestamp": pd.to_datetime(["2026-07-10 12:00:00"] * 7),
    })
    (tmp_path / "new").mkdir()
    new.to_parquet(tmp_path / "new" / "events.parquet")
    cli.run_stage(spark, make_config(root, ingest={"events": str(tmp_path / "new")}), "ingest")
    cli.run_stage(spark, base, "features")
    inc = make_config(root, score={"k": 10, "run_date": "2026-07-11", "mode": "incremental"})
    out = cli.run_stage(spark, inc, "score")
    assert out["mode"] == "incremental", out["reason"]
    n_before = tables.read(spark, tables.location(cfg.tables_root, schema.RECOMMENDATIONS)).where(
        F.col("run_date") == "2026-07-10").select("user_id").distinct().count()
    assert out["users_scored"] == 7 and out["users_carried"] == n_before - 6
    # The latest table gets only the rescored users' rows: it then holds the new partition's lists,
    # and everyone else's rows are the ones made on 2026-07-10, not rewritten.
    latest_loc = tables.location(cfg.tables_root, schema.RECOMMENDATIONS_LATEST)
    latest = tables.read(spark, latest_loc)
    partition = _recs(spark, cfg).where(F.col("run_date") == "2026-07-11")

    def lists(df):
        return sorted(tuple(r) for r in df.select("user_id", "rank", "item_id").collect())

    assert lists(latest) == lists(partition)
    made = {r.user_id: str(r.run_date) for r in latest.select("user_id", "run_date").distinct().collect()}
    assert {u for u, d in made.items() if d == "2026-07-11"} == set(changed + ["u_new_1"])
    assert set(made.values()) == {"2026-07-10", "2026-07-11"}
    cli.run_stage(spark, make_config(root, score={"k": 10, "run_date": "2026-07-12", "mode": "full"}), "score")

    recs = _recs(spark, cfg).drop("model_run_id")

    def day(d, users, exclude=False):
        df = recs.where(F.col("run_date") == d).drop("run_date")
        df = df.where(~F.col("user_id").isin(users) if exclude else F.col("user_id").isin(users))
        rows = sorted((r.user_id, r.rank, r.item_id, tuple(r.because_item_ids), r.score) for r in df.collect())
        return [r[:4] for r in rows], np.array([r[4] for r in rows])

    def same(a, b):
        # Lists, ranks and explanations exactly; scores to float32 rounding (batches differ).
        assert a[0] == b[0]
        np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-6)

    everyone_changed = changed + ["u_new_1"]
    same(day("2026-07-11", everyone_changed), day("2026-07-12", everyone_changed))
    assert len(day("2026-07-11", ["u_new_1"])[0]) == 10
    # The other users' lists are carried forward unchanged from the previous run.
    same(day("2026-07-11", everyone_changed, exclude=True), day("2026-07-10", everyone_changed, exclude=True))
    # A full run rewrites the latest table whole: it is that run's partition.
    latest = tables.read(spark, latest_loc)
    assert {str(r.run_date) for r in latest.select("run_date").distinct().collect()} == {"2026-07-12"}


def test_the_latest_lists_count_as_rewritten_by_another_jobs_write_not_by_a_compaction(spark, tmp_path):
    """Whether the last run's latest lists are still there (an incremental run then replaces only
    the rescored users' rows, and the refresh stream keeps going) is read from the commits since."""
    loc = str(tmp_path / "latest")
    lists = spark.createDataFrame([("u1", 1, "i1"), ("u2", 1, "i2")], "user_id string, rank int, item_id string")
    tables.overwrite(lists, loc, metadata={"mode": "full"}, deletion_vectors=True)
    scored = tables.version(spark, loc)
    # The refresh stream replaces a user's list, then the table is compacted (Delta's auto
    # compaction after such a write, or a scheduled OPTIMIZE): the same lists in fewer files.
    tables.replace_groups(spark, lists.where("user_id = 'u1'"), loc, "user_id", ["user_id", "rank"],
                          spark.createDataFrame([("u1",)], "user_id string"), {"refresh_events_version": 7})
    tables.delta_table(spark, loc).optimize().executeCompaction()
    assert tables.delta_table(spark, loc).history(1).first().operation == tables.COMPACTION
    assert score.latest_rewrites(spark, loc, scored) == (None, scored + 2)
    # Any other write is another job's.
    tables.overwrite(lists, loc, deletion_vectors=True)
    assert score.latest_rewrites(spark, loc, scored) == (f"version {scored + 3} (WRITE)", scored + 2)


@pytest.mark.slow
def test_new_users_and_new_items_are_served_by_the_nightly_run(spark, shop_copy):
    cfg = shop_copy
    recs = _recs(spark, cfg).where(F.col("run_date") == "2026-07-01")
    # New sign-ups (a profile, no events) are served by the model's profile path, without
    # explanations (they have no history); everyone else by their history.
    paths = {r.served_by: r["count"] for r in recs.select("user_id", "served_by").distinct()
             .groupBy("served_by").count().collect()}
    assert paths == {"history": 600, "profile": 6}
    new_users = recs.where(F.col("user_id").startswith("u9"))
    assert new_users.select("user_id").distinct().count() == 6
    assert new_users.where(F.col("served_by") != "profile").count() == 0
    assert new_users.where(F.size("because_item_ids") > 0).count() == 0
    # The lists come from the declared profile: users whose profiles differ get different lists.
    lists = {}
    for r in new_users.groupBy("user_id").agg(F.sort_array(F.collect_list(F.struct("rank", "item_id"))).alias("l")).collect():
        lists[r.user_id] = tuple(x.item_id for x in r.l)
    profiles = {r.user_id: tuple(r.profile_cat) for r in tables.read(spark, tables.location(cfg.tables_root, schema.USER_PROFILE))
                .join(tables.read(spark, tables.location(cfg.tables_root, schema.USER_INDEX)), "user_idx")
                .where(F.col("user_id").isin(list(lists))).collect()}
    assert len(set(profiles.values())) >= 2
    for a in lists:
        for b in lists:
            assert (lists[a] == lists[b]) == (profiles[a] == profiles[b]), (a, b)
    # New items (content, no events) are in the catalog and eligible: with only them allowed, every
    # user gets all four, ranked by the model's content path (orders differ between users).
    content = tables.read(spark, tables.location(cfg.tables_root, schema.ITEM_CONTENT))
    new_items = sorted(r.item_id for r in content.where(F.col("item_id").startswith("n9")).collect())
    assert len(new_items) == 4
    elig_path = tables.location(cfg.tables_root, "silver/only_new")
    tables.overwrite(content.select("item_id", F.col("item_id").startswith("n9").alias("eligible")), elig_path)
    only_new = make_config(cfg.paths.root, score={"k": 10, "run_date": "2026-07-09", "eligibility": "silver/only_new"})
    cli.run_stage(spark, only_new, "score")
    got = _recs(spark, cfg).where(F.col("run_date") == "2026-07-09")
    per_user = got.groupBy("user_id").agg(F.sort_array(F.collect_list("item_id")).alias("items"))
    assert per_user.count() == tables.read(spark, tables.location(cfg.tables_root, schema.USER_INDEX)).count()
    assert per_user.where(F.col("items") != F.array(*[F.lit(i) for i in new_items])).count() == 0
    orders = got.where(F.col("rank") == 1).groupBy("item_id").count().collect()
    assert len(orders) >= 2
    assert got.where(F.isnan("score")).count() == 0
    # A "new arrivals" slot: every list keeps 10 items, holds at least one new item, stays sorted.
    slot = make_config(cfg.paths.root, score={"k": 10, "run_date": "2026-07-10", "new_item_slots": 1})
    cli.run_stage(spark, slot, "score")
    got = _recs(spark, cfg).where(F.col("run_date") == "2026-07-10")
    per_user = got.groupBy("user_id").agg(F.count("*").alias("n"),
                                          F.sum(F.col("item_id").startswith("n9").cast("int")).alias("new"))
    assert per_user.count() == tables.read(spark, tables.location(cfg.tables_root, schema.USER_INDEX)).count()
    assert per_user.where((F.col("n") != 10) | (F.col("new") < 1)).count() == 0
    bad = (got.alias("a").join(got.alias("b"), (F.col("a.user_id") == F.col("b.user_id"))
                               & (F.col("b.rank") == F.col("a.rank") + 1)).where(F.col("b.score") > F.col("a.score")))
    assert bad.count() == 0
