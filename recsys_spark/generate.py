"""Seeded synthetic shop: users, items and sequential behaviour with learnable structure.

What a sequence model can learn and popularity cannot:
- every item has a *successor* (a complementary item: a phone -> a case for it, a tent -> a
  sleeping bag); after touching an item a user goes to its successor with probability ``p_follow``;
- each user has latent category interests (partly from their demographics) that drift over time;
  the rest of their steps sample a category from those interests and an item by in-category
  popularity (Zipf).

Each step is a view, sometimes followed by add_to_cart and purchase (and, optionally, a rating).
Generation is vectorised over chunks of users and written chunk by chunk, so tens of millions of
events fit in memory. The same seed and sizes give byte-identical files.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_spark import schema
from recsys_spark.config import GenerateConfig

CATEGORY_PAIRS = [
    ("Phone", "Phone Case"), ("Laptop", "Laptop Bag"), ("Camera", "Memory Card"),
    ("Running Shoe", "Running Sock"), ("Coffee Maker", "Coffee Bean"), ("Tent", "Sleeping Bag"),
    ("Novel", "Bookmark"), ("Face Cream", "Face Serum"), ("Guitar", "Guitar String"),
    ("Yoga Mat", "Yoga Block"), ("Printer", "Ink Cartridge"), ("Bicycle", "Bike Helmet"),
]
BRANDS = ["Acme", "Northwind", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Tyrell",
          "Cyberdyne", "Soylent", "Hooli", "Vandelay"]
AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55+"]
GENDERS = ["F", "M", "X"]
REGIONS = ["north", "south", "east", "west"]
P_FOLLOW = 0.55
P_CART = 0.3
P_PURCHASE = 0.5
P_DRIFT = 0.02
MAX_STEPS = 400
USERS_PER_CHUNK = 50_000


@dataclass
class Catalog:
    category_names: list[str]
    item_category: np.ndarray  # item index -> category index
    successor: np.ndarray  # item index -> item index
    cdf: np.ndarray  # global cumulative in-category popularity, offset by category index
    order: np.ndarray  # items sorted by category, aligned with cdf
    items: pd.DataFrame


def _category_names(n: int) -> list[str]:
    names = [name for pair in CATEGORY_PAIRS for name in pair]
    names += [f"Gadget {i}" for i in range(len(names), n)]
    return names[:n]


def make_catalog(cfg: GenerateConfig, rng: np.random.Generator) -> Catalog:
    n_items, n_cat = cfg.items, cfg.categories
    if n_cat < 2 or n_items < n_cat:
        raise ValueError(f"generate: need at least 2 categories and one item per category "
                         f"(got {n_cat} categories, {n_items} items)")
    names = _category_names(n_cat)
    item_category = np.arange(n_items) % n_cat
    rng.shuffle(item_category)
    # Zipf-like popularity inside each category.
    weight = np.empty(n_items)
    order_parts, cdf_parts = [], []
    members = [np.flatnonzero(item_category == c) for c in range(n_cat)]
    for c, idx in enumerate(members):
        ranks = rng.permutation(len(idx)) + 1
        w = 1.0 / ranks ** 1.0
        weight[idx] = w
        order_parts.append(idx)
        cdf_parts.append(c + np.cumsum(w) / w.sum())
    order = np.concatenate(order_parts)
    cdf = np.concatenate(cdf_parts)
    cdf[np.cumsum([len(m) for m in members]) - 1] = np.arange(1, n_cat + 1) - 1e-12  # guard rounding
    # Successor: the paired category's items (a -> b), and b -> a random item of a third category.
    successor = np.empty(n_items, dtype=np.int64)
    for i in range(n_items):
        c = item_category[i]
        target = c + 1 if c % 2 == 0 and c + 1 < n_cat else (c * 7 + 3) % n_cat
        if target == c:
            target = (c + 1) % n_cat
        successor[i] = rng.choice(members[target])
    brands = np.array(BRANDS)[rng.integers(0, len(BRANDS), n_items)]
    base_price = np.exp(rng.normal(3.0, 0.8, n_cat))
    price = np.round(base_price[item_category] * np.exp(rng.normal(0, 0.3, n_items)), 2)
    # Margin: a share of the price fixed per category (10%-50%), so margin and revenue rank differently.
    margin = np.round(price * (0.1 + 0.4 * ((item_category * 37) % 10) / 10), 2)
    item_ids = [f"i{i:06d}" for i in range(n_items)]
    titles = [f"{brands[i]} {names[item_category[i]]} {100 + i}" for i in range(n_items)]
    items = pd.DataFrame({
        "item_id": item_ids,
        "title": titles,
        "category": [names[c] for c in item_category],
        "brand": brands,
        "price": price,
        "margin": margin,
    })
    appeal = np.zeros(n_items)
    for idx in members:  # the item's popularity in its category, standardised
        lw = np.log(weight[idx])
        appeal[idx] = (lw - lw.mean()) / (lw.std() or 1.0)
    if cfg.item_vector_dim:
        items[schema.ITEM_VECTOR_COLUMN] = item_vectors(cfg, item_category, appeal).tolist()
    return Catalog(names, item_category, successor, cdf, order, items)


def item_vectors(cfg: GenerateConfig, category: np.ndarray, appeal: np.ndarray) -> np.ndarray:
    """What an upstream image encoder would emit per item: a per-category centroid, plus a shared
    "appeal" direction scaled by how popular the item is in its category (what a picture may show
    that the catalog columns do not), plus noise. Seeded from a stream of its own, so the events do
    not depend on it."""
    rng = np.random.default_rng([cfg.seed, 404])
    d = cfg.item_vector_dim
    centroids = rng.normal(0.0, 1.0, (cfg.categories, d))
    direction = rng.normal(0.0, 1.0, d)
    direction /= np.linalg.norm(direction)
    noise = np.random.default_rng([cfg.seed, 405, len(category)]).normal(0.0, 0.5, (len(category), d))
    return np.round(centroids[category] + appeal[:, None] * direction + noise, 4)


def make_users(cfg: GenerateConfig, rng: np.random.Generator) -> pd.DataFrame:
    n = cfg.users
    start = datetime.fromisoformat(cfg.start_date)
    signup = [start - timedelta(days=int(d)) for d in rng.integers(0, 3 * 365, n)]
    return pd.DataFrame({
        "user_id": [f"u{u:07d}" for u in range(n)],
        "age_band": np.array(AGE_BANDS)[rng.integers(0, len(AGE_BANDS), n)],
        "gender": np.array(GENDERS)[rng.choice(3, n, p=[0.48, 0.48, 0.04])],
        "region": np.array(REGIONS)[rng.integers(0, len(REGIONS), n)],
        "signup_date": [d.strftime("%Y-%m-%d") for d in signup],
    })


def cold_users(cfg: GenerateConfig) -> pd.DataFrame:
    """cfg.cold_users new sign-ups: a profile, no events yet (ids u9xxxxxx)."""
    rng = np.random.default_rng(cfg.seed + 101)
    n = cfg.cold_users
    return pd.DataFrame({
        "user_id": [f"u9{u:06d}" for u in range(n)],
        "age_band": np.array(AGE_BANDS)[rng.integers(0, len(AGE_BANDS), n)],
        "gender": np.array(GENDERS)[rng.choice(3, n, p=[0.48, 0.48, 0.04])],
        "region": np.array(REGIONS)[rng.integers(0, len(REGIONS), n)],
        "signup_date": [cfg.start_date] * n,
    })


def cold_items(cfg: GenerateConfig, cat: Catalog) -> pd.DataFrame:
    """cfg.cold_items new arrivals: content (title, category, brand, price), no events yet (ids n9xxxxx)."""
    rng = np.random.default_rng(cfg.seed + 102)
    n = cfg.cold_items
    c = rng.integers(0, len(cat.category_names), n)
    brands = np.array(BRANDS)[rng.integers(0, len(BRANDS), n)]
    ref = cat.items.groupby("category")["price"].median()
    names = [cat.category_names[x] for x in c]
    price = np.round(ref.reindex(names).to_numpy() * np.exp(rng.normal(0, 0.3, n)), 2)
    items = pd.DataFrame({
        "item_id": [f"n9{i:05d}" for i in range(n)],
        "title": [f"{brands[i]} {names[i]} New {i}" for i in range(n)],
        "category": names,
        "brand": brands,
        "price": price,
        "margin": np.round(price * (0.1 + 0.4 * ((c * 37) % 10) / 10), 2),
    })
    if cfg.item_vector_dim:  # a new arrival's appeal is unknown to the catalog, not to its picture
        appeal = np.random.default_rng([cfg.seed, 406]).normal(0.0, 1.0, n)
        items[schema.ITEM_VECTOR_COLUMN] = item_vectors(cfg, c, appeal).tolist()
    return items


# Next-best-action example: after a purchase, the buyer views one of the category's actions with
# this probability, within a day: the setup article or the offer for the paired category.
P_ACTION = 0.4
P_ARTICLE = 0.5


def action_items(cat: Catalog) -> pd.DataFrame:
    """Per category an article (kind article) and a cross-sell offer for its paired category (kind
    offer); ids a00000.. (2 per category, article first)."""
    rows = []
    n = len(cat.category_names)
    for c, name in enumerate(cat.category_names):
        pair = cat.category_names[c + 1 if c % 2 == 0 and c + 1 < n else c - 1 if c % 2 else c]
        rows.append((f"a{2 * c:05d}", f"How to set up your {name}", name, "article"))
        rows.append((f"a{2 * c + 1:05d}", f"{pair}: 15% off with your {name}", name, "offer"))
    return pd.DataFrame(rows, columns=["item_id", "title", "category", "kind"])


def action_events(events: pd.DataFrame, cat: Catalog, rng: np.random.Generator) -> pd.DataFrame:
    """Views of actions after some purchases in events (see P_ACTION): which action follows from
    the purchased item's category, so a model can learn it."""
    bought = events[events["event_type"] == "purchase"]
    bought = bought[rng.random(len(bought)) < P_ACTION]
    if bought.empty:
        return events.iloc[:0]
    c = cat.item_category[bought["item_id"].str[1:].astype(int).to_numpy()]
    which = 2 * c + (rng.random(len(bought)) >= P_ARTICLE)
    ts = pd.to_datetime(bought["timestamp"]) + pd.to_timedelta(rng.integers(60, 86400, len(bought)), unit="s")
    return pd.DataFrame({"event_id": ["a" + e[1:] for e in bought["event_id"]], "user_id": bought["user_id"].to_numpy(),
                         "item_id": [f"a{x:05d}" for x in which], "event_type": "view",
                         "timestamp": ts.dt.strftime("%Y-%m-%d %H:%M:%S").to_numpy()})


