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
    return tables.read(spark, tables.location(cfg.tables_root, schema.EVENTS))


def test_missing_required_columns_stop_with_their_names(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "a.csv", "user_id,item,when\nu1,i1,2026-01-01 00:00:00\n")
    cfg = make_config(tmp_path)
    with pytest.raises(ingest.IngestError, match=r"missing required column\(s\): item_id, event_type, timestamp"):
        ingest.run(spark, cfg)
    assert not tables.exists(spark, tables.location(cfg.tables_root, schema.EVENTS))


def test_malformed_rows_are_quarantined_with_reason_and_source(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "day1.csv", HEADER + "\n".join([
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
    q = tables.read(spark, tables.location(cfg.tables_root, schema.QUARANTINE)).collect()
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
    loc = tables.location(cfg.tables_root, schema.EVENTS)
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
    assert tables.read(spark, tables.location(cfg.tables_root, schema.QUARANTINE)).count() == 1
    assert not tables.exists(spark, tables.location(cfg.tables_root, schema.EVENTS))


def test_users_and_items_files_are_upserted(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "a.csv", HEADER + "e1,u1,i1,view,2026-01-01 10:00:00\n")
    _write(tmp_path / "raw" / "users" / "u.csv", "user_id,age_band,gender,region\nu1,25-34,F,north\n,18-24,M,south\n")
    _write(tmp_path / "raw" / "items" / "i.csv", "item_id,title,category,brand,price\ni1,Acme Phone 1,Phone,Acme,99.5\n")
    cfg = make_config(tmp_path)
    report = ingest.run(spark, cfg)
    assert (report.users_upserted, report.items_upserted) == (1, 1)
    # The items feed gains upstream vectors: the column is added; a vector that is not all numbers
    # is quarantined with its row, the previous row of that item kept.
    _write(tmp_path / "raw" / "items" / "i.csv", "item_id,title,embedding\ni1,Acme Phone 1,0.5 -1 2e-1\n"
                                                 "i2,Acme Case,0.1 oops 3\ni3,Acme Cable,\n")
    assert ingest.run(spark, cfg).items_upserted == 2
    items = {r.item_id: r for r in tables.read(spark, tables.location(cfg.tables_root, schema.ITEMS)).collect()}
    assert set(items) == {"i1", "i3"} and items["i3"].embedding is None
    assert items["i1"].embedding == pytest.approx([0.5, -1.0, 0.2]) and items["i1"].category == "Phone"
    _write(tmp_path / "raw" / "users" / "u.csv", "user_id,age_band,gender,region\nu1,35-44,F,north\n")
    ingest.run(spark, cfg)
    users = tables.read(spark, tables.location(cfg.tables_root, schema.USERS)).collect()
    assert [(u.user_id, u.age_band) for u in users] == [("u1", "35-44")]
    # The same full feed again: no row changed, so nothing is written.
    users_loc = tables.location(cfg.tables_root, schema.USERS)
    before = tables.version(spark, users_loc)
    assert ingest.run(spark, cfg).users_upserted == 1
    assert tables.version(spark, users_loc) == before
    q = tables.read(spark, tables.location(cfg.tables_root, schema.QUARANTINE))
    assert q.where(F.col("reason") == "null or empty user_id").count() == 1
    assert q.where(F.col("reason") == "embedding: not a list of finite numbers").count() == 1


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


def _reasons(spark, cfg):
    return sorted(r.reason for r in tables.read(spark, tables.location(cfg.tables_root, schema.QUARANTINE)).collect())


def test_csv_columns_are_matched_by_name_in_every_file(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "a.csv", HEADER + "e1,u1,i1,view,2026-01-01 10:00:00\n")
    _write(tmp_path / "raw" / "events" / "b.csv",
           "timestamp,item_id,user_id,event_type,event_id\n2026-01-02 10:00:00,i2,u2,purchase,e2\n")
    cfg = make_config(tmp_path)
    ingest.run(spark, cfg)
    got = {r.event_id: (r.user_id, r.item_id, r.event_type) for r in _events(spark, cfg).collect()}
    assert got == {"e1": ("u1", "i1", "view"), "e2": ("u2", "i2", "purchase")}


def test_wrong_field_counts_are_quarantined_and_extra_columns_kept(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "a.csv", "event_id,user_id,item_id,event_type,timestamp,note\n"
           'e1,u1,i1,view,2026-01-01 10:00:00,"two\nlines"\n'
           "e2,u2,i2,view,2026-01-01 10:00:00,x,surplus\n"
           "e3,u3,i3\n")
    cfg = make_config(tmp_path)
    report = ingest.run(spark, cfg)
    assert (report.valid_rows, report.quarantined_rows) == (1, 2)
    [event] = _events(spark, cfg).collect()
    assert event.attributes == {"note": "two\nlines"}
    q = tables.read(spark, tables.location(cfg.tables_root, schema.QUARANTINE)).collect()
    assert all(r.reason.startswith("malformed line") for r in q)
    assert sorted(json.loads(r.raw)["line"] for r in q) == ["e2,u2,i2,view,2026-01-01 10:00:00,x,surplus", "e3,u3,i3"]


def test_odd_and_implausible_timestamps_are_quarantined_not_fatal(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "a.csv", HEADER + "\n".join([
        "e1,u1,i1,view,2026-1-5 10:00:00",        # the old parser's form: read, not a job failure
        "e2,u1,i2,view,2026-02-30 10:00:00",      # no such day
        "e3,u1,i3,view,2206-01-01 00:00:00",      # far future: would zero everyone's decay weights
        "e4,u1,i4,view,1970-01-01 00:00:01",      # before ingest.min_timestamp
        "e5,u1,i5,view,NaN",
        "e6,u1,i6,view,99999999999999999999999",
    ]) + "\n")
    cfg = make_config(tmp_path)
    report = ingest.run(spark, cfg)
    assert (report.valid_rows, report.quarantined_rows) == (1, 5)
    assert str(_events(spark, cfg).first().ts) == "2026-01-05 10:00:00"
    reasons = _reasons(spark, cfg)
    assert sum("unparseable timestamp" in r for r in reasons) == 3
    assert sum("in the future" in r for r in reasons) == 1
    assert sum("before ingest.min_timestamp" in r for r in reasons) == 1


def test_non_finite_or_out_of_range_ratings_are_quarantined(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "a.csv", "event_id,user_id,item_id,event_type,timestamp,rating\n" + "\n".join(
        f"e{i},u1,i{i},rating,2026-01-01 10:00:0{i},{r}" for i, r in enumerate(["4.5", "", "NaN", "Infinity", "-1", "11", "five"])
    ) + "\n")
    cfg = make_config(tmp_path)
    report = ingest.run(spark, cfg)
    assert sorted(r.event_id for r in _events(spark, cfg).collect()) == ["e0", "e1"]
    assert report.quarantined_rows == 5
    reasons = _reasons(spark, cfg)
    assert sum(r == "rating is NaN or infinite" for r in reasons) == 2
    assert sum("outside ingest.rating_range" in r for r in reasons) == 2
    assert sum(r.startswith("non-numeric rating") for r in reasons) == 1


def test_conflicting_duplicates_are_quarantined_and_quarantine_is_idempotent(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "a.csv", HEADER + "\n".join([
        "e1,u1,i1,view,2026-01-01 10:00:00",
        "e1,u1,i9,view,2026-01-01 10:00:00",   # same id, another item: which one is true is unknown
        "e2,u2,i2,view,2026-01-01 10:00:00",
        "e2,u2,i2,view,2026-01-01 10:00:00",   # same id, same payload: a plain duplicate
        "e3,,i3,view,2026-01-01 10:00:00",
    ]) + "\n")
    cfg = make_config(tmp_path)
    first = ingest.run(spark, cfg)
    assert (first.inserted_rows, first.quarantined_rows) == (1, 3)
    assert sum("comes with 2 different payloads" in r for r in _reasons(spark, cfg)) == 2
    ingest.run(spark, cfg)  # the same files again
    assert len(_reasons(spark, cfg)) == 3
    _write(tmp_path / "raw" / "events" / "b.csv", HEADER + "e2,u2,i7,purchase,2026-01-02 10:00:00\n"
           "e4,u2,i4,view,2026-01-02 10:00:00\n")
    third = ingest.run(spark, cfg)
    assert third.inserted_rows == 1
    assert sum("already stored with a different payload" in r for r in _reasons(spark, cfg)) == 1
    assert sorted((r.event_id, r.item_id) for r in _events(spark, cfg).collect()) == [("e2", "i2"), ("e4", "i4")]


def test_a_file_without_required_columns_is_quarantined_others_load(spark, tmp_path):
    _write(tmp_path / "raw" / "events" / "a.csv", HEADER + "e1,u1,i1,view,2026-01-01 10:00:00\n")
    _write(tmp_path / "raw" / "events" / "b.csv", "event_id,user_id,event_type,timestamp\ne2,u2,view,2026-01-01 10:00:00\n")
    cfg = make_config(tmp_path)
    report = ingest.run(spark, cfg)
    assert (report.inserted_rows, report.quarantined_rows) == (1, 1)
    assert _reasons(spark, cfg) == ["file header lacks required column(s) item_id"]


def test_encoding_and_byte_order_mark_by_option(spark, tmp_path):
    f = tmp_path / "raw" / "events" / "a.csv"
    f.parent.mkdir(parents=True)
    f.write_bytes(("\ufeff" + HEADER + "e1,café,i1,view,2026-01-01 10:00:00\n").encode("utf-8"))
    cfg = make_config(tmp_path)
    ingest.run(spark, cfg)
    assert _events(spark, cfg).first().user_id == "café"
    f.write_bytes((HEADER + "e2,josé,i1,view,2026-01-01 11:00:00\n").encode("latin-1"))
    ingest.run(spark, make_config(tmp_path, ingest={"csv_encoding": "ISO-8859-1"}))
    assert sorted(r.user_id for r in _events(spark, cfg).collect()) == ["café", "josé"]


def test_concurrent_ingests_insert_each_event_once(spark, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    _write(tmp_path / "raw" / "events" / "a.csv", HEADER + "".join(
        f"e{i},u{i % 7},i{i % 11},view,2026-01-01 10:{i // 60:02d}:{i % 60:02d}\n" for i in range(200)))
    cfg = make_config(tmp_path)
    ingest.run(spark, cfg)
    _write(tmp_path / "raw" / "events" / "b.csv", HEADER + "".join(
        f"n{i},u{i % 7},i{i % 11},purchase,2026-01-02 10:{i // 60:02d}:{i % 60:02d}\n" for i in range(200)))
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: ingest.run(spark, cfg), range(2)))
    assert sorted(r.inserted_rows for r in reports) == [0, 200]
    ev = _events(spark, cfg)
    assert ev.count() == 400 and ev.select("event_id").distinct().count() == 400


def test_the_stream_loads_each_new_file_of_the_folder_once_and_goes_on_past_a_bad_one(spark, tmp_path):
    folder = tmp_path / "incoming"
    cfg = make_config(tmp_path / "lake", ingest={"events": str(folder), "format": "csv"})
    _write(folder / "a.csv", HEADER + "e1,u1,i1,view,2026-01-01 00:00:00\ne2,u1,i2,purchase,2026-01-01 00:01:00\n"
                                      "e3,u2,i1,teleport,2026-01-01 00:02:00\n")
    first = ingest.stream(spark, cfg, once=True)
    assert [(b["files"], b["valid"], b["quarantined"], b["inserted"]) for b in first["batches"]] == [(1, 2, 1, 2)]
    # Nothing new: nothing loaded again.
    assert ingest.stream(spark, cfg, once=True)["batches"] == []
    # A malformed row is quarantined and a repeated event kept once; a file of malformed rows only,
    # or of no rows, loads nothing and the stream goes on.
    _write(folder / "b.csv", HEADER + "e4,u3,i3,view,2026-01-02 00:00:00\ne1,u1,i1,view,2026-01-01 00:00:00\n")
    _write(folder / "c.csv", HEADER + "e5,,i3,view,2026-01-02 00:00:00\n")
    second = ingest.stream(spark, cfg, once=True)
    assert second["files"] == 2 and second["inserted"] == 1
    _write(folder / "late" / "e.csv", HEADER + "e6,,i3,view,2026-01-03 00:00:00\n")
    third = ingest.stream(spark, cfg, once=True)
    assert third["inserted"] == 0 and "quarantined" in third["batches"][0]["error"]
    _write(folder / "g.csv", HEADER)
    assert "no rows" in ingest.stream(spark, cfg, once=True)["batches"][0]["error"]
    _write(folder / "f.csv", HEADER + "e7,u4,i4,add_to_cart,2026-01-04 00:00:00\n")
    assert ingest.stream(spark, cfg, once=True)["inserted"] == 1
    assert sorted(r.event_id for r in _events(spark, cfg).collect()) == ["e1", "e2", "e4", "e7"]
    quarantined = tables.read(spark, tables.location(cfg.tables_root, schema.QUARANTINE))
    assert quarantined.count() == 3
