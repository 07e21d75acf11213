"""The streaming refresh between nightly runs (README: Refresh between nightly runs)."""
import shutil
from argparse import Namespace
from datetime import datetime, timedelta, timezone

import pytest
from pyspark.sql import functions as F

from conftest import SHOP, make_config
from recsys_spark import checkpoints, cli, promotion, refresh, schema, score, splits, tables
from recsys_spark.ranking import score_users
from recsys_spark.table_schemas import EVENTS_SCHEMA

ONCE = Namespace(once=True)


def _latest(spark, cfg) -> dict:
    rows = tables.read(spark, tables.location(cfg.tables_root, schema.RECOMMENDATIONS_LATEST)).collect()
    out = {}
    for r in rows:
        out.setdefault(r.user_id, {})[r.rank] = (r.item_id, r.because_item_ids, r.served_by)
    return out


def _view(spark, cfg, events: list[tuple[str, str, str]]) -> None:
    """Append views (event_id, user_id, item_id) an hour after the newest event, as ingest would."""
    loc = tables.location(cfg.tables_root, schema.EVENTS)
    newest = tables.read(spark, loc).agg(F.max("ts")).first()[0] + timedelta(hours=1)
    rows = [(e, u, i, "view", newest + timedelta(seconds=n), None, None, "test", "test")
            for n, (e, u, i) in enumerate(events)]
    tables.append(spark.createDataFrame(rows, EVENTS_SCHEMA), loc)


def _history_users(spark, cfg, n: int) -> list[str]:
    users = splits.scoring_input(spark, cfg).where(F.size("input") >= 3).orderBy("user_id").limit(n)
    return [r.user_id for r in users.collect()]


@pytest.mark.slow
def test_new_events_refresh_their_users_lists_only_and_a_stopped_stream_ends_like_a_straight_one(
        spark, shop_copy, tmp_path, monkeypatch):
    cfg = shop_copy
    shutil.copytree(cfg.paths.root, tmp_path / "straight")
    straight = make_config(tmp_path / "straight", **SHOP)
    before = _latest(spark, cfg)
    a, b, c = _history_users(spark, cfg, 3)
    # Each views their current first recommendation; a also views an item the catalog does not have.
    new = {a: before[a][1][0], b: before[b][1][0]}
    first = [("r1", a, new[a]), ("r2", b, new[b]), ("r3", a, "i-unknown")]
    _view(spark, cfg, first)
    assert cli.run_stage(spark, cfg, "refresh", ONCE)["users"] == 2
    after = _latest(spark, cfg)
    assert set(after) == set(before)
    assert {u: rows for u, rows in after.items() if u not in new} == {u: rows for u, rows in before.items() if u not in new}
    # The refreshed lists are the serving model's top-k over history + the new view, by the nightly's rules.
    ckpt_path = promotion.serving_checkpoint(spark, cfg)
    items = tables.read(spark, tables.location(cfg.tables_root, schema.ITEM_INDEX))
    idx = {r.item_id: r.item_idx for r in items.where(F.col("item_id").isin(*new.values())).collect()}
    grown = (splits.scoring_input(spark, cfg).where(F.col("user_id").isin(a, b))
             .withColumn("input", F.concat("input", F.array(
                 F.when(F.col("user_id") == a, idx[new[a]]).otherwise(idx[new[b]]).cast("int"))))
             .withColumn("seen", F.col("input")))
    model, ckpt = checkpoints.load(ckpt_path)
    versions, _ = score.pin_inputs(spark, cfg.tables_root)
    catalog, _ = score.current_catalog(spark, cfg, model, versions, splits.scoring_input(spark, cfg, versions))
    spec = score.scoring_spec(cfg, ckpt_path, ckpt, datetime.now(timezone.utc).date())
    expected = {}
    for r in score_users(grown, spec, spark.sparkContext.broadcast(catalog)).collect():
        expected.setdefault(r.user_id, {})[r.rank] = (r.item_id, r.because_item_ids, r.served_by)
    for u in new:
        assert after[u] == expected[u] and len(after[u]) == cfg.score.k
        assert new[u] not in {item for item, _, _ in after[u].values()}
        assert after[u] != before[u]

    # Events arrive while the job is down; started again, it applies them, and then nothing more.
    second = [("r4", b, "i000011"), ("r5", c, "i000013"), ("r6", a, "i000017")]
    _view(spark, cfg, second)
    assert cli.run_stage(spark, cfg, "refresh", ONCE)["users"] == 3
    latest = tables.location(cfg.tables_root, schema.RECOMMENDATIONS_LATEST)
    version = tables.version(spark, latest)
    assert cli.run_stage(spark, cfg, "refresh", ONCE)["batches"] == 0
    assert tables.version(spark, latest) == version
    # A job started before any event, then given them all at once, ends with the same table.
    assert cli.run_stage(spark, straight, "refresh", ONCE)["batches"] == 0
    _view(spark, straight, first)
    _view(spark, straight, second)
    assert cli.run_stage(spark, straight, "refresh", ONCE)["users"] == 3
    assert _latest(spark, cfg) == _latest(spark, straight)

    # A nightly's score replacing the latest lists stops a job pinned before it, saying so.
    pinned = refresh.Refresher.pin(spark, straight)
    cli.run_stage(spark, straight, "score")
    _view(spark, straight, [("r7", c, "i000019")])
    monkeypatch.setattr(refresh.Refresher, "pin", staticmethod(lambda spark, cfg: pinned))
    with pytest.raises(refresh.SupersededError, match=r"rewritten at version \d+ \(WRITE\).*start refresh again"):
        cli.run_stage(spark, straight, "refresh", ONCE)


def test_the_latency_benchmark_feeds_its_rate_in_whole_files_however_slow_a_write(tmp_path, monkeypatch):
    """benchmarks.refresh's feeder: each second it adds the events due since the start, so a slow
    write is caught up by the next file, and each file appears in the watched folder whole."""
    import pyarrow.parquet as pq

    from benchmarks import refresh as bench

    live, staging = tmp_path / "live", tmp_path / "staging"
    live.mkdir()
    feeder = bench.Feeder(["u1", "u2"], ["i1", "i2", "i3"], rate=200)
    real_write, writes = pq.write_table, []

    def slow_first_write(table, path):
        writes.append(path)
        if len(writes) == 1:
            import time
            time.sleep(1.5)  # longer than the feeder's second
        real_write(table, path)

    monkeypatch.setattr(pq, "write_table", slow_first_write)
    fed = bench.feed_files(feeder, 4, str(staging), str(live))
    assert sorted(p.name for p in live.iterdir()) == sorted(name for name, _ in fed)
    sizes = [pq.read_table(live / name).num_rows for name, _ in fed]  # in the order fed
    assert all(n > 0 for n in sizes)
    assert sizes[1] >= 1.4 * 200  # the file after the slow write carries the second it missed
    assert sum(sizes) == feeder.fed and 200 * 3.5 <= feeder.fed <= 200 * 4.5  # 4 s at 200/s
    assert not list(staging.iterdir())
