"""End to end on a small synthetic shop: the nightly stages on real Spark, Delta, Petastorm, Horovod."""
import numpy as np
import pytest
from pyspark.sql import functions as F

from conftest import make_config
from recsys_spark import cli, schema, tables
from recsys_spark.generate import generate


@pytest.fixture(scope="module")
def shop(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    cfg = make_config(
        root,
        generate={"users": 600, "items": 120, "events": 30000, "corrupt_fraction": 0.002, "cold_users": 6,
                  "cold_items": 4},
        features={"max_seq_len": 20, "train_files": 4},
        train={"epochs": 8, "batch_size": 64, "d_model": 32, "lr": 0.005},
        score={"k": 10, "run_date": "2026-07-01"},
    )
    generate(cfg.generate, cfg.paths.raw)
    timings = cli.run_stage(spark, cfg, "nightly")
    return cfg, timings


def _recs(spark, cfg):
    return tables.read(spark, tables.path(cfg.tables_dir, schema.RECOMMENDATIONS))


@pytest.mark.slow
def test_attention_beats_popularity_by_a_clear_margin(spark, shop):
    cfg, _ = shop
    m = tables.read(spark, tables.path(cfg.tables_dir, schema.METRICS)).where(F.col("k") == 10)
    got = {(r.model, r.metric): r.value for r in m.collect()}
    assert got[("attention", "ndcg")] > 2 * got[("popularity", "ndcg")]
    assert got[("attention", "ndcg")] > 0.15
    assert got[("attention", "recall")] > got[("popularity", "recall")]


@pytest.mark.slow
def test_recommendations_contract(spark, shop):
    cfg, _ = shop
    recs = _recs(spark, cfg).where(F.col("run_date") == "2026-07-01")
    # Every known user, with events or only a profile, gets a full list.
    n_users = tables.read(spark, tables.path(cfg.tables_dir, schema.USER_INDEX)).count()
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
    seen = (tables.read(spark, tables.path(cfg.tables_dir, schema.EVENTS))
            .select("user_id", "item_id").distinct())
    assert recs.join(seen, ["user_id", "item_id"]).count() == 0


@pytest.mark.slow
def test_rescoring_a_date_replaces_its_partition_only(spark, shop):
    cfg, _ = shop
    before = _recs(spark, cfg).where(F.col("run_date") == "2026-07-01").count()
    other = make_config(cfg.paths.root, score={"k": 10, "run_date": "2026-07-02"})
    cli.run_stage(spark, other, "score")
    cli.run_stage(spark, cfg, "score")  # same date again
    recs = _recs(spark, cfg)
    counts = {str(r.run_date): r["count"] for r in recs.groupBy("run_date").count().collect()}
    assert counts == {"2026-07-01": before, "2026-07-02": before}
    assert recs.where(F.col("run_date") == "2026-07-01").select("user_id", "rank").distinct().count() == before


@pytest.mark.slow
def test_checkpoint_records_source_versions(spark, shop):
    import json
    import os

    from recsys_spark.train import latest_checkpoint

    cfg, _ = shop
    path = latest_checkpoint(cfg.models_dir)
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    train_path = tables.path(cfg.tables_dir, schema.TRAIN_EXAMPLES)
    assert manifest["data_versions"][schema.TRAIN_EXAMPLES] == tables.version(spark, train_path)
    history = manifest["history"]
    assert 1 <= len(history) <= 8 and all("valid_ndcg@10" in h for h in history)
    # The checkpoint keeps the epoch with the best validation NDCG@10 (early stopping).
    assert manifest["best_epoch"] == max(history, key=lambda h: h["valid_ndcg@10"])["epoch"]
    assert manifest["model_config"]["n_items"] == 125  # 120 items + 4 new ones (no events) + padding


@pytest.mark.slow
def test_reingesting_the_same_raw_files_changes_nothing_downstream(spark, shop):
    cfg, _ = shop
    events = tables.path(cfg.tables_dir, schema.EVENTS)
    n = tables.read(spark, events).count()
    cli.run_stage(spark, cfg, "ingest")
    assert tables.read(spark, events).count() == n
    q = tables.read(spark, tables.path(cfg.tables_dir, schema.QUARANTINE))
    assert q.count() > 0 and q.where(F.col("source_file").isNull()).count() == 0


@pytest.mark.slow
def test_explanations_are_items_of_the_users_own_history(spark, shop):
    cfg, _ = shop
    recs = _recs(spark, cfg).where(F.col("run_date") == "2026-07-01")
    seqs = tables.read(spark, tables.path(cfg.tables_dir, schema.SEQUENCES))
    index = tables.read(spark, tables.path(cfg.tables_dir, schema.ITEM_INDEX))
    history = (seqs.select("user_id", F.explode("items").alias("item_idx")).join(index, "item_idx")
               .select("user_id", F.col("item_id").alias("because")).distinct())
    because = recs.select("user_id", "item_id", F.explode("because_item_ids").alias("because"))
    assert because.count() > 0
    assert because.join(history, ["user_id", "because"], "left_anti").count() == 0
    sizes = {r.n for r in recs.where(F.col("served_by") == "history")
             .select(F.size("because_item_ids").alias("n")).distinct().collect()}
    assert sizes <= {1, 2, 3} and 3 in sizes


@pytest.mark.slow
def test_business_rules_remove_ineligible_items_and_cap_categories(spark, shop):
    cfg, _ = shop
    recs = _recs(spark, cfg).where(F.col("run_date") == "2026-07-01")
    top = [r.item_id for r in recs.groupBy("item_id").count().orderBy(F.desc("count"), "item_id").limit(5).collect()]
    elig_path = tables.path(cfg.tables_dir, "silver/eligibility")
    rows = [(i, False) for i in top] + [("i000001", True)]
    tables.overwrite(spark.createDataFrame(rows, "item_id string, eligible boolean"), elig_path)
    ruled = make_config(cfg.paths.root, score={"k": 10, "run_date": "2026-07-05", "eligibility": "silver/eligibility",
                                               "max_per_category": 2})
    cli.run_stage(spark, ruled, "score")
    got = _recs(spark, cfg).where(F.col("run_date") == "2026-07-05")
    n_users = recs.select("user_id").distinct().count()
    assert got.count() == n_users * 10
    assert got.where(F.col("item_id").isin(top)).count() == 0
    cats = tables.read(spark, tables.path(cfg.tables_dir, schema.ITEM_CONTENT)).select("item_id", "category")
    per_cat = got.join(cats, "item_id").groupBy("user_id", "category").count()
    assert per_cat.agg(F.max("count")).first()[0] == 2
    # A different eligibility version forbids carrying yesterday's lists forward.
    runs = tables.read(spark, tables.path(cfg.tables_dir, schema.SCORE_RUNS)).orderBy(F.desc("finished_at")).first()
    assert runs.mode == "full" and runs.eligibility_version == tables.version(spark, elig_path)


@pytest.mark.slow
def test_retraining_cadence_counts_nights_served(spark, shop):
    cfg, _ = shop
    weekly = make_config(cfg.paths.root, train={"retrain_every": 7})
    due, why = cli.retrain_due(spark, weekly)
    assert not due and "of 7 night(s)" in why
    nightly = make_config(cfg.paths.root, train={"retrain_every": 1})
    assert cli.retrain_due(spark, nightly)[0]


@pytest.mark.slow
def test_simulated_ab_test_reads_out_the_better_model(spark, shop):
    cfg, _ = shop
    out = cli.run_stage(spark, cfg, "abtest-simulate")
    n_test = tables.read(spark, tables.path(cfg.tables_dir, schema.SEQUENCES)).where(F.col("test_target").isNotNull()).count()
    assert out["rows"] == n_test
    r = cli.run_stage(spark, cfg, "abtest")
    assert not r["srm"]["mismatch"]
    b = r["variants"]["B"]  # attention vs popularity
    assert b["ctr"]["diff"] > 0 and b["ctr"]["p_value"] < 0.01 and b["ctr"]["ci_low"] > 0
    assert b["n_control"] + b["n_treatment"] == n_test


@pytest.mark.slow
def test_evaluation_records_beyond_accuracy_metrics(spark, shop):
    cfg, _ = shop
    m = tables.read(spark, tables.path(cfg.tables_dir, schema.METRICS)).where(F.col("k") == 10)
    got = {(r.model, r.metric): r.value for r in m.collect()}
    for model in ("attention", "popularity"):
        for metric in ("mrr", "map", "hitrate", "coverage", "gini", "novelty", "ild", "pop_share"):
            assert (model, metric) in got
    # Popularity recommends (almost) the same items to everyone: lower coverage, higher Gini.
    assert got[("attention", "coverage")] > got[("popularity", "coverage")]
    assert got[("attention", "gini")] < got[("popularity", "gini")]
    sl = tables.read(spark, tables.path(cfg.tables_dir, schema.METRIC_SLICES)).where(F.col("model") == "attention")
    kinds = {r.kind for r in sl.select("kind").distinct().collect()}
    assert {"activity", "user_history", "target_item", "age_band", "gender", "region",
            "exposure:popularity_decile", "exposure:category"} <= kinds
    # Every test user is in exactly one activity bucket.
    n_test = m.where((F.col("model") == "attention") & (F.col("metric") == "recall")).first().n_users
    buckets = sl.where((F.col("kind") == "activity") & (F.col("metric") == "ndcg")).agg(F.sum("n_users")).first()[0]
    assert buckets == n_test
    shares = sl.where((F.col("kind") == "exposure:popularity_decile") & (F.col("metric") == "rec_share"))
    assert shares.agg(F.sum("value")).first()[0] == pytest.approx(1.0)
    gap = {r.metric: r.value for r in sl.where((F.col("kind") == "gender") & (F.col("group") == "<gap>")).collect()}
    assert gap["ndcg_gap"] >= 0 and 0 <= gap["ndcg_gap_ci_low"] < gap["ndcg_gap_ci_high"] < 1


@pytest.mark.slow
def test_train_and_evaluate_runs_are_tracked_in_mlflow(spark, shop):
    import os

    from mlflow.tracking import MlflowClient

    from recsys_spark.train import latest_checkpoint

    cfg, _ = shop
    client = MlflowClient(f"file:{cfg.paths.root}/mlruns")
    exp = client.get_experiment_by_name("recsys-spark")
    runs = client.search_runs([exp.experiment_id])
    model_run = os.path.basename(latest_checkpoint(cfg.models_dir))
    train = [r for r in runs if r.data.tags.get("stage") == "train"]
    assert [r.data.tags["model_run_id"] for r in train] == [model_run]
    t = train[0]
    assert t.data.params["train.epochs"] == "8" and t.data.params["model.n_items"] == "125"
    losses = client.get_metric_history(t.info.run_id, "loss")
    assert 1 <= len(losses) <= 8
    assert len(client.get_metric_history(t.info.run_id, "valid_ndcg_at_10")) == len(losses)
    assert "checkpoint/model.pt" in [a.path for a in client.list_artifacts(t.info.run_id, "checkpoint")]
    ev = [r for r in runs if r.data.tags.get("stage") == "evaluate" and r.data.tags["model_run_id"] == model_run]
    m = tables.read(spark, tables.path(cfg.tables_dir, schema.METRICS))
    first_eval = m.where((F.col("model") == "attention") & (F.col("metric") == "ndcg") & (F.col("k") == 10)).orderBy("evaluated_at").first()
    logged = {r.data.tags["eval_id"]: r.data.metrics["attention.ndcg_at_10"] for r in ev}
    assert logged[first_eval.eval_run_id] == pytest.approx(first_eval.value)


@pytest.mark.slow
def test_html_report_is_self_contained_and_renders_without_console_errors(spark, shop, tmp_path):
    import re

    from recsys_spark.report import check_rendering

    cfg, _ = shop
    cli.run_stage(spark, cfg, "evaluate")  # a second evaluation: the report compares with the previous one
    path = cli.run_stage(spark, cfg, "report")
    doc = open(path).read()
    assert not re.search(r'(src|href)="(https?:)?//', doc)  # nothing loaded from outside
    assert len(re.findall(r'src="data:image/png;base64,', doc)) == 4  # activity, exposure, training, A/B
    for text in ("Headline metrics", "attention", "popularity", "Against the previous run", "because you viewed",
                 "sample ratio"):
        assert text in doc
    png = tmp_path / "report.png"
    assert check_rendering(path, str(png)) == []
    assert png.stat().st_size > 50_000
    # The check does catch a page error.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>notDefined()</script></body></html>")
    assert any("notDefined" in e for e in check_rendering(str(bad), str(tmp_path / "bad.png")))


@pytest.mark.slow
def test_incremental_scoring_equals_a_full_run_for_changed_users(spark, shop, tmp_path):
    """Runs last in this module: it adds events (a new user included) to the shop."""
    import pandas as pd

    cfg, _ = shop
    root = cfg.paths.root
    base = make_config(root, score={"k": 10, "run_date": "2026-07-10", "mode": "full"})
    cli.run_stage(spark, base, "score")
    seqs = tables.read(spark, tables.path(cfg.tables_dir, schema.SEQUENCES))
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
    n_before = tables.read(spark, tables.path(cfg.tables_dir, schema.RECOMMENDATIONS)).where(
        F.col("run_date") == "2026-07-10").select("user_id").distinct().count()
    assert out["users_scored"] == 7 and out["users_carried"] == n_before - 6
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
    # The latest table is the last run's partition.
    latest = tables.read(spark, tables.path(cfg.tables_dir, schema.RECOMMENDATIONS_LATEST))
    assert {str(r.run_date) for r in latest.select("run_date").distinct().collect()} == {"2026-07-12"}


@pytest.mark.slow
def test_new_users_and_new_items_are_served_by_the_nightly_run(spark, shop):
    cfg, _ = shop
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
    # Users of different declared profiles get different lists.
    assert new_users.where(F.col("rank") == 1).select("item_id").distinct().count() >= 1
    # New items (content, no events) are in the catalog and eligible: with only them allowed, every
    # user gets all four, ranked by the model's content path (orders differ between users).
    content = tables.read(spark, tables.path(cfg.tables_dir, schema.ITEM_CONTENT))
    new_items = sorted(r.item_id for r in content.where(F.col("item_id").startswith("n9")).collect())
    assert len(new_items) == 4
    elig_path = tables.path(cfg.tables_dir, "silver/only_new")
    tables.overwrite(content.select("item_id", F.col("item_id").startswith("n9").alias("eligible")), elig_path)
    only_new = make_config(cfg.paths.root, score={"k": 10, "run_date": "2026-07-09", "eligibility": "silver/only_new"})
    cli.run_stage(spark, only_new, "score")
    got = _recs(spark, cfg).where(F.col("run_date") == "2026-07-09")
    per_user = got.groupBy("user_id").agg(F.sort_array(F.collect_list("item_id")).alias("items"))
    assert per_user.count() == tables.read(spark, tables.path(cfg.tables_dir, schema.USER_INDEX)).count()
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
    assert per_user.count() == tables.read(spark, tables.path(cfg.tables_dir, schema.USER_INDEX)).count()
    assert per_user.where((F.col("n") != 10) | (F.col("new") < 1)).count() == 0
    bad = (got.alias("a").join(got.alias("b"), (F.col("a.user_id") == F.col("b.user_id"))
                               & (F.col("b.rank") == F.col("a.rank") + 1)).where(F.col("b.score") > F.col("a.score")))
    assert bad.count() == 0
