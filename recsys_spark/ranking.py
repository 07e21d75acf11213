"""Ranking: from users' rows to their top-K rows, on the executors.

The one path every model's lists take (nightly scoring, evaluation, the A/B simulator, baselines):
- the catalog (`item_catalog`): item vectors, ids, eligibility, categories, freshness and the
  popularity lists for users the model cannot serve, computed once on the driver and broadcast;
- encoding users (`encode_users`): histories and profiles -> padded tensors -> user vectors;
- top-K on executors (`score_users`, `attention_topk`, `factor_topk`): a mapInPandas over user
  rows, the kernel of recsys_spark.topk with business rules, explanations and fallbacks;
- the output rows (`topk_rows`, `recommendation_rows`): TOPK_SCHEMA for evaluation,
  RECOMMENDATION_ROWS for the recommendations table.

Imports no pyspark (DataFrames are only called): training ranks use `encode_users` too.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from recsys_spark import checkpoints, devices, schema
from recsys_spark.calibration import purchase_probability, shown_probability
from recsys_spark.model import leading_padding, pad_left, pad_right
from recsys_spark.topk import (DEFAULT_BLOCK_MB, explain, explore, first_unseen, recommend, reserve_fresh,
                               set_probabilities, topk_excluding)

TOPK_SCHEMA = "user_idx long, rank int, item_idx long, score double"
# With exploration slots: and the probability that the policy shows the item (topk.explore).
EXPLORED_TOPK_SCHEMA = TOPK_SCHEMA + ", propensity double"
RECOMMENDATION_ROWS = ("user_id string, rank int, item_id string, score float, probability float, "
                       "purchase_probability float, propensity float, because_item_ids array<string>, served_by string")



@dataclass(frozen=True)
class ScoringSpec:
    """Everything an executor needs, as plain picklable values (the catalog travels by broadcast)."""
    k: int
    ckpt_path: str
    batch_users: int = 1024
    max_per_category: int = 0
    mmr_lambda: float = 0.0
    explain: int = 0
    device: str = "auto"
    block_mb: float = 8.0
    new_item_slots: int = 0
    with_ids: bool = False  # output RECOMMENDATION_ROWS (ids, explanations) instead of TOPK_SCHEMA
    # The checkpoint's calibration (recsys_spark.calibration; checkpoints.calibration).
    calibration: dict = field(default_factory=lambda: {"temperature": 1.0, "new_share": 1.0})
    objective: str = "relevance"
    # The last explore_slots of k are drawn from the explore_pool candidates after the first
    # k - explore_slots (topk.explore; 0 = off); explore_seed makes the draws repeatable.
    explore_slots: int = 0
    explore_pool: int = 0
    explore_seed: int = 0


def item_catalog(item_vectors: np.ndarray, item_ids: Optional[np.ndarray] = None,
                 ineligible: Optional[np.ndarray] = None, categories: Optional[np.ndarray] = None,
                 popular: Optional[np.ndarray] = None, segments: Optional[dict] = None,
                 fresh: Optional[np.ndarray] = None, value: Optional[np.ndarray] = None) -> dict:
    """The item side of ranking, computed once per run: vectors (n, d) float32 (row 0 = padding),
    ids (n,) str, ineligible (n,) bool, categories (n,) int, fresh (n,) bool (no interactions the
    model was trained on), value (n,) float (price or margin; for expected-value objectives); for
    users the model cannot serve, popular (item indexes, most popular first) and segments
    {declared attributes as segment_key: item indexes, most popular first}."""
    n = item_vectors.shape[0]
    inel = np.zeros(n, dtype=bool) if ineligible is None else np.asarray(ineligible, dtype=bool)
    if inel.shape != (n,):
        raise ValueError(f"ineligible must have shape ({n},), got {inel.shape}")
    return {
        "vectors": np.ascontiguousarray(item_vectors, dtype=np.float32),
        "ids": np.asarray(item_ids if item_ids is not None else [str(i) for i in range(n)], dtype=object),
        "ineligible": inel,
        "categories": np.zeros(n, dtype=np.int64) if categories is None else np.asarray(categories, dtype=np.int64),
        "popular": np.zeros(0, dtype=np.int64) if popular is None else np.asarray(popular, dtype=np.int64),
        "segments": segments or {},
        "fresh": np.zeros(n, dtype=bool) if fresh is None else np.asarray(fresh, dtype=bool),
        "value": np.ones(n, dtype=np.float64) if value is None else np.asarray(value, dtype=np.float64),
    }


# An item without a positive value (no price) still ranks, below every valued item it could tie with.
MIN_VALUE = 1e-6


def value_bias(catalog: dict, objective: str, temperature: float) -> Optional[np.ndarray]:
    """Per-item addend to the model's scores that makes the top-K the best by expected value:
    ranking by p(i) x value(i) = exp(s_i / T) x value(i) / Z is ranking by s_i + T log value(i).
    None for relevance."""
    if objective == "relevance":
        return None
    return (temperature * np.log(np.maximum(catalog["value"], MIN_VALUE))).astype(np.float32)


def segment_key(profile_cat) -> str:
    """The key of a combination of declared attributes (a segment)."""
    return ",".join(str(int(x)) for x in profile_cat)


def fallback_list(catalog: dict, profile_cat, seen: np.ndarray, k: int) -> tuple[list, str]:
    """Top-k by segment popularity (or global popularity) with seen and ineligible items removed,
    and how it was made (schema.SERVED_SEGMENT or SERVED_POPULAR)."""
    key = segment_key(profile_cat) if profile_cat is not None else ""
    if key in catalog["segments"]:
        ranked, how = catalog["segments"][key], schema.SERVED_SEGMENT
    else:
        ranked, how = catalog["popular"], schema.SERVED_POPULAR
    row = first_unseen(ranked, [seen], k, catalog["ineligible"])[0]
    return [int(i) for i in row if i >= 0], how


def _item_tensors(catalog: dict, device: str):
    """Item tensors on the scoring device. On CPU they share memory with the broadcast arrays; a GPU
    copy is made once per Python worker and kept in the catalog dict (which the worker caches)."""
    key = f"_tensors_{device}"
    if key not in catalog:
        catalog[key] = (torch.as_tensor(catalog["vectors"], device=device),
                        torch.as_tensor(catalog["ineligible"], device=device))
    return catalog[key]


def _bias_tensor(catalog: dict, spec: "ScoringSpec", device: str) -> Optional[torch.Tensor]:
    key = f"_bias_{spec.objective}_{spec.calibration['temperature']}_{device}"
    if key not in catalog:
        bias = value_bias(catalog, spec.objective, spec.calibration["temperature"])
        catalog[key] = None if bias is None else torch.as_tensor(bias, device=device)
    return catalog[key]


def _int_arrays(values: Sequence) -> list[np.ndarray]:
    return [np.asarray(v if v is not None else (), dtype=np.int64) for v in values]


# With a collaborative part, the newest items of a history that ALS folds in (the attention model
# reads its newest max_len): every item of any real user's history, and bounded for a runaway one.
COLLABORATIVE_HISTORY = 10_000


def padded_histories(histories: list[np.ndarray], max_len: int, whole: bool = False) -> np.ndarray:
    """(B, L) the histories left-padded as the model reads them: the newest max_len items, or with
    whole (a model with a collaborative part) the newest COLLABORATIVE_HISTORY: ALS folds in what
    MLlib was fitted on, the whole history, while the attention model reads the newest max_len."""
    width = max_len
    if whole:
        width = max(width, min(COLLABORATIVE_HISTORY, max([len(h) for h in histories if h is not None] + [0])))
    return pad_left(histories, width)


def encode_users(model, histories: list[np.ndarray], profile_cat: Optional[Sequence] = None,
                 profile_num: Optional[Sequence] = None, items=None, device: str = "cpu"):
    """(B, w) served user vectors of the model for histories (1-D item index arrays, oldest first;
    read as padded_histories says) and, where the model uses them, declared attributes and behaviour
    numbers (missing or wrong-length rows read as unknown / zeros)."""
    seq = padded_histories(histories, model.cfg.max_len, model.collaborative is not None)
    seq = torch.as_tensor(seq[:, leading_padding(seq):], device=device)
    pc = pn = None
    if model.use_profile and profile_cat is not None:
        pc = torch.as_tensor(pad_right(list(profile_cat), len(model.cfg.attr_cardinalities)), device=device)
    if model.use_behaviour and profile_num is not None:
        n_num = model.cfg.n_profile_num
        pn = torch.as_tensor(np.stack([np.asarray(x if x is not None and len(x) == n_num else np.zeros(n_num))
                                       for x in profile_num]), dtype=torch.float32, device=device)
    return model.user_vectors(seq, pc, pn, items)


def topk_rows(user_idx: np.ndarray, top: np.ndarray, scores: np.ndarray,
              propensity: Optional[np.ndarray] = None) -> pd.DataFrame:
    """TOPK_SCHEMA rows of (users, k) item indexes and scores (EXPLORED_TOPK_SCHEMA with
    propensities); -1 entries (no item) are left out."""
    k = top.shape[1]
    ok = (top >= 0).ravel()
    rows = pd.DataFrame({
        "user_idx": np.repeat(user_idx, k)[ok],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(user_idx))[ok],
        "item_idx": top.ravel()[ok],
        "score": scores.ravel()[ok],
    })
    if propensity is not None:
        rows["propensity"] = propensity.ravel()[ok]
    return rows


def recommendation_rows(user_id: np.ndarray, top: np.ndarray, scores: np.ndarray, ids: np.ndarray,
                        because: Optional[list], served: np.ndarray,
                        probability: Optional[np.ndarray] = None,
                        propensity: Optional[np.ndarray] = None,
                        purchase: Optional[np.ndarray] = None) -> pd.DataFrame:
    """RECOMMENDATION_ROWS of (users, k) item indexes: item ids, probabilities (NaN: none) of a next
    interaction and of a purchase,
    propensities (None: every item is shown for sure), explanations as ids, served_by."""
    k = top.shape[1]
    ok = (top >= 0).ravel()
    flat = top.ravel()[ok]
    if because is None:
        expl = [[] for _ in range(len(flat))]
    else:
        expl = [[ids[i] for i in b] for row in because for b in row]
        expl = [e for e, keep in zip(expl, ok) if keep]
    return pd.DataFrame({
        "user_id": np.repeat(user_id, k)[ok],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(user_id))[ok],
        "item_id": ids[flat],
        "score": scores.ravel()[ok].astype(np.float32),
        "probability": (np.full(top.shape, np.nan) if probability is None else probability).ravel()[ok].astype(np.float32),
        "purchase_probability": (np.full(top.shape, np.nan) if purchase is None else purchase).ravel()[ok].astype(np.float32),
        "propensity": (np.ones(top.shape) if propensity is None else propensity).ravel()[ok].astype(np.float32),
        "because_item_ids": expl,
        "served_by": np.repeat(served, k)[ok],
    })


def _serve_without_model(part: pd.DataFrame, model, catalog: dict, histories: list, seen: list,
                         top: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """served_by per user; users with no history whom the model cannot serve from a profile (no
    profile path, or nothing declared) get the popularity fallback in place (top and scores)."""
    served = np.array([schema.SERVED_HISTORY if len(h) else schema.SERVED_PROFILE for h in histories], dtype=object)
    pcs = list(part["profile_cat"]) if "profile_cat" in part else [None] * len(part)
    for i, h in enumerate(histories):
        known = pcs[i] is not None and any(int(x) > 0 for x in pcs[i])
        if len(h) == 0 and not (model.use_profile and known):
            ranked, served[i] = fallback_list(catalog, pcs[i], seen[i], k)
            top[i] = -1
            top[i, :len(ranked)] = ranked
            scores[i] = 0.0
    return served


def _user_keys(part: pd.DataFrame) -> np.ndarray:
    """A stable integer per user (the same in every process) for exploration draws."""
    if "user_id" in part:
        return np.array([zlib.crc32(str(u).encode()) for u in part["user_id"]], dtype=np.uint64)
    return part["user_idx"].to_numpy().astype(np.uint64)


def _rank_batch(part: pd.DataFrame, spec: ScoringSpec, model, catalog: dict, items, ineligible,
                device: str) -> pd.DataFrame:
    seen = _int_arrays(part["seen"])
    # History items outside the catalog (deleted since) cannot be encoded: left out.
    n_items = items.shape[0]
    histories = [h[(h > 0) & (h < n_items)] for h in _int_arrays(part["input"])]
    users = encode_users(model, histories, part["profile_cat"] if "profile_cat" in part else None,
                         part["profile_num"] if "profile_num" in part else None, items, device).to(device)
    bias = _bias_tensor(catalog, spec, device)
    exploit = spec.k - spec.explore_slots
    top, scores = recommend(users, items, seen, exploit + spec.explore_pool if spec.explore_slots else spec.k,
                            ineligible=ineligible, categories=catalog["categories"],
                            max_per_category=spec.max_per_category, mmr_lambda=spec.mmr_lambda,
                            budget_mb=spec.block_mb, item_bias=bias)
    propensity = None
    if spec.explore_slots:
        top, scores, propensity = explore(top, scores, exploit, spec.explore_slots, _user_keys(part), spec.explore_seed)
    if spec.new_item_slots:
        top, scores = reserve_fresh(top, scores, users, items, seen, torch.as_tensor(catalog["fresh"]),
                                    spec.new_item_slots, ineligible=ineligible, budget_mb=spec.block_mb, item_bias=bias)
    if not spec.with_ids:
        return topk_rows(part["user_idx"].to_numpy(), top, scores, propensity)
    probability, purchase, scores, top, propensity = _probabilities(users, items, seen, top, scores, propensity,
                                                                    catalog, spec)
    histories = [h[-model.cfg.max_len:] for h in histories]
    because = explain(top, histories, items, spec.explain) if spec.explain else None
    served = _serve_without_model(part, model, catalog, histories, seen, top, scores, spec.k)
    popular = (served == schema.SERVED_SEGMENT) | (served == schema.SERVED_POPULAR)
    probability[popular] = np.nan  # popularity lists: no model probability, and no exploration
    if purchase is not None:
        purchase[popular] = np.nan
    if propensity is not None:
        propensity[popular] = np.where(top[popular] >= 0, 1.0, np.nan)
    return recommendation_rows(part["user_id"].to_numpy(), top, scores, catalog["ids"], because, served, probability,
                               propensity, purchase)


def _probabilities(users, items, seen, top: np.ndarray, ranked_by: np.ndarray, propensity: Optional[np.ndarray],
                   catalog: dict, spec: ScoringSpec) -> tuple:
    """(calibrated probability that each listed item is the user's next (the shown-item
    correction included), that the user's next step buys it (None when the model was not
    calibrated for purchases), the score column, the items, their propensities): the model's score for
    relevance; for an expected-value objective the expected value probability x value, the list
    re-ordered by it (the kernel chose the items by the temperature-scaled probability x value; the
    isotonic map is monotone but not linear, so it may swap neighbours)."""
    temperature, new_share = spec.calibration["temperature"], spec.calibration["new_share"]
    # The model's chance over every item the user has not had, as calibrated: business rules decide
    # what a list shows, not how likely the user is to pick it.
    log_z, _ = set_probabilities(users, items, seen, temperature, budget_mb=spec.block_mb)
    bias = value_bias(catalog, spec.objective, temperature)
    model_scores = ranked_by - (bias[np.maximum(top, 0)] if bias is not None else 0.0)
    scaled = new_share * np.exp(model_scores / temperature - log_z[:, None])
    probability = np.where(top >= 0, shown_probability(scaled, spec.calibration), np.nan)
    purchase = purchase_probability(scaled, spec.calibration)
    purchase = None if purchase is None else np.where(top >= 0, purchase, np.nan)
    if spec.objective == "relevance":
        return probability, purchase, ranked_by, top, propensity
    expected = np.where(top >= 0, probability * catalog["value"][np.maximum(top, 0)], -np.inf)
    order = np.lexsort((top, -expected), axis=1) if top.size else np.zeros_like(top)
    take = lambda a: None if a is None else np.take_along_axis(a, order, 1)  # noqa: E731
    return take(probability), take(purchase), take(expected), take(top), take(propensity)


def _score_partition(batches: Iterator[pd.DataFrame], spec: ScoringSpec, catalog_bc) -> Iterator[pd.DataFrame]:
    torch.set_num_threads(1)  # Spark runs one task per core
    device = devices.pick(spec.device, devices.spark_task_gpus(), key="score.device")
    catalog = catalog_bc.value
    items, ineligible = _item_tensors(catalog, device)
    model = checkpoints.cached_model(spec.ckpt_path).to(device)
    with torch.no_grad():
        for pdf in batches:
            for lo in range(0, len(pdf), spec.batch_users):
                yield _rank_batch(pdf.iloc[lo: lo + spec.batch_users], spec, model, catalog, items, ineligible, device)


def score_users(users, spec: ScoringSpec, catalog_bc):
    """Top-K per user on the executors, by the checkpoint's model.

    users (a DataFrame) needs user_idx (or user_id when spec.with_ids), input (history), seen
    (array<int> of items never to recommend), and profile_cat / profile_num where the model uses
    them. Returns TOPK_SCHEMA rows, or RECOMMENDATION_ROWS when spec.with_ids.
    """
    out = RECOMMENDATION_ROWS if spec.with_ids else EXPLORED_TOPK_SCHEMA if spec.explore_slots else TOPK_SCHEMA
    return users.mapInPandas(lambda it: _score_partition(it, spec, catalog_bc), out)


def popularity_rows(users, k: int, catalog_bc):
    """user_id, rank, item_id: each user's top-k by popularity as the nightly ranks it for users the
    model cannot serve (fallback_list: the user's segment, or everyone; seen and ineligible items
    removed). users: user_id, seen, profile_cat."""
    def part(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        catalog = catalog_bc.value
        for pdf in batches:
            rows = [(user, rank, catalog["ids"][item])
                    for user, cat, seen in zip(pdf["user_id"], pdf["profile_cat"], pdf["seen"])
                    for rank, item in enumerate(fallback_list(catalog, cat, [] if seen is None else seen, k)[0], 1)]
            yield pd.DataFrame(rows, columns=["user_id", "rank", "item_id"])

    return users.select("user_id", "seen", "profile_cat").mapInPandas(part, "user_id string, rank int, item_id string")


def attention_topk(users, ckpt_path: str, k: int, batch_users: int = 1024, objective: str = "relevance",
                   value: Optional[np.ndarray] = None, explore_slots: int = 0, explore_pool: int = 0,
                   explore_seed: int = 0):
    """Plain top-K (no business rules) of the checkpoint's model over its training catalog, for
    evaluation: TOPK_SCHEMA rows (EXPLORED_TOPK_SCHEMA with exploration slots, see ScoringSpec).
    users: user_idx, input, seen, profile_cat, profile_num. With an expected-value objective,
    value[i] is item i's price or margin (see value_bias)."""
    catalog = item_catalog(checkpoints.cached_model(ckpt_path).item_vectors().detach().numpy(), value=value)
    bc = users.sparkSession.sparkContext.broadcast(catalog)
    spec = ScoringSpec(k=k, ckpt_path=ckpt_path, batch_users=batch_users, device="cpu", objective=objective,
                       calibration=checkpoints.calibration(checkpoints.manifest(ckpt_path)),
                       explore_slots=explore_slots, explore_pool=explore_pool, explore_seed=explore_seed)
    return score_users(users, spec, bc)


