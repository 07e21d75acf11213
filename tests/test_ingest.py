"""Ingest contract on hand-checkable CSV files, with real Spark and Delta."""
import json

import pytest
from pyspark.sql import functions as F

from conftest import make_config
from recsys_spark import ingest, schema, tables

HEADER = "event_id,user_id,item_id,event_type,timestamp\n"


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _events(spark, cfg):
    return tables.read(spark, tables.path(cfg.tables_dir, schema.EVENTS))


def test_missing_required_columns_stop_with_their_names(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "a.csv", "user_id,item,when\nu1,i1,2026-01-01 00:00:00\n")
    cfg = make_config(tmp_path)
    with pytest.raises(ingest.IngestError, match=r"missing required column\(s\): item_id, event_type, timestamp"):
        ingest.run(spark, cfg)
    assert not tables.exists(spark, tables.path(cfg.tables_dir, schema.EVENTS))


def test_malformed_rows_are_quarantined_with_reason_and_source(spark, tmp_path):
    src = _write(tmp_path / "raw" / "events" / "day1.csv", HEADER + "\n".join([
        "e1,u1,i1,view,2026-01-01 10:00:00",
        "e2,,i1,view,2026-01-01 10:01:00",          # null user
        "e3,u1,i2,clickk,2026-01-01 10:02:00",      # unknown type
        "e4,u1,i3,view,yesterday",                  # bad timestamp
        "e5,u2,,purchase,2026-01-01 10:03:00",      # empty item
        "e6,u2,i2,purchase,1767262980",             # unix seconds are fine
    ]) + "\n")
    cfg = make_config(tmp_path)
    report = ingest.run(spark, cfg)
    assert (report.raw_rows, report.valid_rows, report.quarantined_rows, report.inserted_rows) == (6, 2, 4, 2)
    q = tables.read(spark, tables.path(cfg.tables_dir, schema.QUARANTINE)).collect()
    reasons = sorted(r.reason.split(" '")[0] for r in q)
    assert reasons == ["null or empty item_id", "null or empty user_id", "unknown event_type", "unparseable timestamp"]
    assert all(r.source_file.endswith("day1.csv") for r in q)
    bad_ts = [r for r in q if r.reason.startswith("unparseable")][0]
    assert json.loads(bad_ts.raw)["event_id"] == "e4"
    ev = {r.event_id: r for r in _events(spark, cfg).collect()}
    assert set(ev) == {"e1", "e6"}
    assert str(ev["e6"].ts) == "2026-01-01 10:23:00"


def test_duplicates_kept_once_within_and_across_runs(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "a.csv", HEADER + "\n".join([
        "e1,u1,i1,view,2026-01-01 10:00:00",
        "e1,u1,i1,view,2026-01-01 10:00:00",   # same event id
        "e9,u1,i1,view,2026-01-01 10:00:00",   # same user/item/type/ts, other id
        "e2,u1,i2,view,2026-01-01 10:05:00",
    ]) + "\n")
    cfg = make_config(tmp_path)
    first = ingest.run(spark, cfg)
    assert first.inserted_rows == 2 and first.duplicate_rows == 2
    second = ingest.run(spark, cfg)  # same files again
    assert second.inserted_rows == 0
    _write(tmp_path / "raw" / "events" / "b.csv", HEADER + "e3,u2,i1,purchase,2026-01-02 10:00:00\n"
           "e2,u1,i2,view,2026-01-01 10:05:00\n")
    third = ingest.run(spark, cfg)
    assert third.inserted_rows == 1
    assert sorted(r.event_id for r in _events(spark, cfg).collect()) == ["e1", "e2", "e3"]


def test_events_without_event_id_get_a_stable_one(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "a.csv",
           "user_id,item_id,event_type,timestamp\nu1,i1,view,2026-01-01 10:00:00\nu1,i1,view,2026-01-01 10:00:00\n")
    cfg = make_config(tmp_path)
    assert ingest.run(spark, cfg).inserted_rows == 1
    assert ingest.run(spark, cfg).inserted_rows == 0


def test_empty_input_stops_before_anything_is_overwritten(spark, tmp_path):
    f = _write(tmp_path / "raw" / "events" / "a.csv", HEADER + "e1,u1,i1,view,2026-01-01 10:00:00\n")
    cfg = make_config(tmp_path)
    ingest.run(spark, cfg)
    loc = tables.path(cfg.tables_dir, schema.EVENTS)
    before = tables.version(spark, loc)
    f.write_text(HEADER)  # header only: no rows
    with pytest.raises(ingest.IngestError, match="has no rows"):
        ingest.run(spark, cfg)
    f.unlink()
    with pytest.raises(ingest.IngestError, match="no input files"):
        ingest.run(spark, cfg)
    assert tables.version(spark, loc) == before
    assert _events(spark, cfg).count() == 1


def test_all_rows_malformed_are_quarantined_and_the_run_fails(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "a.csv", HEADER + "e1,,i1,view,2026-01-01 10:00:00\n")
    cfg = make_config(tmp_path)
    with pytest.raises(ingest.IngestError, match="all 1 rows"):
        ingest.run(spark, cfg)
    assert tables.read(spark, tables.path(cfg.tables_dir, schema.QUARANTINE)).count() == 1
    assert not tables.exists(spark, tables.path(cfg.tables_dir, schema.EVENTS))


def test_users_and_items_files_are_upserted(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "a.csv", HEADER + "e1,u1,i1,view,2026-01-01 10:00:00\n")
    _write(tmp_path / "raw" / "users" / "u.csv", "user_id,age_band,gender,region\nu1,25-34,F,north\n,18-24,M,south\n")
    _write(tmp_path / "raw" / "items" / "i.csv", "item_id,title,category,brand,price\ni1,Acme Phone 1,Phone,Acme,99.5\n")
    cfg = make_config(tmp_path)
    report = ingest.run(spark, cfg)
    assert (report.users_upserted, report.items_upserted) == (1, 1)
    _write(tmp_path / "raw" / "users" / "u.csv", "user_id,age_band,gender,region\nu1,35-44,F,north\n")
    ingest.run(spark, cfg)
    users = tables.read(spark, tables.path(cfg.tables_dir, schema.USERS)).collect()
    assert [(u.user_id, u.age_band) for u in users] == [("u1", "35-44")]
    q = tables.read(spark, tables.path(cfg.tables_dir, schema.QUARANTINE))
    assert q.where(F.col("reason") == "null or empty user_id").count() == 1


def test_parquet_and_json_inputs(spark, tmp_path):
    import pandas as pd

    d = tmp_path / "raw" / "events"
    d.mkdir(parents=True)
    pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "event_type": ["view", "purchase"],
                  "timestamp": pd.to_datetime(["2026-01-01 10:00:00", "2026-01-01 11:00:00"])}).to_parquet(d / "a.parquet")
    cfg = make_config(tmp_path)
    assert ingest.run(spark, cfg).inserted_rows == 2
    j = tmp_path / "json"
    _write(j / "a.json", '{"user_id": "u3", "item_id": "i1", "event_type": "view", "timestamp": "2026-01-02 10:00:00"}\n')
    cfg2 = make_config(tmp_path, ingest={"events": str(j)})
    assert ingest.run(spark, cfg2).inserted_rows == 1
