"""The top-K kernel: blocked matmul + torch.topk, pure torch/numpy (never imports pyspark).

Contract shared by every function here:
- items are rows of an item table; row 0 is the padding item and is never recommended;
- a user's seen items and ineligible items (eligible[i] False) are never recommended;
- ranking is by score descending, ties broken by the smaller item id, so output is deterministic;
- rows with fewer than k recommendable items are filled with item -1 and score -inf.

Memory stays bounded: users are scored in blocks of about `budget_mb` of scores (8 MB by default, so
a block stays in CPU cache between the matmul and topk; 512 MB at least on a GPU).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

NEG_INF = float("-inf")


DEFAULT_BLOCK_MB = 8.0  # CPU: a block of scores that stays in cache while topk reads it back
GPU_BLOCK_MB = 512.0


def block_rows(n_items: int, budget_mb: float = DEFAULT_BLOCK_MB, min_rows: int = 32) -> int:
    """Users per (users x items) float32 score block: budget_mb of scores, at least min_rows users
    (fewer rows make the matmul inefficient). Measured on 2 Xeon cores, 50k items: 8 MB blocks
    score 1.8x more users/s than 256 MB blocks, because topk then reads scores from cache."""
    return max(min_rows, int(budget_mb * 2**20 // (4 * max(1, n_items))))


def _seen_coords(seen: Sequence, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) pairs of every seen item that is inside the catalog, vectorised."""
    arrays = [np.asarray(s if s is not None else (), dtype=np.int64) for s in seen]
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    if not lengths.sum():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(arrays)), lengths)
    cols = np.concatenate(arrays)
    ok = (cols >= 0) & (cols < n_items)
    return rows[ok], cols[ok]


def mask_scores(scores: torch.Tensor, seen: Sequence, ineligible: Optional[torch.Tensor] = None) -> None:
    """In place: -inf for item 0, each row's seen items and the ineligible items (bool (n_items,))."""
    scores[:, 0] = NEG_INF
    if ineligible is not None and bool(ineligible.any()):
        scores.masked_fill_(ineligible.unsqueeze(0), NEG_INF)
    rows, cols = _seen_coords(seen, scores.shape[1])
    if len(rows):
        dev = scores.device
        scores[torch.as_tensor(rows, device=dev), torch.as_tensor(cols, device=dev)] = NEG_INF


