"""The attention model: pure torch, never imports pyspark.

AttentionRecommender is a SASRec-style causal self-attention encoder over a user's recent item
sequence, trained with cross-entropy on every next-item position ("SASRec+"). It is composed of
named parts, each feature group behind a switch (ModelConfig.use_*):

- `items` (ItemEncoder): item vector = id embedding (for items seen in training; else a learned
  "unknown id" vector) + content vector from category, brand, tags and scaled numbers (use_content),
  the hashed TF-IDF of the title (use_text) and an upstream encoder's dense vector, standardised and
  projected (use_vectors: multimodal fusion of image or text embeddings). One table serves the
  input and the output layer.
  An item nobody has touched has no trained id embedding, so its vector is its content alone;
  training drops each id embedding with probability item_id_dropout so content learns to stand alone.
- `profile` (ProfileEncoder, use_profile): declared attributes (age band, gender, ...) as a token put
  in front of the sequence: every position attends to it, and its own output is trained to predict
  the user's first item, so a user with no history gets a vector from the profile alone.
- `sequence` (SequenceEncoder): positions, the causal transformer and its final norm; its layers are
  SASRec's (block "transformer") or gated LiGR layers (block "gated", `GatedLayer`).
- `behaviour` (BehaviourGate, use_behaviour): the standardised activity numbers mixed into every
  item position through a learned gate.
- losses: `full_softmax_loss` over the catalog, or `sampled_softmax_loss` (loss_negatives > 0);
  with adversarial_eps > 0 the same loss is added under `adversarial_items` (adversarial training);
  with label_smoothing > 0 the training loss spreads that share over the other candidates
  (`smoothed_cross_entropy`);
  with target_span > 1 each position's target is drawn from the items ahead (`targets_ahead`);
  with loss_positions > 0 the loss is taken at a random sample of the positions (`sample_positions`).
- `collaborative` (recsys_spark.collaborative.CollaborativeFactors, collaborative_rank > 0):
  implicit-ALS item factors attached after training where validation prefers a blend; the served
  vectors (`item_vectors`, `user_vectors`) are then the attention vectors with the factors appended.

Scaling statistics (numeric means/standard deviations, the title IDF) and the item features are
buffers of the model, saved in the checkpoint: scoring applies exactly the transform training saw,
and a catalog that grew since training is scored with `item_vectors(features)`.
The top-K kernel over item vectors lives in recsys_spark.topk.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys_spark.collaborative import CollaborativeFactors
from recsys_spark.config import TrainConfig

# Item feature tensors (n = catalog rows incl. padding row 0):
#   category, brand (n,) long; tags (n, T) long, 0 = none; text_idx (n, W) long (hashed title
#   terms), text_tf (n, W) float, 0 = none; num (n, P) float (raw numbers); vec (n, E) float (the
#   upstream encoder's vector, NaN rows = none); has_id (n,) bool.
ITEM_FEATURES = ("category", "brand", "tags", "text_idx", "text_tf", "num", "vec", "has_id")
PROFILE_STATISTICS = ("profile_num_mean", "profile_num_std")


def empty_item_features(n_items: int) -> dict:
    return {
        "category": torch.zeros(n_items, dtype=torch.long), "brand": torch.zeros(n_items, dtype=torch.long),
        "tags": torch.zeros(n_items, 1, dtype=torch.long), "text_idx": torch.zeros(n_items, 1, dtype=torch.long),
        "text_tf": torch.zeros(n_items, 1), "num": torch.zeros(n_items, 0), "vec": torch.zeros(n_items, 0),
        "has_id": torch.ones(n_items, dtype=torch.bool),
    }


@dataclass
class ModelConfig:
    """Sizes come from the data (recsys_spark.train.prepare); architecture and feature-group
    defaults are train.* (recsys_spark.config.TrainConfig), stated there once."""
    n_items: int  # rows of the item table, including padding row 0
    max_len: int = 50
    d_model: int = TrainConfig.d_model
    n_heads: int = TrainConfig.n_heads
    n_layers: int = TrainConfig.n_layers
    block: str = TrainConfig.block
    dropout: float = TrainConfig.dropout
    n_categories: int = 1  # rows of the category table (0 = unknown)
    n_brands: int = 1
    n_tags: int = 1
    text_dim: int = 0  # hashed title features (0 = no text)
    n_item_num: int = 0
    n_item_vec: int = 0  # width of the items' upstream vectors (0 = none)
    attr_cardinalities: list[int] = field(default_factory=list)  # rows per declared user attribute
    n_profile_num: int = 0
    use_profile: bool = TrainConfig.use_profile
    use_behaviour: bool = TrainConfig.use_behaviour
    use_content: bool = TrainConfig.use_content
    use_text: bool = TrainConfig.use_text
    use_vectors: bool = TrainConfig.use_vectors
    item_id_dropout: float = TrainConfig.item_id_dropout
    loss_negatives: int = 0  # resolved from train.loss_negatives (recsys_spark.train.resolve_negatives)
    loss_positions: int = TrainConfig.loss_positions
    adversarial_eps: float = TrainConfig.adversarial_eps
    label_smoothing: float = TrainConfig.label_smoothing
    target_span: int = TrainConfig.target_span
    collaborative_rank: int = 0  # width of the attached ALS factors (0 = none)

    def to_dict(self) -> dict:
        return asdict(self)


def _std(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Standardised features; an unknown value (NaN) reads as the mean."""
    return torch.nan_to_num((x - mean) / std.clamp_min(1e-6), nan=0.0)


