"""Calibrated probabilities: what a model's scores mean as "the chance that this user's next
interaction is this item", fitted and measured. Pure torch/numpy (runs on a training rank).

The model ranks by a score s_ui over the items a user can still be shown (not seen before). Its
probability that the user's next item is i is

    p_u(i) = r x exp(s_ui / T) / sum_j exp(s_uj / T)      (j over the items the user can be shown)

where r is the share of next items that are new to the user (the rest are repeats of seen items,
which lists never show) and T a temperature. Training with cross-entropy makes T = 1 roughly right
on training data but over- or under-confident on new data, so both are fitted on the validation
split: r as the share of validation targets the user had not seen, T by minimising the log loss of
those targets (temperature scaling: the multiclass form of Platt scaling, Guo et al., ICML 2017).
One T keeps the distribution a distribution, so the probability of an item set (a campaign's
items, a category) is the sum of its members'.

A single temperature cannot fit both ends: the log loss is ruled by targets ranked far down, while
the items a list shows are the top ones, whose probabilities it leaves too low or too high. So the
probabilities of shown items get one more, monotone correction: isotonic regression (pool adjacent
violators) of "was the next item" on the temperature-scaled probability over each validation
user's top-k. It keeps every list's order. Set probabilities (audiences) are sums over many items
and use the temperature-scaled distribution.

A calibration is a plain dict, stored in the checkpoint's manifest: method, temperature,
new_share, isotonic {x, y} (knots; absent when not fitted), and, where the data has purchases,
purchase: the same fields for "the user's next step buys this item" (same temperature; its own
new_share, the share of next steps that bought a new item; the interaction isotonic map scaled by
the ratio of the new_shares).

Any model with user and item vectors is calibrated the same way; popularity is the model whose
user vector is [1] and item vector [log count] (`popularity_vectors`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from recsys_spark.topk import mask_scores, set_probabilities, topk_excluding

# The fitted temperature lies in [1/20, 20]: outside it the scores carry (almost) no ranking signal
# or are read as certainties, and either is a sign of a broken model rather than a calibration.
T_RANGE = (0.05, 20.0)


def popularity_vectors(counts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(one user vector [1], item vectors [log(count + 0.5)]): popularity as a factor model."""
    items = torch.as_tensor(np.log(np.asarray(counts, dtype=np.float64) + 0.5), dtype=torch.float32).unsqueeze(1)
    return torch.ones(1, 1), items


def _masked_logits(user_vecs: torch.Tensor, item_vecs: torch.Tensor, seen: Sequence,
                   ineligible: Optional[torch.Tensor]) -> torch.Tensor:
    scores = user_vecs.to(item_vecs.dtype) @ item_vecs.T
    mask_scores(scores, seen, ineligible)
    return scores


NOT_FITTED = {"method": "none", "temperature": 1.0, "new_share": 1.0}
# Knots kept of the isotonic fit: adjacent blocks are merged (which keeps it monotone) until each
# holds at least 1/MAX_KNOTS of the pairs and MIN_KNOT_PAIRS pairs, so that a handful of validation
# pairs at the top never maps the highest probabilities to 1.
MAX_KNOTS = 48
MIN_KNOT_PAIRS = 50


def fit_isotonic(p: np.ndarray, hit: np.ndarray, max_knots: int = MAX_KNOTS, min_pairs: int = MIN_KNOT_PAIRS) -> dict:
    """Pool adjacent violators: the non-decreasing step function of p closest (least squares) to
    hit; returned as knots {x: block mean p, y: block hit rate}, blocks merged until each holds
    max(len(p) / max_knots, min_pairs) pairs."""
    order = np.argsort(p, kind="stable")
    xs, ys, ws = [], [], []
    for x, y in zip(p[order].tolist(), hit[order].astype(np.float64).tolist()):
        xs.append(x), ys.append(y), ws.append(1.0)
        while len(ys) > 1 and ys[-2] >= ys[-1]:
            w = ws[-2] + ws[-1]
            xs[-2] = (xs[-2] * ws[-2] + xs[-1] * ws[-1]) / w
            ys[-2] = (ys[-2] * ws[-2] + ys[-1] * ws[-1]) / w
            ws[-2] = w
            del xs[-1], ys[-1], ws[-1]
    least = min(max(sum(ws) / max_knots, min_pairs), sum(ws))
    knots: list[list[float]] = []  # [weight, weighted p, weighted hits]
    open_block = [0.0, 0.0, 0.0]
    for x, y, w in zip(xs, ys, ws):
        open_block = [open_block[0] + w, open_block[1] + w * x, open_block[2] + w * y]
        if open_block[0] >= least:
            knots.append(open_block)
            open_block = [0.0, 0.0, 0.0]
    if open_block[0]:  # a light last block joins the one before it
        if knots:
            knots[-1] = [a + b for a, b in zip(knots[-1], open_block)]
        else:
            knots.append(open_block)
    return {"x": [round(k[1] / k[0], 8) for k in knots], "y": [round(k[2] / k[0], 8) for k in knots]}


