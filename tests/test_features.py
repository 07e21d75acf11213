"""Features contract on a hand-checkable shop, with real Spark and Delta."""
import math
import shutil

import pytest

from conftest import make_config
from recsys_spark import features, ingest, schema, tables

HEADER = "event_id,user_id,item_id,event_type,timestamp\n"
# u1's newest event is at 2026-01-03 00:00:00, u2's at 2026-01-02 06:00:00
EVENTS = [
    "e1,u1,i1,view,2026-01-01 00:00:00",
    "e2,u1,i1,add_to_cart,2026-01-01 00:01:00",
    "e3,u1,i2,view,2026-01-02 00:00:00",
    "e4,u1,i3,view,2026-01-02 12:00:00",
    "e5,u1,i3,purchase,2026-01-03 00:00:00",
    "e6,u2,i2,view,2026-01-02 00:00:00",
    "e7,u2,i1,view,2026-01-02 06:00:00",
]


FEATURES = {"half_life_days": 1.0, "max_seq_len": 2, "train_files": 2}


def _setup(tmp_path, events=EVENTS, **sections):
    d = tmp_path / "raw"
    (d / "events").mkdir(parents=True, exist_ok=True)
    (d / "events" / "a.csv").write_text(HEADER + "\n".join(events) + "\n")
    (d / "items").mkdir(exist_ok=True)
    # Upstream vectors: i1 and i2 of width 3 (two spellings), i3 none, i4 another encoder's width.
    (d / "items" / "i.csv").write_text("item_id,title,category,brand,price,tags,embedding\n"
                                       "i1,Phone One,Phone,Acme,100,Drama|Comedy,1 0 2\n"
                                       "i2,Case Two,Case,Acme,10,Comedy,\"[0.5, 1, 0]\"\n"
                                       "i3,Phone Three,Phone,Globex,200,,\ni4,New Case,Case,Globex,12,,3 1\n")
    (d / "users").mkdir(exist_ok=True)
    (d / "users" / "u.csv").write_text("user_id,age_band,gender,region\nu1,25-34,F,north\nu2,55+,M,south\n")
    sections.setdefault("features", FEATURES)
    return make_config(tmp_path, **sections)


def _days_since_1970(when: str) -> float:
    from datetime import datetime, timezone

    return datetime.fromisoformat(when).replace(tzinfo=timezone.utc).timestamp() / 86400


def _read(spark, cfg, name, version=None):
    return tables.read(spark, tables.location(cfg.tables_root, name), version)


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    """The hand-checkable shop, ingested and featurized once for the read-only tests below."""
    cfg = _setup(tmp_path_factory.mktemp("features"))
    ingest.run(spark, cfg)
    features.run(spark, cfg)
    return cfg


def test_user_item_weights_combine_event_types_and_decay(spark, built):
    cfg = built
    ui = _read(spark, cfg, schema.USER_ITEM)
    uidx = {r.user_id: r.user_idx for r in _read(spark, cfg, schema.USER_INDEX).collect()}
    iidx = {r.item_id: r.item_idx for r in _read(spark, cfg, schema.ITEM_INDEX).collect()}
    rows = ui.collect()
    w = {(r.user_idx, r.item_idx): r.weight for r in rows}
    # Ages count from the user's own newest event.
    # u1/i1: view (2 days old: 1 * 0.25) + cart 1 minute later (3 * 0.5 ** (2 - 1/1440))
    assert w[(uidx["u1"], iidx["i1"])] == pytest.approx(0.25 + 3 * 0.5 ** (2 - 1 / 1440))
    # u1/i3: view 12h old (0.5 ** 0.5) + purchase at u1's newest event (5)
    assert w[(uidx["u1"], iidx["i3"])] == pytest.approx(0.5 ** 0.5 + 5)
    # u2/i2: a view 6 hours before u2's newest event, however long ago u2 was active
    assert w[(uidx["u2"], iidx["i2"])] == pytest.approx(0.5 ** 0.25)
    assert {str(r.as_of) for r in rows if r.user_idx == uidx["u2"]} == {"2026-01-02 06:00:00"}
    assert len(w) == 5