def _topk_rows(scores: torch.Tensor, n: int, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The n largest scores per row (values descending, indices), like torch.topk(scores, n, dim=1),
    but reading each wide row once with a vectorised max instead of a selection over all of it.

    Columns are cut into chunks of `chunk`; the n chunks with the largest maxima hold the top n:
    there are n scores >= the n-th largest chunk maximum M, so every top-n score is >= M and its
    chunk's maximum ranks among the n largest. The values returned are exactly topk's; among equal
    values at the n-th place the indices may differ (callers resolve such ties on the full row).
    The last partial chunk is always a candidate."""
    n_users, n_items = scores.shape
    n_chunks = n_items // chunk
    if n_chunks < 4 * n or n_users == 0 or not scores.is_contiguous():
        return torch.topk(scores, n, dim=1)
    body = scores.as_strided((n_users, n_chunks, chunk), (n_items, chunk, 1))
    best_chunks = torch.topk(body.amax(2), n, dim=1).indices  # (U, n)
    cand = body.gather(1, best_chunks.unsqueeze(-1).expand(n_users, n, chunk)).reshape(n_users, n * chunk)
    vals, j = torch.topk(cand, n, dim=1)
    idx = best_chunks.gather(1, torch.div(j, chunk, rounding_mode="floor")) * chunk + j % chunk
    if n_items > n_chunks * chunk:  # merge the last partial chunk
        tail = torch.arange(n_chunks * chunk, n_items, device=scores.device).expand(n_users, -1)
        vals, j = torch.topk(torch.cat([vals, scores[:, n_chunks * chunk:]], 1), n, dim=1)
        idx = torch.cat([idx, tail], 1).gather(1, j)
    return vals, idx


def topk_from_scores(scores: torch.Tensor, seen: Sequence, k: int,
                     ineligible: Optional[torch.Tensor] = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of a (U, n_items) score matrix (masked in place). Returns (items (U, k), scores (U, k))."""
    n_users, n_items = scores.shape
    out_items = np.full((n_users, k), -1, dtype=np.int64)
    out_scores = np.full((n_users, k), -np.inf, dtype=np.float64)
    if n_users == 0:
        return out_items, out_scores
    mask_scores(scores, seen, ineligible)
    kk = min(k, n_items)
    # One extra place tells whether more items tie with the k-th score than fit (then topk may
    # have dropped a smaller id): the (k+1)-th score equals the k-th.
    extra = 1 if kk < n_items else 0
    vals, idx = _topk_rows(scores, kk + extra)
    crowded = torch.zeros(n_users, dtype=torch.bool, device=scores.device)
    if extra:
        crowded = (vals[:, kk] == vals[:, kk - 1]) & torch.isfinite(vals[:, kk - 1])
        vals, idx = vals[:, :kk], idx[:, :kk]
    # torch.topk orders equal scores arbitrarily: order by item id, then stably by score.
    o = torch.argsort(idx, dim=1)
    idx, vals = idx.gather(1, o), vals.gather(1, o)
    o = torch.sort(vals, dim=1, descending=True, stable=True).indices
    idx, vals = idx.gather(1, o), vals.gather(1, o)
    idx_np, vals_np = idx.cpu().numpy(), vals.double().cpu().numpy()
    for r in torch.nonzero(crowded).flatten().tolist():
        row = scores[r].double().cpu().numpy()
        cand = np.flatnonzero(row >= vals_np[r, -1])
        order = np.lexsort((cand, -row[cand]))[:kk]
        idx_np[r], vals_np[r] = cand[order], row[cand[order]]
    ok = np.isfinite(vals_np)
    out_items[:, :kk] = np.where(ok, idx_np, -1)
    out_scores[:, :kk] = np.where(ok, vals_np, -np.inf)
    return out_items, out_scores


def _block_scores(u: torch.Tensor, item_vecs: torch.Tensor, item_bias: Optional[torch.Tensor]) -> torch.Tensor:
    scores = u @ item_vecs.T
    if item_bias is not None:
        scores += item_bias
    return scores


def topk_excluding(user_vecs: torch.Tensor, item_vecs: torch.Tensor, seen: Sequence, k: int,
                   block: Optional[int] = None, ineligible: Optional[torch.Tensor] = None,
                   budget_mb: float = DEFAULT_BLOCK_MB,
                   item_bias: Optional[torch.Tensor] = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per user by dot product (+ item_bias, a per-item addend), blocked over users,
    seen/ineligible items excluded."""
    n_items = item_vecs.shape[0]
    if item_vecs.device.type == "cuda":
        budget_mb = max(budget_mb, GPU_BLOCK_MB)
    block = block or block_rows(n_items, budget_mb)
    dev = item_vecs.device
    parts = []
    for lo in range(0, len(seen), block):
        u = user_vecs[lo: lo + block].to(dev, item_vecs.dtype)
        parts.append(topk_from_scores(_block_scores(u, item_vecs, item_bias), seen[lo: lo + block], k, ineligible))
    if not parts:
        return np.zeros((0, k), dtype=np.int64), np.full((0, k), -np.inf)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ------------------------------------------------------------------------------------------------
# Business-rule re-ranking of a candidate pool (each row sorted by score, ties by id, -1 padded)


def cap_per_category(cand: np.ndarray, cand_scores: np.ndarray, categories: np.ndarray, k: int,
                     cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep at most `cap` items per category, in score order. Returns (items, scores, complete):
    complete[r] is False when the pool ran out before k items (the caller widens the pool)."""
    n, c = cand.shape
    cats = np.where(cand >= 0, categories[np.maximum(cand, 0)], -1)
    pos = np.broadcast_to(np.arange(c), (n, c))
    # Occurrence number of each candidate within its category: sort by (category, position).
    order = np.argsort(cats * (c + 1) + pos, axis=1, kind="stable")
    sorted_cats = np.take_along_axis(cats, order, 1)
    start = np.where(np.concatenate([np.ones((n, 1), bool), sorted_cats[:, 1:] != sorted_cats[:, :-1]], 1), pos, 0)
    occurrence_sorted = pos - np.maximum.accumulate(start, axis=1)
    occurrence = np.empty_like(occurrence_sorted)
    np.put_along_axis(occurrence, order, occurrence_sorted, 1)
    keep = (cand >= 0) & (occurrence < cap)
    pick = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(keep, pick, 1)
    items = np.where(kept, np.take_along_axis(cand, pick, 1), -1)
    scores = np.where(kept, np.take_along_axis(cand_scores, pick, 1), -np.inf)
    complete = kept.all(1) | (cand < 0).any(1)  # a -1 in the pool means it held every eligible item
    return items, scores, complete


def mmr(cand: np.ndarray, cand_scores: np.ndarray, item_vecs: torch.Tensor, k: int,
        lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Maximal marginal relevance: greedily pick argmax lam*rel - (1-lam)*max cos-sim to the picked.

    rel is the score min-max scaled per user over the pool; the returned scores are the original
    relevance scores, in MMR order. Ties go to the better-ranked candidate (smaller id on equal score).
    """
    n, c = cand.shape
    items = np.full((n, k), -1, dtype=np.int64)
    scores = np.full((n, k), -np.inf)
    if n == 0:
        return items, scores
    valid = torch.as_tensor(cand >= 0)
    rel = torch.as_tensor(np.where(cand >= 0, cand_scores, np.nan))
    lo = torch.nan_to_num(rel, nan=np.inf).min(1, keepdim=True).values
    hi = torch.nan_to_num(rel, nan=-np.inf).max(1, keepdim=True).values
    rel = torch.nan_to_num((rel - lo) / (hi - lo).clamp_min(1e-12), nan=0.0)
    vecs = torch.nn.functional.normalize(item_vecs.detach().float().cpu()[torch.as_tensor(np.maximum(cand, 0))], dim=-1)
    max_sim = torch.zeros(n, c, dtype=torch.float64)
    taken = ~valid
    rows = torch.arange(n)
    for t in range(min(k, c)):
        value = lam * rel - (1 - lam) * max_sim
        value[taken] = -np.inf
        pick = torch.argmax(value, dim=1)  # first maximum = better-ranked candidate
        ok = torch.isfinite(value[rows, pick]).numpy()
        p = pick.numpy()
        items[ok, t] = cand[ok, p[ok]]
        scores[ok, t] = cand_scores[ok, p[ok]]
        taken[rows, pick] = True
        sim = torch.einsum("ncd,nd->nc", vecs, vecs[rows, pick]).double()
        max_sim = torch.maximum(max_sim, sim)
    return items, scores


def explain(top: np.ndarray, history: Sequence, item_vecs: torch.Tensor, n: int = 3) -> list[list[list[int]]]:
    """For each recommended item, the (up to) n items of the user's own history most similar to it
    (cosine of the model's item vectors), most similar first; a repeated history item counts once.

    top: (U, K) item ids (-1 = empty); history[u]: the user's item ids (newest last).
    Returns a U x K nested list of history item ids (empty for empty slots or no history).
    """
    n_users, k = top.shape
    out: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(n_users)]
    if n_users == 0 or n <= 0:
        return out
    n_items = item_vecs.shape[0]
    hist = [np.unique(np.asarray(h if h is not None else (), dtype=np.int64)) for h in history]
    hist = [h[(h > 0) & (h < n_items)] for h in hist]
    width = max((len(h) for h in hist), default=0)
    if width == 0:
        return out
    H = np.zeros((n_users, width), dtype=np.int64)
    for u, h in enumerate(hist):
        H[u, : len(h)] = h
    vecs = torch.nn.functional.normalize(item_vecs.detach().float().cpu(), dim=-1)
    sims = torch.einsum("ukd,uhd->ukh", vecs[torch.as_tensor(np.maximum(top, 0))], vecs[torch.as_tensor(H)])
    sims[torch.as_tensor(H == 0).unsqueeze(1).expand_as(sims)] = NEG_INF
    m = min(n, width)
    vals, idx = torch.topk(sims, m, dim=2)
    best = np.take_along_axis(np.broadcast_to(H[:, None, :], (n_users, k, width)), idx.numpy(), 2)
    finite = torch.isfinite(vals).numpy()
    for u in range(n_users):
        for j in range(k):
            if top[u, j] >= 0:
                out[u][j] = best[u, j][finite[u, j]].tolist()
    return out


def recommend(user_vecs: torch.Tensor, item_vecs: torch.Tensor, seen: Sequence, k: int, *,
              ineligible: Optional[torch.Tensor] = None, categories: Optional[np.ndarray] = None,
              max_per_category: int = 0, mmr_lambda: float = 0.0, pool_factor: int = 4,
              budget_mb: float = DEFAULT_BLOCK_MB,
              item_bias: Optional[torch.Tensor] = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k with business rules: eligibility mask, then an optional per-category cap (exact: the
    pool widens to the whole catalog for users it cannot fill) and/or an MMR re-rank of the best
    pool_factor*k candidates (lambda in (0, 1); 0 = off, 1 = relevance order). item_bias: added to
    every user's score of each item (the log of an item's value for expected-value ranking)."""
    if not max_per_category and not mmr_lambda:
        return topk_excluding(user_vecs, item_vecs, seen, k, ineligible=ineligible, budget_mb=budget_mb,
                              item_bias=item_bias)
    n_items = item_vecs.shape[0]
    pool = min(n_items, max(k, k * pool_factor))
    cand, cand_scores = topk_excluding(user_vecs, item_vecs, seen, pool, ineligible=ineligible, budget_mb=budget_mb,
                                       item_bias=item_bias)
    if max_per_category:
        if categories is None:
            raise ValueError("max_per_category needs the item categories")
        capped, capped_scores, complete = cap_per_category(cand, cand_scores, categories, k if not mmr_lambda else pool,
                                                           max_per_category)
        todo = np.flatnonzero(~complete)
        if len(todo) and pool < n_items:
            full, full_scores = topk_excluding(user_vecs[torch.as_tensor(todo)], item_vecs, [seen[i] for i in todo],
                                               n_items, ineligible=ineligible, budget_mb=budget_mb, item_bias=item_bias)
            w, ws, _ = cap_per_category(full, full_scores, categories, capped.shape[1], max_per_category)
            capped[todo], capped_scores[todo] = w, ws
        cand, cand_scores = capped, capped_scores
    if mmr_lambda:
        return mmr(cand, cand_scores, item_vecs, k, mmr_lambda)
    return cand[:, :k], cand_scores[:, :k]


def reserve_fresh(top: np.ndarray, scores: np.ndarray, user_vecs: torch.Tensor, item_vecs: torch.Tensor,
                  seen: Sequence, fresh: torch.Tensor, slots: int, ineligible: Optional[torch.Tensor] = None,
                  budget_mb: float = DEFAULT_BLOCK_MB,
                  item_bias: Optional[torch.Tensor] = None) -> tuple[np.ndarray, np.ndarray]:
    """A "new arrivals" guarantee: each list holds at least `slots` fresh items (items without
    interactions, fresh[i] True) when enough are eligible and unseen. The best fresh items by the
    user's own scores replace the lowest-ranked non-fresh ones; the list is then re-sorted by score
    (ties by smaller id), so scores stay non-increasing with rank. top/scores: (B, k), -1 padded."""
    if slots <= 0 or not bool(fresh.any()):
        return top, scores
    blocked = ~fresh.to(item_vecs.device)
    if ineligible is not None:
        blocked = blocked | ineligible.to(item_vecs.device)
    best, best_scores = topk_excluding(user_vecs, item_vecs, seen, slots, ineligible=blocked, budget_mb=budget_mb,
                                       item_bias=item_bias)
    is_fresh = fresh.cpu().numpy()
    top, scores = top.copy(), scores.copy()
    k = top.shape[1]
    for i in range(len(top)):
        row = top[i]
        have = int(sum(is_fresh[x] for x in row if x >= 0))
        add = [(b, s) for b, s in zip(best[i], best_scores[i]) if b >= 0 and b not in set(row.tolist())][: max(0, slots - have)]
        if not add:
            continue
        keep = [(x, s) for x, s in zip(row, scores[i]) if x >= 0]
        # Drop the lowest-ranked non-fresh items to make room (empty slots first).
        room = k - len(keep)
        drop = max(0, len(add) - room)
        if drop:
            victims = [j for j in range(len(keep) - 1, -1, -1) if not is_fresh[keep[j][0]]][:drop]
            keep = [e for j, e in enumerate(keep) if j not in set(victims)]
        merged = sorted(keep + add, key=lambda e: (-float(e[1]), int(e[0])))[:k]
        top[i] = -1
        scores[i] = -np.inf
        top[i, :len(merged)] = [e[0] for e in merged]
        scores[i, :len(merged)] = [e[1] for e in merged]
    return top, scores


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-mixed uint64 for each uint64 (vectorised, wrapping)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def explore(cand: np.ndarray, cand_scores: np.ndarray, exploit: int, slots: int, user_keys: np.ndarray,
            seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exploration slots. cand: (B, exploit + pool) ranked candidates, -1 padded. Each list is the
    user's first `exploit` candidates, shown for sure, then `slots` items drawn uniformly without
    replacement from the candidates after them (the user's pool of m), in rank order.

    Returns (top, scores, propensity), each (B, exploit + slots): propensity is the probability that
    this policy shows the item to the user, 1 for the exploited items and min(slots, m) / m for the
    drawn ones (NaN where there is no item). A draw is a hash of (seed, user key, item), so the same
    inputs give the same lists whatever the batching."""
    n = exploit + slots
    top = np.full((len(cand), n), -1, dtype=np.int64)
    scores = np.full((len(cand), n), NEG_INF, dtype=np.float64)
    propensity = np.full((len(cand), n), np.nan)
    head = cand[:, :exploit]
    top[:, :exploit], scores[:, :exploit] = head, cand_scores[:, :exploit]
    propensity[:, :exploit] = np.where(head >= 0, 1.0, np.nan)
    pool, pool_scores = cand[:, exploit:], cand_scores[:, exploit:]
    if slots == 0 or pool.shape[1] == 0:
        return top, scores, propensity
    user_mix = _mix64(_mix64(np.uint64(seed)) ^ np.asarray(user_keys, dtype=np.uint64))
    keys = _mix64(user_mix[:, None] ^ pool.astype(np.uint64))
    keys = np.where(pool >= 0, keys, np.iinfo(np.uint64).max)
    # The `slots` smallest keys are a uniform draw without replacement; positions re-sorted keep
    # rank order (pool is ranked, its -1 padding last).
    chosen = np.sort(np.argsort(keys, axis=1, kind="stable")[:, :slots], axis=1)
    picked = np.take_along_axis(pool, chosen, 1)
    m = (pool >= 0).sum(1, keepdims=True)
    share = np.minimum(slots, m) / np.maximum(m, 1)
    top[:, exploit:] = picked
    scores[:, exploit:] = np.where(picked >= 0, np.take_along_axis(pool_scores, chosen, 1), NEG_INF)
    propensity[:, exploit:] = np.where(picked >= 0, share, np.nan)
    return top, scores, propensity


def first_unseen(ranked: np.ndarray, seen: Sequence, k: int, ineligible: Optional[np.ndarray] = None) -> np.ndarray:
    """(B, k) int64, -1 padded: for each user, the first k items of one fixed ranking (e.g. by
    popularity) that the user has not seen and that are eligible."""
    out = np.full((len(seen), k), -1, dtype=np.int64)
    for i, s in enumerate(seen):
        s = set(int(x) for x in s)
        row = [int(x) for x in ranked if int(x) not in s and (ineligible is None or not ineligible[int(x)])][:k]
        out[i, :len(row)] = row
    return out


# ------------------------------------------------------------------------------------------------
# Probabilities: the model's scores read as a softmax over the items a user can still be shown


def set_probabilities(user_vecs: torch.Tensor, item_vecs: torch.Tensor, seen: Sequence, temperature: float,
                      members: Optional[torch.Tensor] = None, ineligible: Optional[torch.Tensor] = None,
                      budget_mb: float = DEFAULT_BLOCK_MB) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The next-item distribution p_u(i) = softmax(score / temperature) over the items each user can
    be shown (seen, ineligible and padding items have p = 0).

    Returns (log normaliser (U,), float64: log p_u(i) = score_ui / temperature - it), and with
    members, a (n_items, C) 0/1 matrix of C item sets, the probability (U, C) that the user's next
    item is in each set (a sum of p_u over its members; one matmul per block of users)."""
    n_items = item_vecs.shape[0]
    if item_vecs.device.type == "cuda":
        budget_mb = max(budget_mb, GPU_BLOCK_MB)
    block = block_rows(n_items, budget_mb)
    dev = item_vecs.device
    log_z, sets = [], []
    for lo in range(0, len(seen), block):
        scores = (user_vecs[lo: lo + block].to(dev, item_vecs.dtype) @ item_vecs.T) / temperature
        mask_scores(scores, seen[lo: lo + block], ineligible)
        top = scores.amax(1, keepdim=True).clamp_min(-1e30)  # a user with nothing left: all -inf
        weights = torch.exp(scores - top)
        total = weights.sum(1)
        log_z.append((top.squeeze(1).double() + torch.log(total.double())).cpu().numpy())
        if members is not None:
            sets.append(((weights @ members) / total.clamp_min(1e-30).unsqueeze(1)).double().cpu().numpy())
    if not log_z:
        return np.zeros(0), None if members is None else np.zeros((0, members.shape[1]))
    return np.concatenate(log_z), (np.concatenate(sets) if members is not None else None)