def _statistic(stats: dict, name: str, size: int) -> torch.Tensor:
    default = torch.ones(size) if name.endswith("std") or name == "idf" else torch.zeros(size)
    v = torch.as_tensor(stats[name], dtype=torch.float32) if name in stats else default
    if v.shape != (size,):
        raise ValueError(f"statistic {name} has shape {tuple(v.shape)}, expected ({size},)")
    return v


class ItemEncoder(nn.Module):
    """(n, d) item vectors from ids and content; holds the training catalog's features and the
    item scaling statistics as buffers."""

    def __init__(self, cfg: ModelConfig, item_features, stats: dict):
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
                                 (t.float() if name in ("text_tf", "num", "vec") else t.long()))
        for name, size in (("item_num_mean", cfg.n_item_num), ("item_num_std", cfg.n_item_num), ("idf", cfg.text_dim),
                           ("item_vec_mean", cfg.n_item_vec), ("item_vec_std", cfg.n_item_vec)):
            self.register_buffer(f"stat_{name}", _statistic(stats, name, size))
        self.id_emb = nn.Embedding(n, d, padding_idx=0)
        self.unk_id = nn.Parameter(torch.zeros(d))
        if cfg.use_content:
            self.cat_emb = nn.Embedding(cfg.n_categories, d, padding_idx=0)
            self.brand_emb = nn.Embedding(cfg.n_brands, d, padding_idx=0)
            self.tag_emb = nn.Embedding(cfg.n_tags, d, padding_idx=0)
            self.num_proj = nn.Linear(cfg.n_item_num, d) if cfg.n_item_num else None
        self.text_emb = nn.Embedding(cfg.text_dim, d) if cfg.use_text and cfg.text_dim else None
        self.vec_proj = nn.Linear(cfg.n_item_vec, d) if cfg.use_vectors and cfg.n_item_vec else None

    def features(self) -> dict:
        """The training catalog's item features (the buffers)."""
        return {name: getattr(self, f"feat_{name}") for name in ITEM_FEATURES}

    def content_vectors(self, feats: dict) -> Optional[torch.Tensor]:
        """(n, d) content vectors from item features; None when content, text and vectors are all off."""
        cfg, out = self.cfg, None
        if cfg.use_content:
            out = (self.cat_emb(feats["category"].clamp(0, cfg.n_categories - 1))
                   + self.brand_emb(feats["brand"].clamp(0, cfg.n_brands - 1)))
            tags = feats["tags"].clamp(0, cfg.n_tags - 1)
            if tags.shape[1]:
                n_tags = (tags > 0).sum(1, keepdim=True).clamp_min(1)
                out = out + self.tag_emb(tags).sum(1) / n_tags
            if self.num_proj is not None:
                out = out + self.num_proj(_std(feats["num"], self.stat_item_num_mean, self.stat_item_num_std))
        if self.text_emb is not None and feats["text_idx"].shape[1]:
            idx = feats["text_idx"].clamp(0, cfg.text_dim - 1)
            w = feats["text_tf"] * self.stat_idf[idx]
            w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-6)
            t = (self.text_emb(idx) * w.unsqueeze(-1)).sum(1)
            out = t if out is None else out + t
        if self.vec_proj is not None:
            if feats["vec"].shape[1] != cfg.n_item_vec:
                raise ValueError(f"the items' vectors have {feats['vec'].shape[1]} numbers, the model was trained on "
                                 f"{cfg.n_item_vec}: the upstream encoder changed; retrain the model")
            v = self.vec_proj(_std(feats["vec"], self.stat_item_vec_mean, self.stat_item_vec_std))
            out = v if out is None else out + v
        return out

    def forward(self, feats: Optional[dict] = None, id_keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """feats: a catalog's item features (default: the training catalog). Rows beyond the id
        table, and rows whose has_id is False, are represented by their content alone.
        id_keep: (n_items,) bool, training-time id dropout."""
        feats = feats or self.features()
        n = feats["category"].shape[0]
        n_id = min(n, self.cfg.n_items)
        keep = feats["has_id"][:n_id] & self.feat_has_id[:n_id]
        if id_keep is not None:
            keep = keep & id_keep[:n_id]
        # An item without a (kept) id embedding gets the learned "unknown id" vector instead: trained
        # on the id-dropped items, it carries what an unfamiliar item is worth on average.
        unk = self.unk_id.unsqueeze(0)
        ids = torch.where(keep.unsqueeze(1), self.id_emb.weight[:n_id], unk)
        if n > n_id:
            ids = torch.cat([ids, unk.expand(n - n_id, -1)])
        content = self.content_vectors(feats)
        v = ids if content is None else ids + content
        return torch.cat([v[:1] * 0, v[1:]])  # row 0 is padding


class SequenceEncoder(nn.Module):
    """Positions + causal transformer over (B, T, d) inputs, padded keys masked, final norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.max_len, self.block = cfg.n_heads, cfg.max_len, cfg.block
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        if cfg.block == "gated":
            self.layers = nn.ModuleList(GatedLayer(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        else:
            layer = nn.TransformerEncoderLayer(d, cfg.n_heads, dim_feedforward=d * 2, dropout=cfg.dropout,
                                               batch_first=True, norm_first=True, activation="gelu")
            self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    def positions(self, length: int, device) -> torch.Tensor:
        """(length, d) embeddings of the last `length` positions (sequences are left-padded)."""
        return self.pos_emb(torch.arange(self.max_len - length, self.max_len, device=device))

    def forward(self, x: torch.Tensor, pad: torch.Tensor, rows: Optional[list] = None) -> torch.Tensor:
        """(B, T, d) states, or with `rows` (positions) only those (B, len(rows), d): the last layer
        is then computed at those positions alone, as no other position's output feeds anything."""
        B, T = pad.shape
        x = self.drop(x) * (~pad).unsqueeze(-1)
        # Causal attention that also ignores padded keys; a padded position attends to itself only,
        # so no row is fully masked (which would give NaNs).
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        allowed = causal.unsqueeze(0) & ~pad.unsqueeze(1)
        allowed = allowed | torch.eye(T, dtype=torch.bool, device=x.device).unsqueeze(0)
        mask = torch.zeros(B, T, T, device=x.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(self.n_heads, dim=0)
        if self.block == "gated":
            *below, last = self.layers
            for layer in below:
                x = layer(x, mask)
            return self.norm(last(x, mask, rows))
        if rows is None:
            return self.norm(self.encoder(x, mask=mask))
        *below, last = self.encoder.layers
        for layer in below:
            x = layer(x, src_mask=mask)
        return self.norm(_layer_at_rows(last, x, mask, rows))


class GatedLayer(nn.Module):
    """A LiGR layer (eSASRec, Tikhonovich et al., RecSys 2025): pre-norm attention, then a pre-norm
    SwiGLU feed-forward, each added to the residual stream through a sigmoid gate of that stream,
    so a layer learns per channel how much of its update to let through."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True)
        self.attn_gate = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ff_value = nn.Linear(d, d * 2)
        self.ff_gate = nn.Linear(d, d * 2)
        self.ff_out = nn.Linear(d * 2, d)
        self.ff_residual_gate = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rows: Optional[list] = None) -> torch.Tensor:
        """(B, T, d) -> (B, T, d), or with `rows` only those positions' outputs (they query every key)."""
        kv = self.norm1(x)
        q, query, mask = (x, kv, mask) if rows is None else (x[:, rows], kv[:, rows], mask[:, rows])
        attended = self.self_attn(query, kv, kv, attn_mask=mask, need_weights=False)[0]
        q = q + torch.sigmoid(self.attn_gate(q)) * self.dropout(attended)
        h = self.norm2(q)
        update = self.ff_out(self.dropout(F.silu(self.ff_gate(h)) * self.ff_value(h)))
        return q + torch.sigmoid(self.ff_residual_gate(q)) * self.dropout(update)


def _layer_at_rows(layer: nn.TransformerEncoderLayer, x: torch.Tensor, mask: torch.Tensor, rows: list) -> torch.Tensor:
    """A pre-norm encoder layer's output at `rows` only: those positions query every key."""
    q = x[:, rows]
    kv = layer.norm1(x)
    attended = layer.self_attn(layer.norm1(q), kv, kv, attn_mask=mask[:, rows], need_weights=False)[0]
    q = q + layer.dropout1(attended)
    return q + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(q))))))