def test_sequences_are_chronological_collapsed_and_split_leave_last_out(spark, built):
    cfg = built
    iidx = {r.item_id: r.item_idx for r in _read(spark, cfg, schema.ITEM_INDEX).collect()}
    seqs = {r.user_id: r for r in _read(spark, cfg, schema.SEQUENCES).collect()}
    u1 = seqs["u1"]
    # view i1, cart i1 (collapsed), view i2, view i3, purchase i3 (collapsed)
    assert u1.items == [iidx["i1"], iidx["i2"], iidx["i3"]]
    assert u1.train_items == [iidx["i1"]] and u1.valid_target == iidx["i2"] and u1.test_target == iidx["i3"]
    assert u1.item_bought == [False, False, True]  # the purchase of i3 follows its view: one step
    u2 = seqs["u2"]  # two items: training only
    assert u2.items == [iidx["i2"], iidx["i1"]] and u2.test_target is None and u2.train_items == u2.items


def test_time_split(spark):
    from datetime import datetime

    from recsys_spark.config import FeaturesConfig

    fc = FeaturesConfig(split="time", time_cutoff="2026-01-02 06:00:00")
    t = [datetime(2026, 1, 1), datetime(2026, 1, 2), datetime(2026, 1, 2, 12), datetime(2026, 1, 3)]
    seqs = spark.createDataFrame([(1, [1, 2, 3, 4], t), (2, [2, 1], t[1:3]), (3, [5, 6], t[:2])],
                                 "user_idx long, items array<int>, item_ts array<timestamp>")
    got = {r.user_idx: (r.train_items, r.valid_target, r.test_target) for r in features.split(seqs, fc).collect()}
    # Before the cut-off: history then the validation target; the first item after it is the test target.
    assert got[1] == ([1], 2, 3)
    assert got[2] == ([2], None, None)  # one item before the cut-off: nothing to validate on
    assert got[3] == ([5, 6], None, None)  # nothing after the cut-off: training only


def test_training_windows_are_padded_next_item_pairs(spark):
    df = spark.createDataFrame([(1, [1, 2, 3, 4, 5]), (2, [7]), (3, [8, 9])], "user_idx long, train_items array<int>")
    rows = sorted((r.user_idx, r.window, r.input, r.target) for r in features.training_windows(df, 3).collect())
    assert rows == [
        (1, 0, [2, 3, 4], [3, 4, 5]),
        (1, 1, [0, 0, 1], [0, 0, 2]),
        (3, 0, [0, 0, 8], [0, 0, 9]),
    ]


def test_profiles_and_item_content(spark, built):
    cfg = built
    uidx = {r.user_id: r.user_idx for r in _read(spark, cfg, schema.USER_INDEX).collect()}
    content = {r.item_id: r for r in _read(spark, cfg, schema.ITEM_CONTENT).collect()}
    assert content["i1"].category_idx == content["i3"].category_idx != content["i2"].category_idx
    assert content["i4"].title == "New Case" and content["i4"].price == 12.0
    prof = {r.user_idx: r for r in _read(spark, cfg, schema.USER_PROFILE).collect()}
    p1 = prof[uidx["u1"]]
    assert (p1.n_view, p1.n_add_to_cart, p1.n_purchase, p1.n_events, p1.n_items) == (3, 1, 1, 5, 3)
    assert p1.last_active_day == pytest.approx(_days_since_1970("2026-01-03 00:00:00"))
    assert prof[uidx["u2"]].last_active_day == pytest.approx(_days_since_1970("2026-01-02 06:00:00"))
    phone = content["i1"].category_idx
    assert p1.category_shares[phone] == pytest.approx(4 / 5)  # 4 of 5 events on phones
    assert sum(p1.category_shares) == pytest.approx(1.0)
    assert p1.age_band_idx > 0 and p1.gender_idx > 0 and p1.region_idx > 0
    assert prof[uidx["u2"]].age_band_idx != p1.age_band_idx
    assert len(p1.profile_num) == 8 + len(p1.category_shares)


def test_features_without_events_table_says_run_ingest(spark, tmp_path):
    cfg = make_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="run the 'ingest' stage"):
        features.run(spark, cfg)


