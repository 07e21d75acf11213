"""Ranking metrics, numpy reference (no Spark): one held-out target per user."""
from __future__ import annotations

import numpy as np


def recall_at_k(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    """ranked (U, >=k) item ids best first; targets (U,) one held-out item per user."""
    return float(np.mean((ranked[:, :k] == targets[:, None]).any(axis=1)))


def ndcg_at_k(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    """With one relevant item the ideal DCG is 1, so NDCG = 1 / log2(rank + 1) if rank <= k else 0."""
    hits = ranked[:, :k] == targets[:, None]
    gains = hits / np.log2(np.arange(2, k + 2))[None, :]
    return float(np.mean(gains.sum(axis=1)))
