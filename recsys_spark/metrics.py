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


def head_items(popularity: np.ndarray, share: float = 0.1) -> np.ndarray:
    """Ids of the `share` most popular catalog items (ties by smaller id); item 0 is padding."""
    n = len(popularity) - 1
    order = np.lexsort((np.arange(1, n + 1), -popularity[1:]))
    return order[: max(1, int(np.ceil(share * n)))] + 1


def exposure_figures(exposure: np.ndarray, popularity: np.ndarray, n_users_pop: int) -> dict[str, float]:
    """The list-level metrics that depend only on how often each item was recommended.

    exposure[i]: recommendations of item i (index 0, the padding item, is ignored); popularity[i]:
    interactions of item i in the evaluation histories. coverage: distinct recommended items /
    catalog size (n_items - 1). gini: Gini index of the exposures (0 = uniform, 1 = one item).
    novelty: mean self-information -log2(max(pop_i, 1) / n_users_pop) of the recommended items.
    pop_share / pop_interaction_share: share of recommendations / of interactions that go to the
    top 10% most popular items (head_items)."""
    e = np.asarray(exposure, dtype=float)[1:]
    n, total = len(e), float(e.sum())
    sorted_e = np.sort(e)
    head = np.zeros(n + 1, dtype=bool)
    head[head_items(popularity)] = True
    info = -np.log2(np.maximum(popularity[1:], 1) / n_users_pop)
    return {"coverage": float((e > 0).sum() / n),
            "gini": float((2 * np.arange(1, n + 1) - n - 1) @ sorted_e / (n * total)) if total else 0.0,
            "novelty": float(e @ info / total) if total else 0.0,
            "pop_share": float(e[head[1:]].sum() / total) if total else 0.0,
            "pop_interaction_share": float(popularity[head].sum() / popularity[1:].sum())}


def beyond_accuracy(ranked: np.ndarray, k: int, n_items: int, popularity: np.ndarray, n_users_pop: int,
                    categories: np.ndarray) -> dict[str, float]:
    """Reference for the list-level metrics of the top k (item ids 1..n_items-1; -1 = empty slot):
    exposure_figures, and ild: mean over users of the share of item pairs in the list with
    different categories (lists of 2+ items)."""
    top = ranked[:, :k]
    ild = []
    for row in top:
        row = row[row >= 0]
        m = len(row)
        if m < 2:
            continue
        _, counts = np.unique(categories[row], return_counts=True)
        ild.append(1 - (counts * (counts - 1)).sum() / (m * (m - 1)))
    exposure = np.bincount(top[top >= 0], minlength=n_items)
    return {**exposure_figures(exposure, popularity, n_users_pop), "ild": float(np.mean(ild)) if ild else 0.0}
