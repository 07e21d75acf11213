"""The collaborative part of the served model (train.collaborative): pure torch, never imports pyspark.

Implicit-ALS item factors (Spark MLlib, fitted before training on the training histories:
recsys_spark.train) are kept as buffers of the model, and a user's factors are folded in from
their history with MLlib's own normal equations (`fold_in`; the whole history, as MLlib was fitted
on it, where the attention model reads the newest max_len: recsys_spark.ranking.padded_histories).
The user side is therefore a function of the history, like the attention vector: scoring,
incremental scoring, refresh and cold start need nothing new. The served vectors are the concatenations [a * attention, b * collaborative]
for users and [items, factors] for items, with (a, b) chosen on the validation users
(recsys_spark.trainer.choose_blend).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

# What names one ALS fit of a grid (baselines.als_grid_points): the blend record's entries carry
# these, and evaluate finds its grid's figures in that record by them.
ALS_PARAMS = ("rank", "regParam", "alpha", "maxIter")


def fold_in(factors: torch.Tensor, gram: torch.Tensor, seq: torch.Tensor, reg: float, alpha: float) -> torch.Tensor:
    """(B, r) implicit-ALS user factors of the histories seq (B, L item indexes; 0 = padding) given the
    item factors (n, r) and gram = factorsᵀ factors: MLlib's user update

        (gram + alpha * sum_occurrences q qᵀ + reg * n_u * I) x = alpha * sum_occurrences q + sum_distinct q

    for an item's occurrences in the history taken as its rating (recsys_spark.baselines.interactions)
    and n_u the history's distinct items. Items beyond the factors (new since the fit) count as
    padding; an empty history gives zeros."""
    n, r = factors.shape
    present = (seq > 0) & (seq < n)
    ids = torch.where(present, seq, torch.zeros_like(seq))
    ordered = ids.sort(dim=1).values
    first = (ordered > 0) & (ordered != torch.nn.functional.pad(ordered[:, :-1], (1, 0)))
    occurrences = factors[ids] * present.unsqueeze(-1)
    distinct = factors[ordered] * first.unsqueeze(-1)
    n_distinct = first.sum(1).clamp(min=1).to(factors.dtype)
    eye = torch.eye(r, dtype=factors.dtype, device=factors.device)
    lhs = (gram + alpha * torch.einsum("blr,bls->brs", occurrences, occurrences)
           + (reg * n_distinct)[:, None, None] * eye)
    rhs = alpha * occurrences.sum(1) + distinct.sum(1)
    return torch.cholesky_solve(rhs.unsqueeze(-1), torch.linalg.cholesky(lhs)).squeeze(-1)


class CollaborativeFactors(nn.Module):
    """Buffers of the collaborative part: item factors (n_items, rank), their gram matrix, MLlib's
    regParam and alpha, and the blend weights (attention, collaborative) of the served vectors."""

    def __init__(self, n_items: int, rank: int):
        super().__init__()
        self.register_buffer("factors", torch.zeros(n_items, rank))
        self.register_buffer("gram", torch.zeros(rank, rank))
        self.register_buffer("reg", torch.zeros(()))
        self.register_buffer("alpha", torch.zeros(()))
        self.register_buffer("weights", torch.tensor([1.0, 0.0]))

    def set(self, factors: np.ndarray, reg: float, alpha: float, weights: tuple[float, float]) -> "CollaborativeFactors":
        q = torch.as_tensor(np.asarray(factors, dtype=np.float32))
        self.factors.copy_(q)
        self.gram.copy_(q.T @ q)
        self.reg.fill_(reg)
        self.alpha.fill_(alpha)
        self.weights.copy_(torch.tensor(weights, dtype=torch.float32))
        return self

    def item_factors(self, n: int) -> torch.Tensor:
        """(n, rank): the factors of a catalog of n items (items added since the fit have none: zeros)."""
        q = self.factors[:n]
        return q if len(q) == n else torch.cat([q, q.new_zeros(n - len(q), q.shape[1])])

    def user_factors(self, seq: torch.Tensor) -> torch.Tensor:
        return fold_in(self.factors, self.gram, seq, float(self.reg), float(self.alpha))

    def served_users(self, attention: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """[a * attention, b * folded-in factors]: scored against [items, factors]."""
        a, b = self.weights.tolist()
        return torch.cat([a * attention, b * self.user_factors(seq)], dim=1)
