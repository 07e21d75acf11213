"""Calibration on cases with a known answer: targets drawn from a known next-item distribution."""
import numpy as np
import torch

from recsys_spark import calibration
from recsys_spark.topk import set_probabilities


def _world(n_users=3000, n_items=200, d=8, true_t=2.0, seed=0, repeat_share=0.0):
    """Users and items whose next item is one they saw with probability repeat_share, else drawn
    from softmax(u.v / true_t) over unseen items."""
    g = torch.Generator().manual_seed(seed)
    users, items = torch.randn(n_users, d, generator=g), torch.randn(n_items, d, generator=g)
    rng = np.random.default_rng(seed)
    seen = [rng.choice(np.arange(1, n_items), 5, replace=False) for _ in range(n_users)]
    logits = (users @ items.T / true_t).double()
    logits[:, 0] = -np.inf
    for u, s in enumerate(seen):
        logits[u, torch.as_tensor(s)] = -np.inf
    p = torch.softmax(logits, 1).numpy()
    targets = np.array([rng.choice(n_items, p=row) for row in p])
    repeat = rng.random(n_users) < repeat_share
    targets[repeat] = [seen[u][0] for u in np.flatnonzero(repeat)]
    return users, items, seen, targets, p


def test_calibration_recovers_the_true_temperature_and_repeat_share():
    users, items, seen, targets, _ = _world(true_t=2.0, repeat_share=0.3)
    fit = calibration.fit(users, items, seen, targets)
    assert abs(fit["temperature"] - 2.0) < 0.15, fit
    assert abs(fit["new_share"] - 0.7) < 0.03, fit
    assert fit["log_loss"] < fit["log_loss_uncalibrated"]
    right = calibration.figures(users, items, seen, targets, fit)
    # Overconfident, and blind to repeats.
    wrong = calibration.figures(users, items, seen, targets, {"temperature": 1.0, "new_share": 1.0})
    assert right["ece"] < 0.02 and wrong["ece"] > 2 * right["ece"], (right["ece"], wrong["ece"])
    assert right["log_loss"] < wrong["log_loss"] and right["brier"] <= wrong["brier"]
    # The ranking does not depend on the temperature, nor does AUC.
    assert abs(right["auc"] - wrong["auc"]) < 1e-9 and right["auc"] > 0.7
    for b in right["reliability"]:
        assert abs(b["p"] - b["hit_rate"]) < 0.05, right["reliability"]


def test_set_probabilities_are_sums_of_the_softmax():
    users, items, seen, _, _ = _world(n_users=50, true_t=1.5)
    members = torch.zeros(items.shape[0], 2)
    members[1:20, 0] = 1
    members[:, 1] = 1  # every item: probability 1
    log_z, sets = set_probabilities(users, items, seen, 1.5, members=members, budget_mb=0.001)
    logits = (users @ items.T / 1.5).double()
    logits[:, 0] = -np.inf
    for u, s in enumerate(seen):
        logits[u, torch.as_tensor(s)] = -np.inf
    p = torch.softmax(logits, 1).numpy()
    assert np.allclose(log_z, torch.logsumexp(logits, 1).numpy(), atol=1e-4)
    assert np.allclose(sets[:, 0], p[:, 1:20].sum(1), atol=1e-5)
    assert np.allclose(sets[:, 1], 1.0, atol=1e-5)


def test_pool_adjacent_violators_gives_the_closest_non_decreasing_map():
    iso = calibration.fit_isotonic(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]), min_pairs=1)
    assert iso == {"x": [0.1, 0.25, 0.4], "y": [0.0, 0.5, 1.0]}
    assert np.allclose(calibration.shown_probability(np.array([0.05, 0.25, 0.9]), {"isotonic": iso}), [0.0, 0.5, 1.0])
    # Blocks lighter than min_pairs merge with their neighbours: the top never rests on one pair.
    iso = calibration.fit_isotonic(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]), min_pairs=2)
    assert iso == {"x": [0.25], "y": [0.5]}


def test_the_isotonic_correction_fixes_what_one_temperature_cannot():
    # The model's scores are the true logits compressed at the top (|s|^0.6): the temperature fits
    # the log loss, and the shown items stay mis-calibrated until the isotonic map. Users are
    # one-hot vectors, so an "item vector" is the column of warped scores.
    users, items, seen, targets, _ = _world(n_users=6000, true_t=1.0, seed=1)
    scores = users @ items.T
    warped_items = (torch.sign(scores) * scores.abs() ** 0.6).T.contiguous()  # (n_items, n_users)
    one_hot = torch.eye(len(targets))
    fit_half, test_half = slice(0, 3000), slice(3000, 6000)
    fitted = calibration.fit(one_hot[fit_half], warped_items, seen[fit_half], targets[fit_half])
    temperature_only = {k: v for k, v in fitted.items() if k != "isotonic"}
    with_iso = calibration.figures(one_hot[test_half], warped_items, seen[test_half], targets[test_half], fitted)
    without = calibration.figures(one_hot[test_half], warped_items, seen[test_half], targets[test_half],
                                  temperature_only)
    assert with_iso["ece"] < 0.6 * without["ece"], (with_iso["ece"], without["ece"])
    assert with_iso["brier"] <= without["brier"]


def test_purchase_probability_is_the_interaction_probability_times_the_buying_share():
    """Each next item is bought with a known chance (0.25), whatever the item: the purchase
    calibration keeps the temperature, finds the share of next steps that bought a new item, and
    its shown-item probabilities are a quarter of the interaction ones, as the figures confirm."""
    users, items, seen, targets, p = _world(n_users=6000, true_t=2.0, repeat_share=0.2, seed=1)
    bought = np.random.default_rng(7).random(len(targets)) < 0.25
    fit = calibration.fit(users, items, seen, targets)
    fit["purchase"] = calibration.fit_purchase(users, items, seen, targets, bought, fit)
    purchase = fit["purchase"]
    assert purchase["temperature"] == fit["temperature"]
    assert abs(purchase["new_share"] - 0.8 * 0.25) < 0.02, purchase
    top, scaled, _ = calibration.top_probabilities(users, items, seen, 10, fit["temperature"], fit["new_share"])
    ratio = calibration.purchase_probability(scaled, fit)[top >= 0].sum() / calibration.shown_probability(
        scaled, fit)[top >= 0].sum()
    assert abs(ratio - 0.25) < 0.04, ratio
    figures = calibration.figures(users, items, seen, calibration.purchase_targets(targets, bought), purchase)
    interaction = calibration.figures(users, items, seen, calibration.purchase_targets(targets, bought),
                                      {**fit, "purchase": None})  # read as if every next step were a purchase
    assert figures["ece"] < 0.01 and figures["log_loss"] < interaction["log_loss"], (figures, interaction)
    # Data without purchases: no purchase calibration, no purchase probability.
    assert calibration.fit_purchase(users, items, seen, targets, np.zeros(len(targets), bool), fit) is None
    assert calibration.purchase_probability(scaled, {k: v for k, v in fit.items() if k != "purchase"}) is None
