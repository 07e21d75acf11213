"""Pseudonymous ids, the user-column allowlist, and secrets kept out of saved configs."""
import hmac
import json

import pytest

from conftest import SHOP, make_config
from recsys_spark import forget, ingest, privacy, schema, tables, train

HEADER = "event_id,user_id,item_id,event_type,timestamp\n"
KEY = "a-test-key-of-enough-length"


def _expected(user_id, key=KEY):
    """HMAC-SHA256 by the standard library, as privacy.pseudonymize documents it."""
    return "p" + hmac.new(key.encode(), user_id.encode(), "sha256").hexdigest()[:32]


def _lakehouse(tmp_path):
    events = tmp_path / "raw" / "events"
    events.mkdir(parents=True)
    (events / "a.csv").write_text(HEADER + "e1,alice@example.com,i1,view,2026-01-01 10:00:00\n"
                                           "e2,bob,i2,view,2026-01-01 11:00:00\n"
                                           "e3,bob,i1,view,2026-01-01 12:00:00,broken\n")
    users = tmp_path / "raw" / "users"
    users.mkdir()
    (users / "u.csv").write_text("user_id,age_band,email\nalice@example.com,25-34,alice@example.com\nbob,35-44,b@x.org\n")
    return make_config(tmp_path, privacy={"pseudonymize": True})


def _ids(spark, cfg, name):
    return sorted(r.user_id for r in tables.read(spark, tables.location(cfg.tables_root, name)).collect())


def test_user_ids_are_keyed_pseudonyms_stable_across_runs(spark, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_PSEUDONYM_KEY", KEY)
    cfg = _lakehouse(tmp_path)
    ingest.run(spark, cfg)
    expected = sorted(_expected(u) for u in ("alice@example.com", "bob"))
    assert _ids(spark, cfg, schema.EVENTS) == expected
    assert _ids(spark, cfg, schema.USERS) == expected
    assert ingest.run(spark, cfg).inserted_rows == 0  # the same pseudonyms on a second run
    # Nothing raw reaches the tables: not in ids, dropped user columns or quarantined lines.
    for name in (schema.EVENTS, schema.USERS, schema.QUARANTINE):
        dump = json.dumps([r.asDict() for r in tables.read(spark, tables.location(cfg.tables_root, name)).collect()], default=str)
        assert "alice" not in dump and "bob" not in dump and "b@x.org" not in dump
    assert tables.read(spark, tables.location(cfg.tables_root, schema.USERS)).columns == ["user_id", "age_band"]
    assert _expected("bob", "another key, also long enough") != _expected("bob")


def test_pseudonymize_without_a_key_stops_naming_the_variable(spark, tmp_path, monkeypatch):
    monkeypatch.delenv("RECSYS_PSEUDONYM_KEY", raising=False)
    cfg = _lakehouse(tmp_path)
    with pytest.raises(privacy.PrivacyError, match="environment variable RECSYS_PSEUDONYM_KEY holds no key"):
        ingest.run(spark, cfg)
    assert not tables.exists(spark, tables.location(cfg.tables_root, schema.EVENTS))


def test_forget_takes_the_source_ids_of_pseudonymized_users(spark, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_PSEUDONYM_KEY", KEY)
    cfg = make_config(tmp_path, privacy={"pseudonymize": True, "vacuum_retention_hours": 0})
    (tmp_path / "raw" / "events").mkdir(parents=True)
    (tmp_path / "raw" / "events" / "a.csv").write_text(HEADER + "e1,alice,i1,view,2026-01-01 10:00:00\n"
                                                                "e2,bob,i2,view,2026-01-01 11:00:00\n")
    ingest.run(spark, cfg)
    (tmp_path / "forget.txt").write_text("alice\n")
    forget.run(spark, cfg, str(tmp_path / "forget.txt"))
    assert _ids(spark, cfg, schema.EVENTS) == [_expected("bob")]
    assert ingest.run(spark, cfg).suppressed_rows == 1


def test_configs_saved_with_a_model_hold_no_secrets(spark, shop):
    cfg, _ = shop
    secret_cfg = make_config(cfg.paths.root, **SHOP, spark={"conf": {"spark.hadoop.fs.s3a.secret.key": "s3cr3t-value"}},
                             tracking={"uri": "https://bob:tok3n@mlflow.example.com"})
    saved = json.dumps(train.prepare(spark, secret_cfg).full_config)
    assert "s3cr3t-value" not in saved and "tok3n" not in saved
    assert '"spark.hadoop.fs.s3a.secret.key": "***"' in saved and "https://***@mlflow.example.com" in saved