class ProfileEncoder(nn.Module):
    """Declared attributes -> one (B, d) profile token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attr_emb = nn.ModuleList(nn.Embedding(c, cfg.d_model) for c in cfg.attr_cardinalities)
        self.profile_type = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, profile_cat: torch.Tensor) -> torch.Tensor:
        p = self.profile_type
        for k, emb in enumerate(self.attr_emb):
            if k < profile_cat.shape[1]:
                p = p + emb(profile_cat[:, k].clamp(0, emb.num_embeddings - 1))
        return p


class BehaviourGate(nn.Module):
    """Standardised behaviour numbers (B, P) gated into item positions (B, L, d)."""

    def __init__(self, cfg: ModelConfig, stats: dict):
        super().__init__()
        for name in PROFILE_STATISTICS:
            self.register_buffer(f"stat_{name}", _statistic(stats, name, cfg.n_profile_num))
        self.num_proj = nn.Linear(cfg.n_profile_num, cfg.d_model)
        self.gate = nn.Linear(2 * cfg.d_model, cfg.d_model)

    def forward(self, h: torch.Tensor, profile_num: torch.Tensor) -> torch.Tensor:
        p = self.num_proj(_std(profile_num, self.stat_profile_num_mean, self.stat_profile_num_std))
        p = p.unsqueeze(1).expand(-1, h.shape[1], -1)
        g = torch.sigmoid(self.gate(torch.cat([h, p], dim=-1)))
        return h + g * p


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0,
                           target_lift: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy of logits (N, C) against target (N,), with `smoothing` of each row's weight
    spread evenly over its candidates: every finite logit (an item masked with -inf is no candidate).

    Row by row -log p_j = lse - z_j, so the smoothed loss is the cross-entropy plus smoothing x the
    target's lift, z_target - (mean candidate z): no second pass over the log-probabilities. A caller
    that can compute the lift without the logits passes it as target_lift (N,)."""
    loss = F.cross_entropy(logits, target)
    if smoothing <= 0:
        return loss
    if target_lift is None:
        finite = torch.isfinite(logits)
        mean_logit = torch.where(finite, logits, 0.0).sum(1) / finite.sum(1)
        target_lift = logits.gather(1, target.unsqueeze(1)).squeeze(1) - mean_logit
    return loss + smoothing * target_lift.mean()