def _factor_partition(batches: Iterator[pd.DataFrame], item_factors: np.ndarray, k: int, vector_col: str,
                      budget_mb: float) -> Iterator[pd.DataFrame]:
    torch.set_num_threads(1)
    items = torch.as_tensor(item_factors)
    dim = item_factors.shape[1]
    for pdf in batches:
        users = np.stack([np.asarray(f, dtype=np.float32) if f is not None else np.zeros(dim, np.float32)
                          for f in pdf[vector_col]]) if len(pdf) else np.zeros((0, dim), np.float32)
        top, scores = topk_excluding(torch.as_tensor(users), items, list(pdf["seen"]), k, budget_mb=budget_mb)
        yield topk_rows(pdf["user_idx"].to_numpy(), top, scores)


def factor_topk(users, item_factors: np.ndarray, k: int, vector_col: str = "features",
                budget_mb: float = DEFAULT_BLOCK_MB):
    """Top-K by dot product with given user vectors (users: user_idx, seen, vector_col; a missing
    vector scores every item 0, so ties fall to item order): TOPK_SCHEMA rows."""
    return (users.select("user_idx", "seen", vector_col)
            .mapInPandas(lambda it: _factor_partition(it, item_factors, k, vector_col, budget_mb), TOPK_SCHEMA))


