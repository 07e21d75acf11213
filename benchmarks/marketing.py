"""Marketing benchmark: audience quality and calibration on a dataset, against baselines.

    python -m benchmarks.marketing DATASET_FILE --out RESULT.json [--config conf/bench.yaml]
                                              [--set key=value ...] [--work DIR]

Runs ingest -> features -> train (the nightly code) into a fresh lakehouse, then on the test split
(leave-last-out; each user's history up to the test item):
- Audiences: every item that is some test user's next item is a campaign. Each method ranks all
  users for it (users who already had the item are never in an audience, as in the product) and
  the audience is its top N users, N = 1% and 5% of the users. Reported: the share of the items'
  actual next users found in their audiences (hits / test users whose next item was a campaign).
  Methods: the attention model's calibrated probability (the audience stage's ranking); heaviest
  users (longest histories); item-kNN (sum of the item's cosine similarities to the user's
  history); ALS user factors (dot product; grid chosen on validation NDCG@10 as in evaluate), and
  the same normalised per user as a next-item distribution (log-softmax over the user's unseen
  items, as the attention model's probability is), which separates the model from the normalising.
- Calibration: log loss, Brier score, ECE and AUC of the next-item probability of the attention
  model and of calibrated popularity (evaluate's measure_calibration).
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from benchmarks import harness

AUDIENCE_SHARES = (0.01, 0.05)


def _dense_seen(users: dict, n_items: int):
    import torch

    seen = torch.zeros(len(users["target"]), n_items, dtype=torch.bool)
    for u, h in enumerate(users["seen"]):
        h = h[(h > 0) & (h < n_items)]
        seen[u, torch.as_tensor(h)] = True
    seen[:, 0] = True
    return seen


def audience_recall(score_block, n_users: int, n_items: int, seen, targets: np.ndarray, sizes: list[int],
                    block: int = 256) -> dict:
    """{N: share of actual next users found} when each target item's audience is the N users with the
    highest score_block(items) (a (users, len(items)) tensor; seen pairs never chosen)."""
    import torch

    campaigns = np.unique(targets[targets > 0])
    found = {n: 0 for n in sizes}
    for lo in range(0, len(campaigns), block):
        items = campaigns[lo: lo + block]
        scores = score_block(torch.as_tensor(items)).float()
        scores = scores.masked_fill(seen[:, torch.as_tensor(items)], float("-inf"))
        top = torch.topk(scores, max(sizes), dim=0).indices.numpy()  # (N, items) user rows
        for j, item in enumerate(items):
            actual = set(np.flatnonzero(targets == item).tolist())
            for n in sizes:
                found[n] += len(actual & set(top[:n, j].tolist()))
    total = int((targets > 0).sum())
    return {n: found[n] / max(1, total) for n in sizes}


def _knn_scores(spark, test_users, users: dict, n_items: int, n_neighbors: int):
    import torch

    from recsys_spark.baselines import item_neighbors

    sim = torch.zeros(n_items, n_items)
    for r in item_neighbors(test_users, n_neighbors).collect():
        if r.item_idx < n_items and r.neighbor < n_items:
            sim[r.item_idx, r.neighbor] = float(r.sim)
    hist = torch.zeros(len(users["target"]), n_items)
    for u, h in enumerate(users["input"]):
        h = h[(h > 0) & (h < n_items)]
        hist[u, torch.as_tensor(h)] = 1.0
    return lambda items: hist @ sim[:, items]


def _als_scores(spark, cfg, test_users, valid_users, users_idx: np.ndarray, n_items: int):
    """ALS with the evaluate grid chosen on validation, refit on the test histories: (user, item) factors."""
    import torch
    from pyspark.sql import functions as F

    from recsys_spark.baselines import als_grid, als_model, interactions
    from recsys_spark.evaluate import spark_metrics

    ev = cfg.evaluate
    grid = {"ranks": ev.als_ranks, "reg_params": ev.als_reg_params, "alphas": ev.als_alphas}
    _, best, _ = als_grid(valid_users, test_users, n_items, 10, grid,
                          lambda r, t: spark_metrics(r, t, [10])["ndcg@10"], seed=cfg.train.seed,
                          max_iter=ev.als_max_iter)
    model = als_model(interactions(test_users.select("user_idx", "input")), best["rank"], best["regParam"],
                      best["alpha"], cfg.train.seed, ev.als_max_iter)
    items = torch.zeros(n_items, best["rank"])
    for r in model.itemFactors.collect():
        if r.id < n_items:
            items[r.id] = torch.as_tensor(r.features)
    row = {int(u): i for i, u in enumerate(users_idx)}
    users = torch.zeros(len(users_idx), best["rank"])
    for r in model.userFactors.where(F.col("id").isin([int(u) for u in users_idx])).collect():
        users[row[int(r.id)]] = torch.as_tensor(r.features)
    return users, items, best


def measure(spark, cfg) -> dict:
    import torch

    from recsys_spark import checkpoints, splits
    from recsys_spark.evaluate import Evaluation, sample_vectors
    from recsys_spark.topk import set_probabilities

    evaluation = Evaluation(spark, cfg)
    t0 = time.time()
    evaluation.measure_calibration()
    calibration_s = time.time() - t0
    test_df = evaluation.users.select("user_idx", "input", "seen", "target", "profile_cat", "profile_num")
    rows = test_df.orderBy("user_idx").collect()
    as_int = lambda v: np.asarray(v if v is not None else (), dtype=np.int64)  # noqa: E731
    users = {"seen": [as_int(r.seen) for r in rows], "input": [as_int(r.input) for r in rows],
             "target": np.array([r.target for r in rows], dtype=np.int64),
             "profile_cat": [r.profile_cat for r in rows], "profile_num": [r.profile_num for r in rows]}
    n_users, n_items = len(rows), evaluation.n_items
    sizes = [max(1, math.ceil(s * n_users)) for s in AUDIENCE_SHARES]
    seen = _dense_seen(users, n_items)
    targets = np.where(users["target"] < n_items, users["target"], 0)
    model = checkpoints.cached_model(evaluation.ckpt_path)
    user_vecs, item_vecs = sample_vectors(model, users)
    temperature = checkpoints.calibration(evaluation.ckpt)["temperature"]
    log_z, _ = set_probabilities(user_vecs, item_vecs, users["seen"], temperature)
    log_z = torch.as_tensor(log_z, dtype=torch.float32).unsqueeze(1)
    lengths = torch.as_tensor([float(len(h)) for h in users["input"]]).unsqueeze(1)
    methods = {
        "attention": lambda cols: (user_vecs @ item_vecs[cols].T) / temperature - log_z,
        "heaviest_users": lambda cols: lengths.expand(-1, len(cols)),
        "item_knn": _knn_scores(spark, test_df, users, n_items, cfg.evaluate.knn_neighbors),
    }
    als_users, als_items, als_params = _als_scores(spark, cfg, test_df,
                                                   splits.valid_users(spark, cfg, evaluation.versions),
                                                   np.array([r.user_idx for r in rows]), n_items)
    als_log_z = torch.as_tensor(set_probabilities(als_users, als_items, users["seen"], 1.0)[0],
                                dtype=torch.float32).unsqueeze(1)
    methods["als"] = lambda cols: als_users @ als_items[cols].T
    methods["als_normalized"] = lambda cols: als_users @ als_items[cols].T - als_log_z
    audiences = {}
    for name, fn in methods.items():
        t0 = time.time()
        found = audience_recall(fn, n_users, n_items, seen, targets, sizes)
        audiences[name] = {**{f"found@{s:.0%}": round(found[n], 4) for s, n in zip(AUDIENCE_SHARES, sizes)},
                           "seconds": round(time.time() - t0, 1)}
        print(f"audience {name}: " + ", ".join(f"{k} {v}" for k, v in audiences[name].items()), flush=True)
    calibrated = {m: {k: v for k, v in c.items() if k != "reliability"} | {"reliability": c["reliability"]}
                  for m, c in evaluation.calibration.items()}
    return {"n_users": n_users, "n_items": n_items, "campaigns": int(len(np.unique(targets[targets > 0]))),
            "audience_sizes": dict(zip([f"{s:.0%}" for s in AUDIENCE_SHARES], sizes)), "audiences": audiences,
            "als": als_params, "calibration": calibrated, "calibration_s": round(calibration_s, 1),
            "checkpoint_calibration": evaluation.ckpt.get("calibration")}


def print_tables(result: dict) -> None:
    print(f"\n{result['dataset']}: {result['n_users']} test users, {result['campaigns']} campaigns (each test "
          f"target item); audience sizes {result['audience_sizes']}")
    cols = [f"found@{s:.0%}" for s in AUDIENCE_SHARES]
    print(f"{'method':<16}" + "".join(f"{c:>12}" for c in cols))
    for name, a in result["audiences"].items():
        print(f"{name:<16}" + "".join(f"{a[c]:>12.4f}" for c in cols))
    print(f"calibration ({next(iter(result['calibration'].values()))['users']} test users):")
    keys = ("temperature", "new_share", "log_loss", "brier", "ece", "auc")
    print(f"{'model':<16}" + "".join(f"{k:>12}" for k in keys))
    for name, c in result["calibration"].items():
        print(f"{name:<16}" + "".join(f"{c[k]:>12.4f}" for k in keys))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.quality import run_stages

    p = harness.parser(__doc__)
    p.add_argument("--measure-only", action="store_true",
                   help="measure the model already trained in --work (skip ingest, features and train)")
    args = p.parse_args(argv)
    if not os.path.exists(args.dataset):
        print(f"error: dataset {args.dataset} not found", file=sys.stderr)
        return 2
    with harness.work_dir(args.work, "recsys-marketing-") as work:
        overrides = harness.lakehouse(work, args.dataset) + harness.side_overrides(args.dataset, work)[0]
        cfg = harness.load_config(args.config, overrides + args.overrides)
        if cfg is None:
            return 2
        with harness.spark_session(cfg) as spark:
            if args.measure_only:
                from recsys_spark import checkpoints

                trained = checkpoints.manifest(checkpoints.latest(cfg.models_dir, ""))
                stage_s = {}
            else:
                trained, stage_s = run_stages(spark, cfg)
            result = measure(spark, cfg)
    result = {"dataset": os.path.basename(os.path.normpath(args.dataset)), "dataset_path": args.dataset,
              "protocol": "leave-last-out test split; each test target item a campaign; users who had the item excluded",
              **result, "stage_seconds": stage_s, "train_epochs": len(trained["history"]),
              "config": {k: v for k, v in cfg.to_dict().items() if k in ("features", "train", "evaluate")}}
    print_tables(result)
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
