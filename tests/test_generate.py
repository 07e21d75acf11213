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


def test_actions_follow_purchases_of_their_category_and_leave_the_products_unchanged(tmp_path):
    base = GenerateConfig(users=300, items=60, events=8000, formats=["parquet"])
    generate(base, str(tmp_path / "plain"))
    generate(GenerateConfig(users=300, items=60, events=8000, formats=["parquet"], actions=True), str(tmp_path / "nba"))
    plain, ev = pd.read_parquet(tmp_path / "plain" / "events"), pd.read_parquet(tmp_path / "nba" / "events")
    items = pd.read_parquet(tmp_path / "nba" / "items")
    assert set(items.kind) == {"product", "article", "offer"} and (items.kind != "product").sum() == 2 * base.categories
    acts = ev[ev.item_id.str.startswith("a")]
    products = ev[~ev.item_id.str.startswith("a")].reset_index(drop=True)
    pd.testing.assert_frame_equal(products, plain.reset_index(drop=True))
    bought = ev[ev.event_type == "purchase"]
    assert 0.3 * len(bought) < len(acts) < 0.5 * len(bought) and ev.event_id.is_unique
    category = dict(zip(items.item_id, items.category))
    # Every action view follows, within a day, a purchase by the same user in the action's category.
    merged = acts.merge(bought, on="user_id", suffixes=("", "_buy"))
    delay = pd.to_datetime(merged.timestamp) - pd.to_datetime(merged.timestamp_buy)
    ok = (merged.item_id.map(category) == merged.item_id_buy.map(category)) & (delay > pd.Timedelta(0)) \
        & (delay <= pd.Timedelta(days=1))
    assert set(merged[ok].event_id) == set(acts.event_id)


def test_item_vectors_follow_category_and_appeal_and_leave_the_events_alone(tmp_path):
    cfg = GenerateConfig(users=300, items=60, events=6000, formats=["parquet"], cold_items=3)
    generate(cfg, str(tmp_path / "v"))
    generate(GenerateConfig(users=300, items=60, events=6000, formats=["parquet"], cold_items=3, item_vector_dim=0),
             str(tmp_path / "none"))
    assert _digest(tmp_path / "v" / "events") == _digest(tmp_path / "none" / "events")
    items = pd.read_parquet(tmp_path / "v" / "items" / "items.parquet")
    assert "embedding" not in pd.read_parquet(tmp_path / "none" / "items" / "items.parquet").columns
    vec = np.stack(items["embedding"].to_numpy())
    assert vec.shape == (63, 16)
    # Items of one category lie closer together than items of different categories.
    same = items["category"].to_numpy()[:, None] == items["category"].to_numpy()[None, :]
    dist = np.linalg.norm(vec[:, None] - vec[None, :], axis=-1)
    off_diagonal = ~np.eye(len(vec), dtype=bool)
    assert dist[same & off_diagonal].mean() < 0.6 * dist[~same].mean()