def full_softmax_loss(h: torch.Tensor, target: torch.Tensor, items: torch.Tensor, smoothing: float = 0.0):
    """(logits (N, n_items), cross-entropy over the whole catalog; padding item excluded). With
    smoothing, the target's lift comes from the vectors, h . (target vector - mean item vector),
    as every item but the padding is a candidate: the loss step then costs what the plain one does,
    where the textbook formula over the log-probabilities costs 1.7x (benchmarks/loss_cost.py)."""
    logits = h @ items.T
    logits[:, 0] = float("-inf")
    lift = (h * (items[target] - items[1:].mean(0))).sum(-1) if smoothing > 0 else None
    return logits, smoothed_cross_entropy(logits, target, smoothing, lift)


def leading_padding(*windows) -> int:
    """How many leading columns of these left-padded (B, L) windows (numpy arrays or tensors, e.g. a
    batch's inputs and targets) are 0 in every row, keeping at least one column. Positions count from
    the right end (SequenceEncoder.positions) and padding is masked from attention, so dropping them
    changes no real position's state, and a batch of short histories costs its own length, not L."""
    used = (windows[0] != 0).any(0)
    for w in windows[1:]:
        used = used | (w != 0).any(0)
    hits = np.flatnonzero(used.cpu().numpy() if isinstance(used, torch.Tensor) else used)
    return int(hits[0]) if len(hits) else len(used) - 1


