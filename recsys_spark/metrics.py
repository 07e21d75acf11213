"""Ranking metrics, numpy reference (no Spark): one held-out target per user."""
from __future__ import annotations

import numpy as np


# The normal quantile of a two-sided 95% interval.
Z95 = 1.96


def mean_halfwidth(std: float, n: int):
    """Half the width of the 95% normal interval of a mean of n values with this sample standard
    deviation (None for fewer than 2 values)."""
    return float(Z95 * std / np.sqrt(n)) if n > 1 and std is not None else None


def recall_at_k(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    """ranked (U, >=k) item ids best first; targets (U,) one held-out item per user."""
    return float(np.mean((ranked[:, :k] == targets[:, None]).any(axis=1)))


def ndcg_per_user(ranked: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Each user's NDCG@k. With one relevant item the ideal DCG is 1, so NDCG = 1 / log2(rank + 1)
    if rank <= k else 0."""
    hits = ranked[:, :k] == targets[:, None]
    return (hits / np.log2(np.arange(2, k + 2))[None, :]).sum(axis=1)


def ndcg_at_k(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    return float(np.mean(ndcg_per_user(ranked, targets, k)))


def mrr_at_k(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Mean reciprocal rank of the target within the top k (0 when absent). With one relevant item
    per user this is also MAP@k."""
    hits = ranked[:, :k] == targets[:, None]
    return float(np.mean((hits / np.arange(1, k + 1)[None, :]).sum(axis=1)))


def beyond_accuracy(ranked: np.ndarray, k: int, n_items: int, popularity: np.ndarray, n_users_pop: int,
                    categories: np.ndarray) -> dict[str, float]:
    """Reference for the list-level metrics of the top k (item ids 1..n_items-1; -1 = empty slot).

    coverage: distinct recommended items / catalog size (n_items - 1).
    gini: Gini index of how often each catalog item is recommended (0 = uniform, 1 = one item).
    novelty: mean self-information -log2(max(pop_i, 1) / n_users_pop) of recommended items.
    ild: mean over users of the share of item pairs in the list with different categories.
    pop_share / pop_interaction_share: share of recommendations / of interactions that go to the
    top 10% most popular items (ties by smaller id)."""
    top = ranked[:, :k]
    valid = top >= 0
    items = top[valid]
    exposure = np.bincount(items, minlength=n_items)[1:].astype(float)
    sorted_e = np.sort(exposure)
    n = len(sorted_e)
    gini = float((2 * np.arange(1, n + 1) - n - 1) @ sorted_e / (n * sorted_e.sum())) if sorted_e.sum() else 0.0
    novelty = float(np.mean(-np.log2(np.maximum(popularity[items], 1) / n_users_pop)))
    ild = []
    for row in top:
        row = row[row >= 0]
        m = len(row)
        if m < 2:
            continue
        _, counts = np.unique(categories[row], return_counts=True)
        ild.append(1 - (counts * (counts - 1)).sum() / (m * (m - 1)))
    n_top = max(1, int(np.ceil(0.1 * (n_items - 1))))
    order = np.lexsort((np.arange(1, n_items), -popularity[1:]))[:n_top] + 1
    head = np.zeros(n_items, dtype=bool)
    head[order] = True
    return {"coverage": float(len(np.unique(items)) / (n_items - 1)), "gini": gini, "novelty": novelty,
            "ild": float(np.mean(ild)) if ild else 0.0, "pop_share": float(head[items].mean()),
            "pop_interaction_share": float(popularity[head].sum() / popularity[1:].sum())}
