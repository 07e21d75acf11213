import hashlib
import os

import numpy as np
import pandas as pd

from recsys_spark.config import GenerateConfig
from recsys_spark.generate import P_FOLLOW, generate, make_catalog


def _digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            if f.endswith((".csv", ".parquet")):
                h.update(open(os.path.join(root, f), "rb").read())
    return h.hexdigest()


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    cfg = GenerateConfig(users=300, items=60, events=6000, formats=["csv", "parquet"])
    generate(cfg, str(tmp_path / "a"))
    generate(cfg, str(tmp_path / "b"))
    generate(GenerateConfig(users=300, items=60, events=6000, formats=["csv", "parquet"], seed=8), str(tmp_path / "c"))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_shapes_columns_and_sizes(tmp_path):
    cfg = GenerateConfig(users=500, items=80, events=20000, formats=["parquet"], with_ratings=True)
    summary = generate(cfg, str(tmp_path))
    ev = pd.read_parquet(tmp_path / "events")
    users = pd.read_parquet(tmp_path / "users")
    items = pd.read_parquet(tmp_path / "items")
    assert set(ev.columns) == {"event_id", "user_id", "item_id", "event_type", "timestamp", "rating"}
    assert set(users.columns) >= {"user_id", "age_band", "gender", "region", "signup_date"}
    assert set(items.columns) >= {"item_id", "title", "category", "brand", "price"}
    assert len(users) == 500 and len(items) == 80
    assert 0.7 * 20000 < len(ev) < 1.3 * 20000 and summary["events"] == len(ev)
    assert set(ev.event_type) == {"view", "add_to_cart", "purchase", "rating"}
    assert ev.event_id.is_unique
    assert ev.rating.dropna().between(1, 5).all()
    # Chronological per user, within the configured window.
    ts = pd.to_datetime(ev.timestamp)
    assert (ts.groupby(ev.user_id).apply(lambda s: s.is_monotonic_increasing)).all()


def test_behaviour_follows_item_successors_more_than_chance(tmp_path):
    """The sequential signal: consecutive viewed items follow the catalog's successor map."""
    cfg = GenerateConfig(users=400, items=100, events=15000, formats=["parquet"])
    generate(cfg, str(tmp_path))
    cat = make_catalog(cfg, np.random.default_rng(cfg.seed))
    ev = pd.read_parquet(tmp_path / "events")
    views = ev[ev.event_type == "view"]
    idx = views.item_id.str[1:].astype(int).to_numpy()
    same_user = (views.user_id.to_numpy()[1:] == views.user_id.to_numpy()[:-1])
    follows = cat.successor[idx[:-1]] == idx[1:]
    rate = follows[same_user].mean()
    assert rate > P_FOLLOW * 0.8, rate  # popularity alone would give ~1/100


def test_corruption_injects_bad_and_duplicate_rows(tmp_path):
    cfg = GenerateConfig(users=200, items=40, events=5000, formats=["csv"], corrupt_fraction=0.02)
    generate(cfg, str(tmp_path))
    ev = pd.read_csv(tmp_path / "events" / "part-00000.csv", keep_default_na=False, na_values=[""])
    assert ev.user_id.isna().sum() > 0
    assert (ev.timestamp == "not-a-time").sum() > 0
    assert (ev.event_type == "clickk").sum() > 0
    assert ev.event_id.duplicated().sum() > 0