def sample_positions(target: torch.Tensor, per_row: int) -> torch.Tensor:
    """target (B, L; 0 = none) with all but a uniform random sample of its target positions set to
    none: at most per_row x B positions, drawn from the whole batch so that every position is as likely
    to count (the loss stays an unbiased estimate of the loss at every position)."""
    flat = target.flatten()
    present = flat.nonzero().squeeze(1)
    budget = per_row * target.shape[0]
    if per_row <= 0 or len(present) <= budget:
        return target
    kept = present[torch.randperm(len(present), device=target.device)[:budget]]
    sampled = torch.zeros_like(flat)
    sampled[kept] = flat[kept]
    return sampled.view_as(target)


def adversarial_items(items: torch.Tensor, loss: torch.Tensor, eps: float) -> torch.Tensor:
    """The item vectors, each moved by eps times its own length in the direction that raises the
    loss fastest (APR-style adversarial training on the embeddings; a relative size, so one eps
    fits models of any width and scale). The move is a constant: gradients flow through items."""
    grad, = torch.autograd.grad(loss, items, retain_graph=True)
    return items + eps * items.detach().norm(dim=1, keepdim=True) * F.normalize(grad, dim=1)


def targets_ahead(target: torch.Tensor, span: int) -> torch.Tensor:
    """target (B, L; 0 = none) with each position's target replaced by one drawn uniformly from it
    and the span - 1 targets after it in the window; positions without a target keep none."""
    if span <= 1:
        return target
    length = target.shape[1]
    pos = torch.arange(length, device=target.device)
    reach = torch.clamp(length - pos, max=span)
    ahead = torch.minimum((torch.rand(target.shape, device=target.device) * reach).long(), reach - 1)
    drawn = target.gather(1, pos + ahead)
    return torch.where((target > 0) & (drawn > 0), drawn, target)