def shown_probability(p: np.ndarray, calibration: dict) -> np.ndarray:
    """The probability of a shown item from its temperature-scaled one: the isotonic map (linear
    between knots, from 0 below the first, flat above the last), or p itself when not fitted."""
    iso = calibration.get("isotonic")
    if not iso or not iso["x"]:
        return p
    x, y = np.concatenate([[0.0], iso["x"]]), np.concatenate([[0.0], iso["y"]])
    return np.interp(p, x, y)


def top_probabilities(user_vecs: torch.Tensor, item_vecs: torch.Tensor, seen: Sequence, k: int,
                      temperature: float, new_share: float,
                      ineligible: Optional[torch.Tensor] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top-k items (U, k), their temperature-scaled probabilities, log normalisers (U,) incl. new_share)."""
    log_z, _ = set_probabilities(user_vecs, item_vecs, seen, temperature, ineligible=ineligible)
    log_z = log_z - math.log(max(new_share, 1e-12))
    top, top_scores = topk_excluding(user_vecs, item_vecs, seen, k, ineligible=ineligible)
    p = np.where(top >= 0, np.exp(top_scores / temperature - log_z[:, None]), 0.0)
    return top, p, log_z


def _minimising_log_temperature(log_loss) -> float:
    """Golden-section search on log T over T_RANGE (the log loss is convex in 1/T)."""
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = log_loss(a), log_loss(b)
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = log_loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = log_loss(b)
    return (lo + hi) / 2


def fit(user_vecs: torch.Tensor, item_vecs: torch.Tensor, seen: Sequence, targets: np.ndarray,
        ineligible: Optional[torch.Tensor] = None, max_cells: int = 64_000_000, k: int = 10,
        temperature: Optional[float] = None) -> dict:
    """The calibration of a model on held-out targets (the item each user interacted with next):
    new_share, the share of targets the user had not seen, and the temperature minimising the mean
    log loss of those targets over the items the user could be shown. Users are subsampled (evenly)
    so that users x items stays under max_cells. Then the isotonic correction of shown items, on
    every user's top-k. Returns the calibration with log_loss at T = 1 and at the fit (of the new
    targets) and users. A target 0 means "no item of this kind" and counts as one that could not be
    shown (purchase_targets); a given temperature is kept instead of fitted."""
    targets = np.asarray(targets, dtype=np.int64)
    step = max(1, math.ceil(len(targets) * item_vecs.shape[0] / max_cells))
    rows = np.arange(0, len(targets), step)
    logits = _masked_logits(user_vecs[torch.as_tensor(rows)], item_vecs, [seen[i] for i in rows], ineligible)
    target = logits.gather(1, torch.as_tensor(targets[rows]).unsqueeze(1)).squeeze(1)
    ok = torch.isfinite(target)  # a target the user had already seen: a repeat, outside the ranking
    new_share = float(ok.double().mean())
    logits, target = logits[ok].double(), target[ok].double()
    if not len(target):
        raise ValueError("no calibration user has a target it could be shown (all were seen or ineligible)")

    def log_loss(log_t: float) -> float:
        t = math.exp(log_t)
        return float((torch.logsumexp(logits / t, 1) - target / t).mean())

    best = _minimising_log_temperature(log_loss) if temperature is None else math.log(temperature)
    temperature = round(math.exp(best), 6)
    top, p, _ = top_probabilities(user_vecs, item_vecs, seen, k, temperature, new_share, ineligible)
    shown = top >= 0
    isotonic = fit_isotonic(p[shown], (top == targets[:, None])[shown])
    return {"method": "temperature+isotonic", "temperature": temperature, "new_share": round(new_share, 6),
            "isotonic": isotonic, "log_loss": log_loss(best), "log_loss_uncalibrated": log_loss(0.0),
            "users": int(len(ok))}


def purchase_targets(targets: np.ndarray, bought: np.ndarray) -> np.ndarray:
    """The targets of "the user's next step is buying this item": the next item where the user
    bought it, else 0 (no item: the next step was not a purchase)."""
    return np.where(np.asarray(bought, dtype=bool), np.asarray(targets, dtype=np.int64), 0)


def fit_purchase(user_vecs: torch.Tensor, item_vecs: torch.Tensor, seen: Sequence, targets: np.ndarray,
                 bought: np.ndarray, interaction: dict, **kwargs) -> Optional[dict]:
    """The calibration of the probability that the user's next step buys the item, or None when no
    target was bought (data without purchases). It keeps the interaction calibration's temperature,
    so that scoring computes one distribution, and its new_share is the share of users whose next
    step bought an item new to them. Its shown-item map is the interaction's isotonic map scaled by
    the ratio r of the two new_shares (a purchase probability is r x the interaction one): purchases
    are too few to fit a map of their own (one fitted on them put most listed items at 0)."""
    if not np.any(bought):
        return None
    try:
        fitted = fit(user_vecs, item_vecs, seen, purchase_targets(targets, bought),
                     temperature=interaction["temperature"], **kwargs)
    except ValueError:  # every bought target was a repeat of a seen item
        return None
    ratio = purchase_ratio({**interaction, "purchase": fitted})
    iso = interaction.get("isotonic")
    fitted["isotonic"] = {"x": [x * ratio for x in iso["x"]], "y": [y * ratio for y in iso["y"]]} if iso else None
    fitted["method"] = "temperature+share"
    return fitted


def purchase_ratio(calibration: dict) -> Optional[float]:
    """Purchase over interaction probability: the share of the next new items that were bought (the
    ratio of the two new_shares), or None without a purchase calibration."""
    purchase = calibration.get("purchase")
    if not purchase:
        return None
    return purchase["new_share"] / max(calibration["new_share"], 1e-12)


def purchase_probability(p: np.ndarray, calibration: dict) -> Optional[np.ndarray]:
    """The purchase probability of shown items from their temperature-scaled interaction probability
    p (which includes the interaction new_share), or None without a purchase calibration."""
    ratio = purchase_ratio(calibration)
    return None if ratio is None else shown_probability(p * ratio, calibration["purchase"])


def figures(user_vecs: torch.Tensor, item_vecs: torch.Tensor, seen: Sequence, targets: np.ndarray,
            calibration: dict, k: int = 10, bins: int = 10, ineligible: Optional[torch.Tensor] = None) -> dict:
    """How well calibrated the probabilities are on held-out targets, over every user:
    - log_loss: mean -log p_u(target) of the temperature-scaled distribution, where a repeat target
      (seen before) has the probability left for repeats, 1 - new_share (multiclass: the catalog a
      user can be shown, plus "a repeat");
    - brier, ece: over the (user, item) pairs of each user's top-k, the squared error of the shown
      probability against whether the item was the target, and the expected calibration error over
      `bins` bins of equal pair count (sum over bins of share x |mean p - hit rate|);
    - auc: the chance that a new target outranks a random other item the user could be shown;
    - reliability: per bin, mean predicted p, observed hit rate and pairs (the reliability diagram)."""
    targets = np.asarray(targets, dtype=np.int64)
    temperature, new_share = calibration["temperature"], calibration["new_share"]
    top, p, log_z = top_probabilities(user_vecs, item_vecs, seen, k, temperature, new_share, ineligible)
    target_score = (user_vecs.to(item_vecs.dtype) * item_vecs[torch.as_tensor(targets)]).sum(1).double().numpy()
    seen_target = np.array([t in set(np.asarray(s if s is not None else (), dtype=np.int64).tolist())
                            for t, s in zip(targets, seen)], dtype=bool)
    if ineligible is not None:
        seen_target |= ineligible.cpu().numpy()[targets]
    seen_target |= targets == 0  # no item of this kind next (purchase_targets)
    keep = ~seen_target & np.isfinite(log_z)
    log_p = np.where(keep, target_score / temperature - log_z, math.log(max(1.0 - new_share, 1e-12)))
    p = shown_probability(p, calibration)
    hit = top == targets[:, None]
    valid = top >= 0
    p, hit = p[valid], hit[valid].astype(np.float64)
    # AUC from the target's rank among the items the user could be shown.
    higher = _count_above(user_vecs[torch.as_tensor(np.flatnonzero(keep))], item_vecs,
                          [seen[i] for i in np.flatnonzero(keep)], target_score[keep], ineligible)
    n_items = item_vecs.shape[0]
    shown = np.array([n_items - 1 - len(set(np.asarray(s if s is not None else (), dtype=np.int64).tolist()) - {0})
                      for s in (seen[i] for i in np.flatnonzero(keep))], dtype=np.float64)
    if ineligible is not None:
        shown -= float(ineligible[1:].sum())
    auc = float(np.mean(1.0 - higher / np.maximum(shown - 1, 1)))
    order = np.argsort(p, kind="stable")
    reliability = []
    for part in np.array_split(order, min(bins, max(1, len(order)))):
        if len(part):
            reliability.append({"p": float(p[part].mean()), "hit_rate": float(hit[part].mean()), "pairs": int(len(part))})
    ece = sum(r["pairs"] * abs(r["p"] - r["hit_rate"]) for r in reliability) / max(1, len(p))
    return {"log_loss": float(-log_p.mean()), "brier": float(np.mean((p - hit) ** 2)), "ece": float(ece),
            "auc": auc, "users": int(len(targets)), "temperature": float(temperature), "new_share": float(new_share),
            "method": calibration.get("method", "none"), "k": k, "reliability": reliability}


def _count_above(user_vecs: torch.Tensor, item_vecs: torch.Tensor, seen: Sequence, target_score: np.ndarray,
                 ineligible: Optional[torch.Tensor], block: int = 512) -> np.ndarray:
    """Per user, how many items it could be shown score above its target."""
    out = []
    for lo in range(0, len(seen), block):
        scores = _masked_logits(user_vecs[lo: lo + block], item_vecs, seen[lo: lo + block], ineligible)
        out.append((scores.double() > torch.as_tensor(target_score[lo: lo + block]).unsqueeze(1)).sum(1).numpy())
    return np.concatenate(out) if out else np.zeros(0)
