"""The collaborative part of the served model (train.collaborative): ALS factors folded in from a
user's window exactly as MLlib computes them, the blend chosen on the validation users, and the
checkpoint and scoring serving what was chosen."""
import dataclasses

import numpy as np
import pytest
import torch

from pyspark.sql import functions as F

from recsys_spark import baselines, checkpoints, schema, splits, tables
from recsys_spark.collaborative import fold_in
from recsys_spark.model import AttentionRecommender, ModelConfig, pad_left
from recsys_spark.ranking import encode_users
from recsys_spark.trainer import choose_blend, validation_ndcgs


def test_folding_in_a_users_window_reproduces_mllib_implicit_als_user_factors(spark):
    """MLlib's last half-iteration solves every user's factors from the final item factors, so the
    fold-in of a user's items must give the factors MLlib returned for that user, repeats (an
    item's occurrences are its rating) and the regularisation by the number of items included."""
    rng = np.random.default_rng(5)
    histories = {u: list(rng.integers(1, 40, rng.integers(2, 15))) for u in range(60)}
    histories[0] += histories[0][:3]  # repeats weigh as ratings
    users = spark.createDataFrame([(u, [int(i) for i in items]) for u, items in histories.items()],
                                  "user_idx long, input array<int>")
    for reg, alpha in ((0.1, 1.0), (0.01, 10.0)):
        model = baselines.als_model(baselines.interactions(users), rank=8, reg=reg, alpha=alpha, max_iter=5)
        q = torch.as_tensor(baselines.item_factors(model, 40))
        expected = {r.id: np.asarray(r.features) for r in model.userFactors.collect()}
        ids = sorted(expected)
        seq = torch.as_tensor(pad_left([histories[u] for u in ids], 20))
        folded = fold_in(q, q.T @ q, seq, reg, alpha).numpy()
        np.testing.assert_allclose(folded, np.stack([expected[u] for u in ids]), rtol=2e-3, atol=2e-4)
    # A user with no items has no collaborative evidence: zeros, not a failure.
    assert not fold_in(q, q.T @ q, torch.zeros(1, 5, dtype=torch.long), 0.1, 1.0).any()


def _clustered_case():
    """An untrained attention model over 41 items, and validation users whose history and next
    item come from one of two item clusters (1-20, 21-40): what ALS factors capture and a random
    model cannot."""
    torch.manual_seed(0)
    model = AttentionRecommender(ModelConfig(n_items=41, max_len=8, d_model=16, n_heads=2, n_layers=1))
    model.eval()
    rng = np.random.default_rng(0)
    clusters = rng.integers(0, 2, 200)
    draws = [rng.choice(20, 6, replace=False) + 1 + 20 * c for c in clusters]
    valid = {"seen": [d[:5] for d in draws], "target": np.array([d[5] for d in draws]),
             "profile_cat": np.zeros((200, 1), dtype=np.int64), "profile_num": np.zeros((200, 0), dtype=np.float32)}
    factors = np.zeros((41, 2), dtype=np.float32)
    factors[1:21, 0] = factors[21:, 1] = 0.5
    factors += rng.normal(0, 0.01, factors.shape).astype(np.float32)
    factors[0] = 0
    return model, valid, [{"rank": 2, "regParam": 0.1, "alpha": 1.0, "maxIter": 10, "factors": factors}]


def test_validation_chooses_the_blend_the_users_rank_better_with_and_the_checkpoint_serves_it(tmp_path):
    model, valid, grid = _clustered_case()
    attention_alone = validation_ndcgs(model, valid).mean()
    blend = choose_blend(model, valid, grid)
    assert blend["attention_valid_ndcg@10"] == pytest.approx(attention_alone)
    assert blend["chosen"] != "attention" and blend["valid_ndcg@10"] > 2 * attention_alone
    assert len(blend["tried"]) == 4 and blend["valid_ndcg@10"] == max(t["valid_ndcg@10"] for t in blend["tried"])
    als = blend["best_als_alone"]
    assert als["against"] == "attention" and als["gain"] > als["gain_halfwidth"] > 0
    # The model now serves the chosen blend: ranked as scoring ranks, the validation users get the
    # figure the choice was made on.
    assert model.cfg.collaborative_rank == 2
    assert validation_ndcgs(model, valid).mean() == pytest.approx(blend["valid_ndcg@10"])
    # ALS folds in the whole history, as MLlib was fitted on it, while attention reads the newest 8.
    long = np.arange(1, 31)
    with torch.no_grad():
        served = encode_users(model, [long], items=model.item_vectors())[0]
        part = model.collaborative
        expected = fold_in(part.factors, part.gram, torch.as_tensor(long)[None], float(part.reg), float(part.alpha))[0]
        attention = model.user_vectors(torch.as_tensor(long[-8:])[None])[0]
    torch.testing.assert_close(served[16:], part.weights[1] * expected)
    torch.testing.assert_close(served[:16], attention[:16])
    path = checkpoints.save(str(tmp_path), "attn-blend", model, {"model_config": model.cfg.to_dict()}, {})
    loaded, _ = checkpoints.load(path)
    assert validation_ndcgs(loaded, valid).mean() == pytest.approx(blend["valid_ndcg@10"])
    # A catalog that grew since training: the new items have no ALS factors, so only the attention
    # side scores them.
    feats = {k: torch.cat([v, v[-1:]]) for k, v in loaded.item_features().items()}
    grown = loaded.item_vectors(feats)
    assert grown.shape == (42, 16 + 2) and not grown[41, 16:].any()