def sampled_softmax_loss(h: torch.Tensor, target: torch.Tensor, items: torch.Tensor, n_negatives: int,
                         smoothing: float = 0.0):
    """(logits (N, 1 + S): the target, then S items drawn uniformly and shared by the batch, with
    draws equal to the target removed; their cross-entropy)."""
    neg = torch.randint(1, items.shape[0], (n_negatives,), device=h.device)
    # Masked before the target's column joins them: writing into a slice of the joined logits
    # costs another pass over them, forward and backward (a sampled step took 1.4x as long).
    negatives = (h @ items[neg].T).masked_fill(neg.unsqueeze(0) == target.unsqueeze(1), float("-inf"))
    logits = torch.cat([(h * items[target]).sum(-1, keepdim=True), negatives], dim=1)
    return logits, smoothed_cross_entropy(logits, torch.zeros_like(target), smoothing)


# Parameters from state dicts written before the model had named parts, and where they live now.
_FLAT_NAMES = {
    "item_emb.": "items.id_emb.", "unk_id": "items.unk_id", "cat_emb.": "items.cat_emb.",
    "brand_emb.": "items.brand_emb.", "tag_emb.": "items.tag_emb.", "item_num_proj.": "items.num_proj.",
    "text_emb.": "items.text_emb.", "feat_": "items.feat_", "stat_item_num_": "items.stat_item_num_",
    "stat_idf": "items.stat_idf", "pos_emb.": "sequence.pos_emb.", "encoder.": "sequence.encoder.",
    "norm.": "sequence.norm.", "attr_emb.": "profile.attr_emb.", "profile_type": "profile.profile_type",
    "num_proj.": "behaviour.num_proj.", "gate.": "behaviour.gate.", "stat_profile_num_": "behaviour.stat_profile_num_",
}


def _part_name(key: str) -> str:
    for flat, part in _FLAT_NAMES.items():
        if key.startswith(flat):
            return part + key[len(flat):]
    return key


def item_features_of(state: dict) -> dict:
    """The item feature buffers of a state dict, by feature name."""
    prefix = "items.feat_"
    return {k[len(prefix):]: v for k, v in ((_part_name(k), v) for k, v in state.items()) if k.startswith(prefix)}


def statistics_of(state: dict) -> dict:
    """The scaling statistics of a state dict, by name."""
    out = {}
    for key, v in state.items():
        name = _part_name(key).rsplit(".", 1)[-1]
        if name.startswith("stat_"):
            out[name[len("stat_"):]] = v
    return out