def test_training_profile_sees_only_events_before_the_held_out_items(spark, built):
    cfg = built
    uidx = {r.user_id: r.user_idx for r in _read(spark, cfg, schema.USER_INDEX).collect()}
    prof = {r.user_idx: r for r in _read(spark, cfg, schema.USER_PROFILE).collect()}
    p1 = prof[uidx["u1"]]
    # u1: sequence i1, i2, i3 -> validation target i2 (2026-01-02 00:00); before it only e1, e2.
    n_events = len(schema.EVENT_TYPES)  # position of log1p(n_events) in profile_num
    assert p1.profile_num[n_events] == pytest.approx(math.log1p(5))
    assert p1.train_profile_num[n_events] == pytest.approx(math.log1p(2))
    assert p1.train_profile_num[0] == pytest.approx(math.log1p(1))  # one view before the cut
    # u2 has no held-out items (2 items): both profiles are the same.
    p2 = prof[uidx["u2"]]
    assert p2.train_profile_num == p2.profile_num


def test_feature_stats_are_the_training_profiles_moments_and_the_title_idf(spark, built):
    import numpy as np
    from pyspark.ml.feature import HashingTF

    cfg = built
    stats = features.read_stats(spark, tables.location(cfg.tables_root, schema.FEATURE_STATS))
    x = np.array([r.train_profile_num for r in _read(spark, cfg, schema.USER_PROFILE).collect()], dtype=np.float64)
    std = x.std(0)
    assert np.allclose(stats["profile_num_mean"], x.mean(0), atol=1e-6)
    assert np.allclose(stats["profile_num_std"], np.where(std > 1e-9, std, 1.0), atol=1e-6)
    prices = np.log1p([100, 10, 200, 12])
    assert stats["item_num_mean"][0] == pytest.approx(prices.mean(), rel=1e-6)
    # Title terms: "phone" is in two titles (kept), "three" in one (IDF 0: it would act as an id).
    tf = HashingTF(numFeatures=cfg.features.text_features)
    assert len(stats["idf"]) == cfg.features.text_features
    assert stats["idf"][tf.indexOf("phone")] > 0 and stats["idf"][tf.indexOf("three")] == 0
    content = {r.item_id: r for r in _read(spark, cfg, schema.ITEM_CONTENT).collect()}
    assert tf.indexOf("phone") in content["i3"].text_idx and tf.indexOf("three") in content["i3"].text_idx
    assert content["i3"].tag_ids == [] and list(content["i1"].item_num) == pytest.approx([math.log1p(100), 0.0])
    # Upstream vectors: the catalog's width is 3; i4's vector of width 2 is left out, like i3's missing one.
    assert content["i1"].item_vec == [1.0, 0.0, 2.0] and content["i2"].item_vec == [0.5, 1.0, 0.0]
    assert content["i3"].item_vec is None and content["i4"].item_vec is None
    assert stats["item_vec_mean"] == pytest.approx([0.75, 0.5, 1.0]) and stats["item_vec_std"] == pytest.approx([0.25, 0.5, 1.0])
    vec = features.item_feature_arrays(_read(spark, cfg, schema.ITEM_CONTENT))["vec"]
    assert vec.shape[1] == 3 and list(vec[content["i2"].item_idx]) == [0.5, 1.0, 0.0]
    assert np.isnan(vec[content["i4"].item_idx]).all()
    # Training histories: u1 [i1] (i2, i3 held out), u2 [i2, i1]: the 80th percentile is 2 items.
    assert stats["history_len_p80"] == [2.0]


def test_concurrent_runs_never_give_two_ids_one_number(spark, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    loc = str(tmp_path / "index")
    features.extend_index(spark, spark.createDataFrame([("a",), ("b",)], "id string"), loc, "id", "idx", 0)
    batches = [[f"x{i}" for i in range(50)], [f"y{i}" for i in range(50)] + ["x1"]]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda ids: features.extend_index(
            spark, spark.createDataFrame([(i,) for i in ids], "id string"), loc, "id", "idx", 0), batches))
    rows = tables.read(spark, loc).collect()
    assert len(rows) == 102 and len({r.id for r in rows}) == 102
    assert sorted(r.idx for r in rows) == list(range(102))