def _demographic_prior(users: pd.DataFrame, n_cat: int, seed: int) -> np.ndarray:
    """Category preference shared by users of one (age band, gender): the signal profiles carry."""
    prior_rng = np.random.default_rng(seed + 1)
    table = prior_rng.dirichlet(np.full(n_cat, 0.5), size=(len(AGE_BANDS), len(GENDERS)))
    a = users["age_band"].map({v: i for i, v in enumerate(AGE_BANDS)}).to_numpy()
    g = users["gender"].map({v: i for i, v in enumerate(GENDERS)}).to_numpy()
    return table[a, g]


def _simulate_chunk(cat: Catalog, interest: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return an (n_users, max_len) array of item indices, -1 after each user's length."""
    n, n_cat = interest.shape
    steps = int(lengths.max())
    out = np.full((n, steps), -1, dtype=np.int64)
    last = np.zeros(n, dtype=np.int64)
    for t in range(steps):
        active = lengths > t
        drift = rng.random(n) < P_DRIFT
        if drift.any():
            interest[drift] = 0.5 * interest[drift] + 0.5 * rng.dirichlet(np.full(n_cat, 0.3), drift.sum())
        c = (interest.cumsum(1) < rng.random(n)[:, None]).sum(1).clip(0, n_cat - 1)
        pos = np.searchsorted(cat.cdf, c + rng.random(n) * (1 - 1e-9))
        item = cat.order[np.minimum(pos, len(cat.order) - 1)]
        follow = (rng.random(n) < P_FOLLOW) & (t > 0)
        item = np.where(follow, cat.successor[last], item)
        out[active, t] = item[active]
        last = np.where(active, item, last)
    return out


def _events_frame(seq: np.ndarray, user_offset: int, start_ts: np.ndarray, span: np.ndarray,
                  cfg: GenerateConfig, rng: np.random.Generator, event_offset: int) -> pd.DataFrame:
    users, steps = np.nonzero(seq >= 0)
    items = seq[users, steps]
    # Step times: uniform offsets inside each user's active span, sorted so steps stay in order.
    frac = _per_user_sorted(users, rng.random(len(users)))
    ts = start_ts[users] + (span[users] * frac).astype(np.int64)
    cart = rng.random(len(users)) < P_CART
    buy = cart & (rng.random(len(users)) < P_PURCHASE)
    rows_u = [users, users[cart], users[buy]]
    rows_i = [items, items[cart], items[buy]]
    rows_t = [ts, ts[cart] + rng.integers(5, 600, cart.sum()), ts[buy] + rng.integers(600, 1800, buy.sum())]
    rows_e = [np.zeros(len(users), np.int8), np.ones(cart.sum(), np.int8), np.full(buy.sum(), 2, np.int8)]
    u = np.concatenate(rows_u)
    it = np.concatenate(rows_i)
    t = np.concatenate(rows_t)
    e = np.concatenate(rows_e)
    order = np.lexsort((e, t, u))
    u, it, t, e = u[order], it[order], t[order], e[order]
    etype = np.array(schema.EVENT_TYPES[:3])[e]  # view, add_to_cart, purchase
    rating = np.full(len(u), np.nan)
    if cfg.with_ratings:
        is_buy = e == 2
        rating[is_buy] = rng.integers(1, 6, is_buy.sum())
        etype = etype.astype(object)
        etype[is_buy & (rng.random(len(u)) < 0.3)] = "rating"
    n = len(u)
    frame = pd.DataFrame({
        "event_id": [f"e{event_offset + k:010d}" for k in range(n)],
        "user_id": [f"u{user_offset + x:07d}" for x in u],
        "item_id": [f"i{x:06d}" for x in it],
        "event_type": etype,
        "timestamp": pd.to_datetime(t, unit="s").strftime("%Y-%m-%d %H:%M:%S"),
    })
    if cfg.with_ratings:
        frame["rating"] = rating
    return frame


def _per_user_sorted(users: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Sort frac within each run of equal user ids (users is non-decreasing)."""
    order = np.lexsort((frac, users))
    return frac[order]


def _corrupt(frame: pd.DataFrame, fraction: float, rng: np.random.Generator) -> pd.DataFrame:
    """Break a fraction of rows in the ways real feeds break, and duplicate a few others."""
    if fraction <= 0 or frame.empty:
        return frame
    frame = frame.copy()
    n = len(frame)
    bad = rng.random(n) < fraction
    kind = rng.integers(0, 4, n)
    frame.loc[bad & (kind == 0), "user_id"] = None
    frame.loc[bad & (kind == 1), "timestamp"] = "not-a-time"
    frame.loc[bad & (kind == 2), "event_type"] = "clickk"
    frame.loc[bad & (kind == 3), "item_id"] = ""
    dup = frame[(rng.random(n) < fraction) & ~bad]
    return pd.concat([frame, dup], ignore_index=True)


def _write(frame: pd.DataFrame, directory: str, name: str, formats: list[str]) -> None:
    vectors = schema.ITEM_VECTOR_COLUMN
    if vectors in frame.columns:  # rows without a vector (other kinds of items) hold None, not NaN
        frame = frame.assign(**{vectors: [v if isinstance(v, list) else None for v in frame[vectors]]})
    for fmt in formats:
        target = os.path.join(directory, fmt) if len(formats) > 1 else directory
        os.makedirs(target, exist_ok=True)
        if fmt == "parquet":
            table = pa.Table.from_pandas(frame, preserve_index=False)
            pq.write_table(table, os.path.join(target, f"{name}.parquet"))
        elif fmt == "csv":  # a vector as its numbers separated by spaces
            as_text = {vectors: [" ".join(map(str, v)) if v else "" for v in frame[vectors]]} if vectors in frame.columns else {}
            frame.assign(**as_text).to_csv(os.path.join(target, f"{name}.csv"), index=False)
        elif fmt == "json":
            frame.to_json(os.path.join(target, f"{name}.json"), orient="records", lines=True)


def generate(cfg: GenerateConfig, out_dir: str) -> dict:
    """Write users, items and events under out_dir/{users,items,events}; return a summary.

    Existing files of a previous generation in those folders are replaced.
    """
    if cfg.users < 1 or cfg.events < cfg.users:
        raise ValueError(f"generate: need users >= 1 and events >= users (got {cfg.users} users, {cfg.events} events)")
    if cfg.item_vector_dim < 0:
        raise ValueError(f"generate: item_vector_dim must be >= 0 (0 = no item vectors), got {cfg.item_vector_dim}")
    rng = np.random.default_rng(cfg.seed)
    cat = make_catalog(cfg, rng)
    users = make_users(cfg, rng)
    prior = _demographic_prior(users, cfg.categories, cfg.seed)
    for sub in ("events", "users", "items"):
        d = os.path.join(out_dir, sub)
        if os.path.isdir(d):
            for root, _, files in os.walk(d):
                for f in files:
                    os.remove(os.path.join(root, f))
    _write(pd.concat([users, cold_users(cfg)], ignore_index=True), os.path.join(out_dir, "users"), "users", cfg.formats)
    catalog = [cat.items, cold_items(cfg, cat)]
    if cfg.actions:
        catalog = [cat.items.assign(kind="product"), cold_items(cfg, cat).assign(kind="product"), action_items(cat)]
    action_rng = np.random.default_rng(cfg.seed + 303)  # its own stream: the products' events do not change
    _write(pd.concat(catalog, ignore_index=True), os.path.join(out_dir, "items"), "items", cfg.formats)

    events_per_step = 1 + P_CART + P_CART * P_PURCHASE
    mean_steps = max(3.0, cfg.events / cfg.users / events_per_step)
    lengths = np.clip(rng.geometric(1 / (mean_steps - 2), cfg.users) + 2, 3, MAX_STEPS)
    start0 = int(datetime.fromisoformat(cfg.start_date).replace(tzinfo=timezone.utc).timestamp())
    window = cfg.days * 86400
    starts = start0 + rng.integers(0, window // 2, cfg.users)
    spans = (window - (starts - start0)) * rng.uniform(0.3, 1.0, cfg.users)
    total, n_chunks = 0, 0
    for lo in range(0, cfg.users, USERS_PER_CHUNK):
        hi = min(cfg.users, lo + USERS_PER_CHUNK)
        interest = 0.6 * rng.dirichlet(np.full(cfg.categories, 0.3), hi - lo) + 0.4 * prior[lo:hi]
        seq = _simulate_chunk(cat, interest, lengths[lo:hi], rng)
        frame = _events_frame(seq, lo, starts[lo:hi], spans[lo:hi], cfg, rng, total)
        if cfg.actions:
            frame = pd.concat([frame, action_events(frame, cat, action_rng)], ignore_index=True)
        total += len(frame)
        frame = _corrupt(frame, cfg.corrupt_fraction, rng)
        _write(frame, os.path.join(out_dir, "events"), f"part-{n_chunks:05d}", cfg.formats)
        n_chunks += 1
    summary = {"users": cfg.users, "items": cfg.items, "events": total, "files": n_chunks,
               "formats": cfg.formats, "seed": cfg.seed, "out": out_dir}
    with open(os.path.join(out_dir, "_generated.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    return summary