class AttentionRecommender(nn.Module):
    def __init__(self, cfg: ModelConfig, item_features=None, stats: Optional[dict] = None):
        """item_features: dict of ITEM_FEATURES tensors for the training catalog (a bare (n,) tensor
        is taken as the categories); stats: profile_num_mean/std, item_num_mean/std, idf arrays."""
        super().__init__()
        self.cfg = cfg
        stats = stats or {}
        self.items = ItemEncoder(cfg, item_features, stats)
        self.sequence = SequenceEncoder(cfg)
        self.use_profile = bool(cfg.use_profile and cfg.attr_cardinalities)
        self.profile = ProfileEncoder(cfg) if self.use_profile else None
        self.use_behaviour = bool(cfg.use_behaviour and cfg.n_profile_num)
        self.behaviour = BehaviourGate(cfg, stats) if self.use_behaviour else None
        self.collaborative = (CollaborativeFactors(cfg.n_items, cfg.collaborative_rank)
                              if cfg.collaborative_rank else None)
        self._init_weights()

    def _init_weights(self) -> None:
        """Embeddings ~ N(0, 0.02) (padding rows zero), drawn in this fixed order so that a seed
        always gives the same model. Feature projections start as small as the embeddings: a
        default-initialised Linear would swamp the id embeddings and make every item look like its
        price at the start."""
        it = self.items
        embeddings = [it.id_emb, self.sequence.pos_emb] + [getattr(it, name, None) for name in
                                                            ("cat_emb", "brand_emb", "tag_emb", "text_emb")]
        embeddings += list(self.profile.attr_emb) if self.profile is not None else []
        for emb in (e for e in embeddings if e is not None):
            nn.init.normal_(emb.weight, std=0.02)
            if emb.padding_idx is not None:
                with torch.no_grad():
                    emb.weight[emb.padding_idx].zero_()
        for lin in (getattr(it, "num_proj", None), it.vec_proj,
                    self.behaviour.num_proj if self.behaviour is not None else None):
            if lin is not None:
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the model had named parts keep loading; they also hold the
        # behaviour statistics of models without a behaviour gate, which have no place here.
        for key in [k for k in state_dict if k.startswith(prefix)]:
            renamed = prefix + _part_name(key[len(prefix):])
            if renamed != key:
                value = state_dict.pop(key)
                if self.behaviour is not None or not renamed.startswith(prefix + "behaviour."):
                    state_dict[renamed] = value
        # Checkpoints from before item vectors existed hold none: an empty vector table is theirs.
        if self.cfg.n_item_vec == 0:
            for name in ("feat_vec", "stat_item_vec_mean", "stat_item_vec_std"):
                state_dict.setdefault(f"{prefix}items.{name}", getattr(self.items, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def trained_ids(self) -> torch.Tensor:
        """(n_items,) bool: items whose id embedding was trained (occurred in training)."""
        return self.items.feat_has_id

    def item_features(self) -> dict:
        return self.items.features()

    def content_vectors(self, feats: dict) -> Optional[torch.Tensor]:
        return self.items.content_vectors(feats)

    def attach_collaborative(self, factors: np.ndarray, reg: float, alpha: float, weights: tuple[float, float]) -> None:
        """Serve [weights[0] * attention, weights[1] * folded-in ALS factors] (recsys_spark.collaborative)."""
        self.cfg = replace(self.cfg, collaborative_rank=int(factors.shape[1]))
        self.collaborative = CollaborativeFactors(self.cfg.n_items, self.cfg.collaborative_rank).set(
            factors, reg, alpha, weights).to(self.trained_ids.device)

    def item_vectors(self, feats: Optional[dict] = None, id_keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(n, w): the served representation of every item: the shared input/output vectors of the
        attention model (see ItemEncoder, w = d_model), with the ALS factors appended when attached."""
        vectors = self.items(feats, id_keep)
        if self.collaborative is None:
            return vectors
        return torch.cat([vectors, self.collaborative.item_factors(len(vectors))], dim=1)

    def encode(self, seq: torch.Tensor, profile_cat: Optional[torch.Tensor] = None,
               profile_num: Optional[torch.Tensor] = None, items: Optional[torch.Tensor] = None,
               ends_only: bool = False) -> torch.Tensor:
        """seq (B, L) left-padded item ids -> hidden states (B, L + t, d), t = 1 when the profile
        token is used (it comes first), else 0. Position t + j sees items <= j (and the token).
        ends_only: just the first and the last state (B, 2, d), computed for less."""
        B, L = seq.shape
        if L > self.cfg.max_len:
            seq = seq[:, -self.cfg.max_len:]
            L = self.cfg.max_len
        pad = seq == 0
        items = self.items() if items is None else items[:, :self.cfg.d_model]
        scale = self.cfg.d_model ** 0.5
        x = F.embedding(seq, items) * scale + self.sequence.positions(L, seq.device)
        token = self.profile is not None and profile_cat is not None
        if token:
            x = torch.cat([self.profile(profile_cat).unsqueeze(1) * scale, x], dim=1)
            pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=seq.device), pad], dim=1)
        rows = [0, x.shape[1] - 1] if ends_only else None
        h = self.sequence(x, pad, rows)
        if rows is not None:
            pad = pad[:, rows]
        if self.behaviour is not None and profile_num is not None:
            t = int(token)  # the gate acts on item positions, not on the profile token
            h = torch.cat([h[:, :t], self.behaviour(h[:, t:], profile_num)], dim=1)
        return h * (~pad).unsqueeze(-1)

    def forward(self, seq: torch.Tensor, target: Optional[torch.Tensor] = None,
                profile_cat: Optional[torch.Tensor] = None, profile_num: Optional[torch.Tensor] = None):
        """Return (scores, loss).

        Without target: scores (B, n_items) for the next item after the sequence, loss None.
        With target (B, L; 0 = no target): scores of the supervised positions and the loss
        (full_softmax_loss, or sampled_softmax_loss with loss_negatives); in training with target_span
        > 1, each position's target is drawn from the items ahead (targets_ahead), and with loss_positions
        the loss is taken at a random sample of the positions (sample_positions). With the profile token,
        its position is supervised with the window's first item. With adversarial_eps > 0, training
        adds the same loss under the worst small move of the item vectors (adversarial_items).
        """
        if target is None:
            items = self.item_vectors()
            scores = self.user_vectors(seq, profile_cat, profile_num, items) @ items.T
            scores[:, 0] = float("-inf")
            return scores, None
        id_keep = None
        if self.training and self.cfg.item_id_dropout > 0:
            id_keep = torch.rand(self.cfg.n_items, device=seq.device) >= self.cfg.item_id_dropout
        items = self.items(id_keep=id_keep)
        if seq.shape[1] > self.cfg.max_len:
            seq, target = seq[:, -self.cfg.max_len:], target[:, -self.cfg.max_len:]
        cut = leading_padding(seq, target)
        seq, target = seq[:, cut:], target[:, cut:]
        if self.training:
            target = sample_positions(targets_ahead(target, self.cfg.target_span), self.cfg.loss_positions)
        logits, loss = self.next_item_loss(items, seq, target, profile_cat, profile_num)
        eps = self.cfg.adversarial_eps
        if eps > 0 and self.training and torch.is_grad_enabled():
            moved = adversarial_items(items, loss, eps)
            loss = loss + self.next_item_loss(moved, seq, target, profile_cat, profile_num)[1]
        return logits, loss

    def next_item_loss(self, items: torch.Tensor, seq: torch.Tensor, target: torch.Tensor,
                       profile_cat: Optional[torch.Tensor], profile_num: Optional[torch.Tensor]):
        """(logits, loss) of the targets (B, L; 0 = none) given these item vectors."""
        h = self.encode(seq, profile_cat, profile_num, items)
        if h.shape[1] > seq.shape[1]:  # profile token: predict the first item of the window
            first = torch.where((seq > 0).any(1), seq.gather(1, (seq > 0).long().argmax(1, keepdim=True)).squeeze(1), 0)
            target = torch.cat([first.unsqueeze(1), target], dim=1)
        keep = target > 0
        n_neg = self.cfg.loss_negatives
        smoothing = self.cfg.label_smoothing if self.training else 0.0
        if n_neg and n_neg < self.cfg.n_items - 1:
            return sampled_softmax_loss(h[keep], target[keep], items, n_neg, smoothing)
        return full_softmax_loss(h[keep], target[keep], items, smoothing)

    @torch.no_grad()
    def user_vectors(self, seq: torch.Tensor, profile_cat=None, profile_num=None,
                     items: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, w): the representation at the last item position; for an empty history, the profile
        token's output (zeros when the model has no profile token); the attention model reads the
        newest max_len items of seq. With the collaborative part, the ALS factors folded in from all
        of seq are appended (weighted as item_vectors expects; ranking.padded_histories)."""
        h = self.encode(seq, profile_cat, profile_num, items, ends_only=True)
        last = h[:, -1]
        if self.profile is not None and profile_cat is not None:
            last = torch.where((seq[:, -1] > 0).unsqueeze(1), last, h[:, 0])
        if self.collaborative is None:
            return last
        return self.collaborative.served_users(last, seq)


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