def test_a_blend_that_ranks_no_better_is_not_served():
    """Factors that score every item alike for each user carry nothing to rank by: no blend is
    tried and the attention model is served alone, its checkpoint unchanged in shape."""
    model, valid, grid = _clustered_case()
    grid[0]["factors"] = np.zeros_like(grid[0]["factors"])
    grid[0]["factors"][1:, 0] = 1.0  # the same for every item: scores no item above another
    blend = choose_blend(model, valid, grid)
    assert blend["chosen"] == "attention" and model.collaborative is None and blend["tried"] == []
    assert blend["valid_ndcg@10"] == blend["attention_valid_ndcg@10"]


def test_a_blend_whose_gain_the_sample_cannot_tell_from_noise_is_not_served():
    """The clustered users, but only five of them: the best blend ranks them better, yet the paired
    interval of its gain holds 0, so the attention model is served alone."""
    model, valid, grid = _clustered_case()
    few = {key: rows[:5] for key, rows in valid.items()}
    blend = choose_blend(model, few, grid)
    for best in (blend["best_als_alone"], blend["best_mix"]):
        assert best["against"] == "attention" and 0 < best["gain"] <= best["gain_halfwidth"]
    assert blend["chosen"] == "attention" and model.collaborative is None
    assert blend["valid_ndcg@10"] == blend["attention_valid_ndcg@10"]


def test_a_mix_that_beats_als_alone_only_within_the_noise_does_not_replace_it():
    """Users 120-179 of the clustered case: ALS alone ranks them far better than the untrained
    attention model, and the best mix (75% ALS) better still on average, but its gain over ALS alone,
    paired over the same users, lies inside its interval: ALS alone serves. The best of several
    mixes looks better on validation than it is (docs/benchmarks.md, "Weakly sequential data")."""
    model, valid, grid = _clustered_case()
    part = {key: rows[120:180] for key, rows in valid.items()}
    blend = choose_blend(model, part, grid)
    als, mix = blend["best_als_alone"], blend["best_mix"]
    assert als["against"] == "attention" and als["gain"] > als["gain_halfwidth"]
    assert mix["against"] == "ALS alone" and 0 < mix["gain"] <= mix["gain_halfwidth"]
    assert mix["valid_ndcg@10"] == max(t["valid_ndcg@10"] for t in blend["tried"]) > als["valid_ndcg@10"]
    assert blend["chosen"]["share"] == 1.0 and blend["valid_ndcg@10"] == als["valid_ndcg@10"]
    assert validation_ndcgs(model, part).mean() == pytest.approx(als["valid_ndcg@10"])


@pytest.mark.slow
def test_the_shops_training_fits_the_grid_and_scoring_serves_the_blend(spark, shop, shop_copy):
    """train.collaborative on the shop: prepare fits ALS at each grid point on the training
    histories; the shop's trained model, blended as chosen, is what the score stage serves."""
    from recsys_spark import score, train

    cfg = dataclasses.replace(shop_copy, train=dataclasses.replace(shop_copy.train, collaborative=True, resume="off"),
                              evaluate=dataclasses.replace(shop_copy.evaluate, als_ranks=[16], als_reg_params=[0.1],
                                                           als_alphas=[1.0, 10.0]))
    job = train.prepare(spark, cfg)
    n_items = job.model_config.n_items
    assert [(p["rank"], p["alpha"]) for p in job.collaborative] == [(16, 1.0), (16, 10.0)]
    trained = job.item_features["has_id"]
    for point in job.collaborative:
        assert point["factors"].shape == (n_items, 16) and np.abs(point["factors"][trained]).sum(1).min() > 0
    model, ckpt = checkpoints.load(checkpoints.latest(shop_copy.models_dir))
    blend = choose_blend(model, job.valid, job.collaborative)
    assert blend["attention_valid_ndcg@10"] == pytest.approx(ckpt["selection"]["valid_ndcg@10"], abs=1e-6)
    if model.collaborative is None:  # the shop is sequential; serve a blend anyway to score through it
        point = job.collaborative[0]
        model.attach_collaborative(point["factors"], point["regParam"], point["alpha"], (0.5, 5.0))
    checkpoints.save(cfg.models_dir, "attn-blended", model, {**{k: v for k, v in ckpt.items() if k not in
                                                                ("state_dict", "config", "run_id", "created_at")},
                                                             "model_config": model.cfg.to_dict()}, ckpt["config"])
    score.run(spark, dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, model_run_id="attn-blended")))
    recs = tables.read(spark, tables.location(cfg.tables_root, schema.RECOMMENDATIONS_LATEST)).toPandas()
    assert len(recs) > 0 and recs["model_run_id"].eq("attn-blended").all()
    # The served scores are the blend's: the scored users' vectors against the items' served vectors.
    users = splits.scoring_input(spark, cfg).where(F.col("user_id").isin(list(recs["user_id"].unique()[:20]))).toPandas()
    with torch.no_grad():
        items = model.item_vectors()
        vectors = encode_users(model, list(users["input"]), list(users["profile_cat"]), list(users["profile_num"]), items)
    index = tables.read(spark, tables.location(cfg.tables_root, schema.ITEM_INDEX)).toPandas()
    item_idx = dict(zip(index["item_id"], index["item_idx"]))
    for user, vector in zip(users["user_id"], vectors):
        served = recs[recs["user_id"] == user]
        expected = (items[[item_idx[i] for i in served["item_id"]]] @ vector).numpy()
        np.testing.assert_allclose(served["score"].to_numpy(), expected, rtol=1e-4, atol=1e-4)