# ------------------------------------------------------------------------------------------------
# Reverse top-K: for each campaign (an item set), the users most likely to pick one of its items next

CAMPAIGN_ROWS = "campaign long, user_id string, probability double, users long"


@dataclass(frozen=True)
class CampaignSpec:
    """What an executor needs to find campaign audiences; the catalog broadcast carries `members`,
    a (n_items, C) 0/1 float32 matrix of the campaigns' items. As in the lists, a user's seen items
    are out of the distribution: the probability is of a next item the user has not had yet."""
    ckpt_path: str
    temperature: float
    new_share: float  # the checkpoint's calibration (ScoringSpec.calibration)
    keep: tuple  # per campaign: candidates each partition keeps (0 = every user over its threshold)
    min_probability: tuple  # per campaign: users below it are never candidates
    batch_users: int = 1024
    device: str = "auto"
    block_mb: float = 8.0


def _servable(part: pd.DataFrame, model, histories: list) -> np.ndarray:
    """Users the model can encode: a history, or declared attributes on a model with a profile path."""
    pcs = list(part["profile_cat"]) if "profile_cat" in part else [None] * len(part)
    return np.array([len(h) > 0 or (model.use_profile and pc is not None and any(int(x) > 0 for x in pc))
                     for h, pc in zip(histories, pcs)], dtype=bool)


