"""The attention model, its loss and the top-K kernel: pure torch, never imports pyspark.

AttentionRecommender is a SASRec-style causal self-attention encoder over a user's recent item
sequence, with
- item vectors = id embedding (+ category embedding when use_content), shared between the input
  and the output layer, so scores are dot products with one item table;
- the user profile (categorical attributes + numeric activity features) fused into every position
  through a learned gate (when use_profile);
- full-catalog cross-entropy on every next-item position (the "SASRec+" objective).

The top-K kernel over item_vectors() lives in recsys_spark.topk.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    n_items: int  # rows of the item table, including padding row 0
    max_len: int = 50
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    dropout: float = 0.2
    n_categories: int = 1  # rows of the category table (0 = unknown)
    attr_cardinalities: list[int] = field(default_factory=list)  # rows per profile attribute
    n_profile_num: int = 0
    use_profile: bool = True
    use_content: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class AttentionRecommender(nn.Module):
    def __init__(self, cfg: ModelConfig, item_category: Optional[torch.Tensor] = None):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.item_emb = nn.Embedding(cfg.n_items, d, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        if item_category is None:
            item_category = torch.zeros(cfg.n_items, dtype=torch.long)
        if item_category.shape != (cfg.n_items,):
            raise ValueError(f"item_category must have shape ({cfg.n_items},), got {tuple(item_category.shape)}")
        self.register_buffer("item_category", item_category.long())
        self.cat_emb = nn.Embedding(cfg.n_categories, d) if cfg.use_content else None
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, dim_feedforward=d * 2, dropout=cfg.dropout,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.use_profile = cfg.use_profile and (cfg.attr_cardinalities or cfg.n_profile_num)
        if self.use_profile:
            self.attr_emb = nn.ModuleList(nn.Embedding(n, d) for n in cfg.attr_cardinalities)
            self.num_proj = nn.Linear(cfg.n_profile_num, d) if cfg.n_profile_num else None
            self.gate = nn.Linear(2 * d, d)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def item_vectors(self) -> torch.Tensor:
        """(n_items, d): the shared input/output representation of every item."""
        v = self.item_emb.weight
        if self.cat_emb is not None:
            v = v + self.cat_emb(self.item_category)
        return v

    def _profile(self, profile_cat: Optional[torch.Tensor], profile_num: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if not self.use_profile or (profile_cat is None and profile_num is None):
            return None
        p = 0
        if profile_cat is not None:
            for k, emb in enumerate(self.attr_emb):
                p = p + emb(profile_cat[:, k].clamp(0, emb.num_embeddings - 1))
        if profile_num is not None and self.num_proj is not None:
            p = p + self.num_proj(profile_num)
        return p

    def encode(self, seq: torch.Tensor, profile_cat: Optional[torch.Tensor] = None,
               profile_num: Optional[torch.Tensor] = None) -> torch.Tensor:
        """seq (B, L) left-padded item ids -> hidden states (B, L, d); position t sees items <= t."""
        B, L = seq.shape
        if L > self.cfg.max_len:
            seq = seq[:, -self.cfg.max_len:]
            L = self.cfg.max_len
        pad = seq == 0
        items = self.item_vectors()
        x = F.embedding(seq, items) * (self.cfg.d_model ** 0.5)
        x = x + self.pos_emb(torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=seq.device))
        x = self.drop(x) * (~pad).unsqueeze(-1)
        # Causal attention that also ignores padded keys; a padded position attends to itself only,
        # so no row is fully masked (which would give NaNs).
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
        allowed = causal.unsqueeze(0) & ~pad.unsqueeze(1)
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=seq.device).unsqueeze(0)
        mask = torch.zeros(B, L, L, device=seq.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(self.cfg.n_heads, dim=0)
        h = self.norm(self.encoder(x, mask=mask))
        p = self._profile(profile_cat, profile_num)
        if p is not None:
            p = p.unsqueeze(1).expand(-1, L, -1)
            g = torch.sigmoid(self.gate(torch.cat([h, p], dim=-1)))
            h = h + g * p
        return h * (~pad).unsqueeze(-1)

    def forward(self, seq: torch.Tensor, target: Optional[torch.Tensor] = None,
                profile_cat: Optional[torch.Tensor] = None, profile_num: Optional[torch.Tensor] = None):
        """Return (scores, loss).

        Without target: scores (B, n_items) for the next item after the sequence, loss None.
        With target (B, L; 0 = no target): scores of the supervised positions (N, n_items) and the
        mean cross-entropy over the full catalog (padding item excluded).
        """
        h = self.encode(seq, profile_cat, profile_num)
        items = self.item_vectors()
        if target is None:
            scores = h[:, -1] @ items.T
            scores[:, 0] = float("-inf")
            return scores, None
        if target.shape[1] > h.shape[1]:
            target = target[:, -h.shape[1]:]
        keep = target > 0
        logits = h[keep] @ items.T
        logits[:, 0] = float("-inf")
        loss = F.cross_entropy(logits, target[keep])
        return logits, loss

    @torch.no_grad()
    def user_vectors(self, seq: torch.Tensor, profile_cat=None, profile_num=None) -> torch.Tensor:
        """(B, d): the representation at the last position, to dot with item_vectors()."""
        return self.encode(seq, profile_cat, profile_num)[:, -1]


def pad_left(sequences: list, max_len: int) -> np.ndarray:
    """List of 1-D int arrays -> (B, max_len) int64 array, newest items kept, left-padded with 0."""
    out = np.zeros((len(sequences), max_len), dtype=np.int64)
    for i, s in enumerate(sequences):
        s = np.asarray(s if s is not None else [], dtype=np.int64)[-max_len:]
        if len(s):
            out[i, max_len - len(s):] = s
    return out
