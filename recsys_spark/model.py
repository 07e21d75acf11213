"""The attention model: pure torch, never imports pyspark.

AttentionRecommender is a SASRec-style causal self-attention encoder over a user's recent item
sequence, trained with full-catalog cross-entropy on every next-item position ("SASRec+"), with
feature groups that each have a switch (ModelConfig.use_*):

- item vector = id embedding (for items seen in training; else a learned "unknown id" vector) + content vector, one table shared by the
  input and the output layer. The content vector is computed from the item's features: category,
  brand and tag embeddings and scaled numbers (use_content), and the hashed TF-IDF of the title
  (use_text). An item nobody has touched (a new item, or one held out of training) has no trained
  id embedding, so its vector is its content vector alone; training drops each item's id embedding
  with probability item_id_dropout so that the content path learns to stand alone.
- user profile, declared attributes (age band, gender, ...; use_profile) = a *profile token* put in
  front of the sequence: every position attends to it, and its own output is trained to predict
  the user's first item, so a user with no history gets a vector from the profile alone.
- behaviour profile (activity counts, recency, category shares; use_behaviour, off by default in
  TrainConfig: see README) = a learned gate that mixes the standardised numbers into every item
  position.

Scaling statistics (numeric means/standard deviations, the title IDF) and the item features are
buffers of the model, saved in the checkpoint: scoring applies exactly the transform training saw,
and a catalog that grew since training is scored with `item_vectors(features)`.
The top-K kernel over item vectors lives in recsys_spark.topk.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Item feature tensors (n = catalog rows incl. padding row 0):
#   category, brand (n,) long; tags (n, T) long, 0 = none; text_idx (n, W) long (hashed title
#   terms), text_tf (n, W) float, 0 = none; num (n, P) float (raw numbers); has_id (n,) bool.
ITEM_FEATURES = ("category", "brand", "tags", "text_idx", "text_tf", "num", "has_id")


def empty_item_features(n_items: int) -> dict:
    return {
        "category": torch.zeros(n_items, dtype=torch.long), "brand": torch.zeros(n_items, dtype=torch.long),
        "tags": torch.zeros(n_items, 1, dtype=torch.long), "text_idx": torch.zeros(n_items, 1, dtype=torch.long),
        "text_tf": torch.zeros(n_items, 1), "num": torch.zeros(n_items, 0),
        "has_id": torch.ones(n_items, dtype=torch.bool),
    }


@dataclass
class ModelConfig:
    n_items: int  # rows of the item table, including padding row 0
    max_len: int = 50
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    dropout: float = 0.2
    n_categories: int = 1  # rows of the category table (0 = unknown)
    n_brands: int = 1
    n_tags: int = 1
    text_dim: int = 0  # hashed title features (0 = no text)
    n_item_num: int = 0
    attr_cardinalities: list[int] = field(default_factory=list)  # rows per declared user attribute
    n_profile_num: int = 0
    use_profile: bool = True
    use_behaviour: bool = True
    use_content: bool = True
    use_text: bool = True
    item_id_dropout: float = 0.0
    # Training loss: 0 = cross-entropy over the full catalog; N > 0 = cross-entropy of the target
    # against N items drawn uniformly per step, shared by the batch, hits on the target removed
    # (sampled softmax as in SASRec+; cheaper per step when the catalog is much larger than N).
    loss_negatives: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _std(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean) / std.clamp_min(1e-6)


class AttentionRecommender(nn.Module):
    def __init__(self, cfg: ModelConfig, item_features=None, stats: Optional[dict] = None):
        """item_features: dict of ITEM_FEATURES tensors for the training catalog (a bare (n,) tensor
        is taken as the categories); stats: profile_num_mean/std, item_num_mean/std, idf arrays."""
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_model, cfg.n_items
        feats = empty_item_features(n)
        if isinstance(item_features, torch.Tensor):
            feats["category"] = item_features
        elif item_features:
            feats.update(item_features)
        for name in ITEM_FEATURES:
            t = torch.as_tensor(feats[name])
            if t.shape[0] != n:
                raise ValueError(f"item feature {name} has {t.shape[0]} rows, the model has {n} items")
            self.register_buffer(f"feat_{name}", t.bool() if name == "has_id" else
                                 (t.float() if name in ("text_tf", "num") else t.long()))
        stats = stats or {}
        for name, size in (("profile_num_mean", cfg.n_profile_num), ("profile_num_std", cfg.n_profile_num),
                           ("item_num_mean", cfg.n_item_num), ("item_num_std", cfg.n_item_num),
                           ("idf", cfg.text_dim)):
            default = torch.ones(size) if name.endswith("std") or name == "idf" else torch.zeros(size)
            v = torch.as_tensor(stats[name], dtype=torch.float32) if name in stats else default
            if v.shape != (size,):
                raise ValueError(f"statistic {name} has shape {tuple(v.shape)}, expected ({size},)")
            self.register_buffer(f"stat_{name}", v)
        self.item_emb = nn.Embedding(n, d, padding_idx=0)
        self.unk_id = nn.Parameter(torch.zeros(d))
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        if cfg.use_content:
            self.cat_emb = nn.Embedding(cfg.n_categories, d, padding_idx=0)
            self.brand_emb = nn.Embedding(cfg.n_brands, d, padding_idx=0)
            self.tag_emb = nn.Embedding(cfg.n_tags, d, padding_idx=0)
            self.item_num_proj = nn.Linear(cfg.n_item_num, d) if cfg.n_item_num else None
        self.text_emb = nn.Embedding(cfg.text_dim, d) if cfg.use_text and cfg.text_dim else None
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, dim_feedforward=d * 2, dropout=cfg.dropout,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.use_profile = bool(cfg.use_profile and cfg.attr_cardinalities)
        if self.use_profile:
            self.attr_emb = nn.ModuleList(nn.Embedding(c, d) for c in cfg.attr_cardinalities)
            self.profile_type = nn.Parameter(torch.zeros(d))
        self.use_behaviour = bool(cfg.use_behaviour and cfg.n_profile_num)
        if self.use_behaviour:
            self.num_proj = nn.Linear(cfg.n_profile_num, d)
            self.gate = nn.Linear(2 * d, d)
        self.apply(self._init)
        # Feature projections start as small as the embeddings: a default-initialised Linear would
        # swamp the id embeddings (std 0.02) and make every item look like its price at the start.
        for lin in (getattr(self, "item_num_proj", None), getattr(self, "num_proj", None)):
            if lin is not None:
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    @property
    def needs_profile(self) -> bool:
        return self.use_profile or self.use_behaviour

    def item_features(self) -> dict:
        """The training catalog's item features (the buffers)."""
        return {name: getattr(self, f"feat_{name}") for name in ITEM_FEATURES}

    def content_vectors(self, feats: dict) -> Optional[torch.Tensor]:
        """(n, d) content vectors from item features; None when content and text are both off."""
        cfg, out = self.cfg, None
        if cfg.use_content:
            out = (self.cat_emb(feats["category"].clamp(0, cfg.n_categories - 1))
                   + self.brand_emb(feats["brand"].clamp(0, cfg.n_brands - 1)))
            tags = feats["tags"].clamp(0, cfg.n_tags - 1)
            if tags.shape[1]:
                n_tags = (tags > 0).sum(1, keepdim=True).clamp_min(1)
                out = out + self.tag_emb(tags).sum(1) / n_tags
            if self.item_num_proj is not None:
                out = out + self.item_num_proj(_std(feats["num"], self.stat_item_num_mean, self.stat_item_num_std))
        if self.text_emb is not None and feats["text_idx"].shape[1]:
            idx = feats["text_idx"].clamp(0, cfg.text_dim - 1)
            w = feats["text_tf"] * self.stat_idf[idx]
            w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-6)
            t = (self.text_emb(idx) * w.unsqueeze(-1)).sum(1)
            out = t if out is None else out + t
        return out

    def item_vectors(self, feats: Optional[dict] = None, id_keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(n, d): the shared input/output representation of every item.

        feats: item features of a catalog (default: the training catalog). Rows beyond the model's
        id table, and rows whose has_id is False, are represented by their content alone.
        id_keep: (n_items,) bool, training-time id dropout."""
        feats = feats or self.item_features()
        n = feats["category"].shape[0]
        n_id = min(n, self.cfg.n_items)
        keep = feats["has_id"][:n_id] & self.feat_has_id[:n_id]
        if id_keep is not None:
            keep = keep & id_keep[:n_id]
        # An item without a (kept) id embedding gets the learned "unknown id" vector instead: trained
        # on the id-dropped items, it carries what an unfamiliar item is worth on average.
        unk = self.unk_id.unsqueeze(0)
        ids = torch.where(keep.unsqueeze(1), self.item_emb.weight[:n_id], unk)
        if n > n_id:
            ids = torch.cat([ids, unk.expand(n - n_id, -1)])
        content = self.content_vectors(feats)
        v = ids if content is None else ids + content
        return torch.cat([v[:1] * 0, v[1:]])  # row 0 is padding

    def profile_token(self, profile_cat: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if not self.use_profile or profile_cat is None:
            return None
        p = self.profile_type
        for k, emb in enumerate(self.attr_emb):
            if k < profile_cat.shape[1]:
                p = p + emb(profile_cat[:, k].clamp(0, emb.num_embeddings - 1))
        return p

    def encode(self, seq: torch.Tensor, profile_cat: Optional[torch.Tensor] = None,
               profile_num: Optional[torch.Tensor] = None, items: Optional[torch.Tensor] = None) -> torch.Tensor:
        """seq (B, L) left-padded item ids -> hidden states (B, L + t, d), t = 1 when the profile
        token is used (it comes first), else 0. Position t + j sees items <= j (and the token)."""
        B, L = seq.shape
        if L > self.cfg.max_len:
            seq = seq[:, -self.cfg.max_len:]
            L = self.cfg.max_len
        pad = seq == 0
        items = self.item_vectors() if items is None else items
        x = F.embedding(seq, items) * (self.cfg.d_model ** 0.5)
        x = x + self.pos_emb(torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=seq.device))
        tok = self.profile_token(profile_cat)
        if tok is not None:
            x = torch.cat([tok.unsqueeze(1) * (self.cfg.d_model ** 0.5), x], dim=1)
            pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=seq.device), pad], dim=1)
        T = x.shape[1]
        x = self.drop(x) * (~pad).unsqueeze(-1)
        # Causal attention that also ignores padded keys; a padded position attends to itself only,
        # so no row is fully masked (which would give NaNs).
        causal = torch.ones(T, T, dtype=torch.bool, device=seq.device).tril()
        allowed = causal.unsqueeze(0) & ~pad.unsqueeze(1)
        allowed = allowed | torch.eye(T, dtype=torch.bool, device=seq.device).unsqueeze(0)
        mask = torch.zeros(B, T, T, device=seq.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(self.cfg.n_heads, dim=0)
        h = self.norm(self.encoder(x, mask=mask))
        if self.use_behaviour and profile_num is not None:
            t = T - L
            p = self.num_proj(_std(profile_num, self.stat_profile_num_mean, self.stat_profile_num_std))
            p = p.unsqueeze(1).expand(-1, L, -1)
            g = torch.sigmoid(self.gate(torch.cat([h[:, t:], p], dim=-1)))
            h = torch.cat([h[:, :t], h[:, t:] + g * p], dim=1)
        return h * (~pad).unsqueeze(-1)

    def forward(self, seq: torch.Tensor, target: Optional[torch.Tensor] = None,
                profile_cat: Optional[torch.Tensor] = None, profile_num: Optional[torch.Tensor] = None):
        """Return (scores, loss).

        Without target: scores (B, n_items) for the next item after the sequence, loss None.
        With target (B, L; 0 = no target): scores of the supervised positions (N, n_items) and the
        mean cross-entropy over the full catalog (padding item excluded); with loss_negatives = S,
        (N, 1 + S) scores (column 0 the target, then the sampled items) and their cross-entropy. With the profile token,
        its position is supervised with the window's first item.
        """
        if target is None:
            items = self.item_vectors()
            scores = self.user_vectors(seq, profile_cat, profile_num, items) @ items.T
            scores[:, 0] = float("-inf")
            return scores, None
        id_keep = None
        if self.training and self.cfg.item_id_dropout > 0:
            id_keep = torch.rand(self.cfg.n_items, device=seq.device) >= self.cfg.item_id_dropout
        items = self.item_vectors(id_keep=id_keep)
        if seq.shape[1] > self.cfg.max_len:
            seq, target = seq[:, -self.cfg.max_len:], target[:, -self.cfg.max_len:]
        h = self.encode(seq, profile_cat, profile_num, items)
        if h.shape[1] > seq.shape[1]:  # profile token: predict the first item of the window
            first = torch.where((seq > 0).any(1), seq.gather(1, (seq > 0).long().argmax(1, keepdim=True)).squeeze(1), 0)
            target = torch.cat([first.unsqueeze(1), target], dim=1)
        keep = target > 0
        hk, tk = h[keep], target[keep]
        n_neg = self.cfg.loss_negatives
        if n_neg and n_neg < self.cfg.n_items - 1:
            neg = torch.randint(1, self.cfg.n_items, (n_neg,), device=seq.device)
            logits = torch.cat([(hk * items[tk]).sum(-1, keepdim=True), hk @ items[neg].T], dim=1)
            logits[:, 1:] = logits[:, 1:].masked_fill(neg.unsqueeze(0) == tk.unsqueeze(1), float("-inf"))
            return logits, F.cross_entropy(logits, torch.zeros_like(tk))
        logits = hk @ items.T
        logits[:, 0] = float("-inf")
        loss = F.cross_entropy(logits, tk)
        return logits, loss

    @torch.no_grad()
    def user_vectors(self, seq: torch.Tensor, profile_cat=None, profile_num=None,
                     items: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, d): the representation at the last item position; for an empty history, the profile
        token's output (zeros when the model has no profile token)."""
        h = self.encode(seq, profile_cat, profile_num, items)
        last = h[:, -1]
        if h.shape[1] > seq.shape[1]:
            last = torch.where((seq[:, -1] > 0).unsqueeze(1), last, h[:, 0])
        return last


def pad_left(sequences: list, max_len: int) -> np.ndarray:
    """List of 1-D int arrays -> (B, max_len) int64 array, newest items kept, left-padded with 0."""
    out = np.zeros((len(sequences), max_len), dtype=np.int64)
    for i, s in enumerate(sequences):
        s = np.asarray(s if s is not None else [], dtype=np.int64)[-max_len:]
        if len(s):
            out[i, max_len - len(s):] = s
    return out


def pad_right(rows: list, width: Optional[int] = None, dtype=np.int64) -> np.ndarray:
    """List of 1-D arrays -> (B, width) array, right-padded with 0 (width: the longest row, >= 1)."""
    width = width or max([1] + [len(r) for r in rows if r is not None])
    out = np.zeros((len(rows), width), dtype=dtype)
    for i, r in enumerate(rows):
        r = np.asarray(r if r is not None else [], dtype=dtype)[:width]
        out[i, :len(r)] = r
    return out