class CampaignTop:
    """A partition's running best candidates per campaign (the `keep` largest probabilities).

    Batches wait in a buffer that is merged into the kept candidates once it holds as many rows as
    are kept (at most budget_mb of them), so each user goes through about two selections instead of
    one per batch: with audiences of thousands of users, re-selecting the kept rows for every batch
    of users cost far more than scoring them."""

    def __init__(self, keep: np.ndarray, budget_mb: float = 256.0):
        self.keep = keep
        width = int(keep.max()) if len(keep) and keep.max() > 0 else 0
        self.vals = torch.full((width, len(keep)), float("-inf"), dtype=torch.float64)
        self.users = torch.full((width, len(keep)), -1, dtype=torch.long)
        # A buffered row costs 8 bytes per campaign (its values; users are a range per batch).
        self.flush_rows = max(1, min(width, int(budget_mb * 2 ** 20 / (8 * max(1, len(keep))))))
        self.pending: list[tuple[torch.Tensor, int]] = []
        self.n_pending = 0

    def add(self, probs: np.ndarray, first_user: int) -> None:
        if not self.vals.shape[0]:
            return
        self.pending.append((torch.as_tensor(probs, dtype=torch.float64), first_user))
        self.n_pending += len(probs)
        if self.n_pending >= self.flush_rows:
            self._merge()

    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, user positions), each (width, campaigns), best first; -inf / -1 where empty."""
        self._merge()
        return self.vals.numpy(), self.users.numpy()

    def _merge(self) -> None:
        if not self.pending:
            return
        vals = torch.cat([self.vals] + [v for v, _ in self.pending])
        users = torch.cat([self.users] + [torch.arange(first, first + len(v)).unsqueeze(1).expand_as(v)
                                          for v, first in self.pending])
        top = torch.topk(vals, self.vals.shape[0], dim=0)
        self.vals, self.users = top.values, users.gather(0, top.indices)
        self.pending, self.n_pending = [], 0


def _campaign_partition(batches: Iterator[pd.DataFrame], spec: CampaignSpec, catalog_bc) -> Iterator[pd.DataFrame]:
    torch.set_num_threads(1)
    device = devices.pick(spec.device, devices.spark_task_gpus(), key="score.device")
    catalog = catalog_bc.value
    items, _ = _item_tensors(catalog, device)
    members = torch.as_tensor(catalog["members"], device=device)
    model = checkpoints.cached_model(spec.ckpt_path).to(device)
    keep, floor = np.asarray(spec.keep, dtype=np.int64), np.asarray(spec.min_probability, dtype=np.float64)
    best = CampaignTop(keep)
    user_ids: list = []
    sums, count, over = np.zeros(len(keep)), 0, []
    with torch.no_grad():
        for pdf in batches:
            for lo in range(0, len(pdf), spec.batch_users):
                part = pdf.iloc[lo: lo + spec.batch_users]
                histories = [h[(h > 0) & (h < items.shape[0])] for h in _int_arrays(part["input"])]
                ok = _servable(part, model, histories)
                part, histories = part[ok], [h for h, o in zip(histories, ok) if o]
                if not len(part):
                    continue
                users = encode_users(model, histories, part["profile_cat"] if "profile_cat" in part else None,
                                     part["profile_num"] if "profile_num" in part else None, items, device)
                _, probs = set_probabilities(users, items, _int_arrays(part["seen"]), spec.temperature,
                                             members=members, budget_mb=spec.block_mb)
                probs = probs * spec.new_share
                sums += probs.sum(0)
                probs = np.where(probs >= floor, probs, -np.inf)
                best.add(np.where(keep > 0, probs, -np.inf), len(user_ids))
                rows, cols = np.nonzero(np.isfinite(probs) & (keep == 0))  # threshold-only campaigns
                over.append(pd.DataFrame({"campaign": cols.astype(np.int64), "user_id": part["user_id"].to_numpy()[rows],
                                          "probability": probs[rows, cols], "users": 0}))
                user_ids.extend(part["user_id"].tolist())
                count += len(part)
    ids = np.asarray(user_ids, dtype=object)
    vals, who = best.best()
    rank = np.arange(vals.shape[0])[:, None]
    r, c = np.nonzero(np.isfinite(vals) & (rank < keep[None, :]))
    over.append(pd.DataFrame({"campaign": c.astype(np.int64), "user_id": ids[who[r, c]] if len(r) else [],
                              "probability": vals[r, c], "users": 0}))
    # One row per campaign with the partition's probability sum (user_id null): the base rates.
    over.append(pd.DataFrame({"campaign": np.arange(len(keep), dtype=np.int64), "user_id": None,
                              "probability": sums, "users": count}))
    yield pd.concat(over, ignore_index=True)


def campaign_candidates(users, spec: CampaignSpec, catalog_bc):
    """Per campaign, each partition's best candidates: CAMPAIGN_ROWS with the calibrated probability
    that the user's next item is one of the campaign's; plus, per partition and campaign, one row
    with user_id null, the sum of every scored user's probability and their number (users).
    users: user_id, input, seen, profile_cat, profile_num (scoring_input). Users the model cannot encode
    (no history, nothing declared) are not scored."""
    return users.mapInPandas(lambda it: _campaign_partition(it, spec, catalog_bc), CAMPAIGN_ROWS)