def _same(a, b) -> bool:
    """Rows equal, floats to 1e-9 relative (a sum over a user's events may add in another order)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_an_incremental_run_rebuilds_only_changed_users_keeps_every_number_and_equals_a_full_rebuild(
        spark, built, tmp_path):
    """Numbers given to user ids, item ids and tag values never change, whichever the mode; newcomers
    are numbered after them. An incremental run then holds what a full rebuild holds."""
    shutil.copytree(built.paths.root, tmp_path / "lake")
    cfg = make_config(tmp_path / "lake", features={**FEATURES, "mode": "incremental"})
    u1_before = _read(spark, cfg, schema.SEQUENCES).where("user_id = 'u1'").collect()
    before_u = {r.user_id: r.user_idx for r in _read(spark, cfg, schema.USER_INDEX).collect()}
    before_i = {r.item_id: r.item_idx for r in _read(spark, cfg, schema.ITEM_INDEX).collect()}
    assert sorted(before_i.values()) == [1, 2, 3, 4]  # i4 has no events but is in the catalog
    assert sorted(before_u.values()) == [0, 1]
    tags = {r.item_id: sorted(r.tag_ids) for r in _read(spark, cfg, schema.ITEM_CONTENT).collect()}
    comedy = set(tags["i1"]) & set(tags["i2"])
    assert len(tags["i1"]) == 2 and len(comedy) == 1 and tags["i3"] == []
    # u2 gets a third item (so now has held-out targets), n1 is a new user; u1 has nothing new. a0 and
    # h0 are new ids that sort before the old ones.
    (tmp_path / "lake" / "raw" / "events" / "b.csv").write_text(HEADER + "\n".join([
        "e8,a0,h0,view,2026-01-03 01:00:00", "e9,u2,i3,view,2026-01-04 00:00:00",
        "e10,n1,i2,view,2026-01-04 01:00:00", "e11,n1,i1,purchase,2026-01-04 02:00:00"]) + "\n")
    # The users feed declares s1, a sign-up with no events from a region not seen before; the items
    # feed tags i3 (with a new tag), renames i4 and adds i5 (a brand not seen before) to an existing
    # category.
    raw = tmp_path / "lake" / "raw"
    (raw / "users" / "u.csv").write_text((raw / "users" / "u.csv").read_text() + "s1,18-24,F,east\n")
    items = (raw / "items" / "i.csv").read_text().replace("New Case", "Newer Case").replace(
        "i3,Phone Three,Phone,Globex,200,", "i3,Phone Three,Phone,Globex,200,Action|Comedy")
    (raw / "items" / "i.csv").write_text(items + "i5,Case Five,Case,Initech,15,,\n")
    before = {name: _read(spark, cfg, name).inputFiles() for name in (schema.USER_ITEM, schema.SEQUENCES, schema.USER_PROFILE)}
    ingest.run(spark, cfg)
    incremental = features.run(spark, cfg)
    assert (incremental.mode, incremental.users_rebuilt, incremental.n_users) == ("incremental", 4, 5)
    assert _read(spark, cfg, schema.SEQUENCES).where("user_id = 'u1'").collect() == u1_before
    # Only the changed users' rows were written: u1's rows stayed in their files (deletion vectors
    # mark the replaced ones), except in the training table, whose files Petastorm reads as they are.
    for name, files in before.items():
        loc = tables.location(cfg.tables_root, name)
        assert set(files) <= set(tables.read(spark, loc, incremental.versions[name]).inputFiles()), name
    loc = tables.location(cfg.tables_root, schema.TRAIN_EXAMPLES)
    assert tables.active_files(spark, loc, incremental.versions[schema.TRAIN_EXAMPLES])
    # Those tables compact themselves now and then (Delta's auto compaction, or a scheduled
    # OPTIMIZE). A compaction changes no row, so the next run, with nothing new, stays incremental.
    for name in before:
        loc = tables.location(cfg.tables_root, name)
        tables.delta_table(spark, loc).optimize().executeCompaction()
        assert tables.version(spark, loc) == incremental.versions[name] + 1, f"{name} had nothing to compact"
    quiet = features.run(spark, cfg)
    assert (quiet.mode, quiet.users_rebuilt) == ("incremental", 0), quiet.reason
    full = features.run(spark, make_config(tmp_path / "lake", features=FEATURES))
    assert full.mode == "full"

    def written(report, name):
        return _read(spark, cfg, name, report.versions[name]).collect()

    for report in (incremental, full):
        after_u = {r.user_id: r.user_idx for r in written(report, schema.USER_INDEX)}
        after_i = {r.item_id: r.item_idx for r in written(report, schema.ITEM_INDEX)}
        assert {k: after_u[k] for k in before_u} == before_u and (after_u["a0"], after_u["n1"], after_u["s1"]) == (2, 3, 4)
        assert {k: after_i[k] for k in before_i} == before_i and (after_i["h0"], after_i["i5"]) == (5, 6)
        after = {r.item_id: sorted(r.tag_ids) for r in written(report, schema.ITEM_CONTENT)}
        assert after["i1"] == tags["i1"] and after["i2"] == tags["i2"]
        assert comedy <= set(after["i3"]) and max(after["i3"]) > max(tags["i1"])  # "Action" numbered after them
    for name in (schema.USER_ITEM, schema.SEQUENCES, schema.USER_PROFILE, schema.TRAIN_EXAMPLES, schema.FEATURE_STATS,
                 schema.ITEM_CONTENT):
        got, want = (sorted(tuple(r) for r in written(report, name)) for report in (incremental, full))
        assert len(got) == len(want) and _same(got, want), name


@pytest.mark.parametrize("max_listed, catalog, rewritten", [(10, False, False), (1, False, False), (10, True, False),
                                                           (1, False, True)],
                         ids=["listed", "merge", "listed-catalog-table", "rewrite-beyond-listed"])
def test_replacing_users_rows_leaves_exactly_their_new_rows_and_everyone_elses(spark, tmp_path, max_listed, catalog,
                                                                               rewritten):
    if catalog:
        spark.sql("CREATE SCHEMA IF NOT EXISTS replace_groups")
        spark.sql("DROP TABLE IF EXISTS replace_groups.t")
    loc = "replace_groups.t" if catalog else str(tmp_path / "t")
    tables.overwrite(spark.createDataFrame([(1, 1, 1.0), (1, 2, 1.0), (2, 1, 1.0), (2, 2, 1.0), (3, 1, 1.0)],
                                           "user_idx long, item_idx long, w double"), loc, deletion_vectors=True)
    # User 2 drops item 2, keeps item 1 with a new weight and gains item 3; user 3 has no rows left.
    new = spark.createDataFrame([(2, 1, 5.0), (2, 3, 5.0)], "user_idx long, item_idx long, w double")
    expected = [(1, 1, 1.0), (1, 2, 1.0), (2, 1, 5.0), (2, 3, 5.0)]
    # A caller holding the whole new table offers to rewrite it; it is taken only beyond max_listed.
    whole = spark.createDataFrame(expected, "user_idx long, item_idx long, w double")
    rewrite = (lambda: tables.overwrite(whole, loc, metadata={"run": "r"}, deletion_vectors=True)) if rewritten else None
    tables.replace_groups(spark, new, loc, "user_idx", ["user_idx", "item_idx"],
                          spark.createDataFrame([(2,), (3,)], "user_idx long"), {"run": "r"}, max_listed=max_listed,
                          rewrite=rewrite)
    assert sorted(tuple(r) for r in tables.read(spark, loc).collect()) == expected
    assert tables.commit_metadata(spark, loc, tables.version(spark, loc)) == {"run": "r"}
    operation = tables.delta_table(spark, loc).history(1).first().operation
    assert operation == ("MERGE" if max_listed == 1 and not rewritten else "WRITE")
    # No user changed (a run with nothing new): nothing is written.
    version = tables.version(spark, loc)
    tables.replace_groups(spark, new.limit(0), loc, "user_idx", ["user_idx", "item_idx"],
                          spark.createDataFrame([], "user_idx long"), {"run": "r2"}, max_listed=max_listed)
    assert tables.version(spark, loc) == version and tables.read(spark, loc).count() == 4


def test_an_incremental_run_rebuilds_everything_when_its_settings_or_events_went_elsewhere():
    from recsys_spark.config import FeaturesConfig

    fc = FeaturesConfig(mode="incremental")
    built = {"events_version": 4, "settings": features.settings_digest(fc)}
    assert features.rebuild_reason(fc, built, 6) is None
    assert features.rebuild_reason(FeaturesConfig(mode="full"), built, 6) is None  # mode is not a setting
    assert "settings changed" in features.rebuild_reason(FeaturesConfig(mode="incremental", half_life_days=7), built, 6)
    assert "went back" in features.rebuild_reason(fc, built, 3)
    assert "do not record" in features.rebuild_reason(fc, {"events_version": 4}, 6)
