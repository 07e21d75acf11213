"""Adversarial training (train.adversarial_eps) on the synthetic shop: accuracy, robustness to a
perturbation of the item vectors, and a shilling attack.

    python -m benchmarks.adversarial --config conf/local.yaml --out RESULT.json [--eps 0.2]
        [--fake-share 0.01] [--set key=value ...] [--work DIR]

Two lakehouses from one generated shop (the config's `generate` section): clean, and attacked,
where fake users (fake-share of the real ones) each alternate the shop's most popular items with
one target item of little popularity. In each, ingest and features once, then train with
adversarial_eps 0 and --eps. Every model is measured on the clean lakehouse's validation sample
(real users: training history -> validation item, full ranking, history removed):
- NDCG@10;
- NDCG@10 with every trained item's vector moved by eps of its own length, in a random direction
  and in the worst one (the gradient of the loss on these targets);
- the target item's exposure: the share of these users with it in their top 10.
"""
from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
import pandas as pd

from benchmarks import harness

POPULAR_ITEMS = 20  # the fake users' cover: the shop's most viewed items


def fake_events(events: pd.DataFrame, share: float, seed: int = 0) -> tuple[pd.DataFrame, str]:
    """(events of the fake users, the target item id): as many fake users as share of the real
    ones, each with the real users' median number of views, half on the most popular items and
    half on the target, an item at the 25th percentile of popularity."""
    rng = np.random.default_rng(seed)
    events = events[events["user_id"].notna() & (events["item_id"].fillna("") != "")]
    counts = events["item_id"].value_counts()
    target = counts.index[int(len(counts) * 0.75)]
    popular = counts.index[:POPULAR_ITEMS].to_numpy()
    n_users = max(1, int(round(events["user_id"].nunique() * share)))
    length = int(events.groupby("user_id").size().median())
    start = pd.to_datetime(events["timestamp"], errors="coerce").max() - pd.Timedelta(days=30)
    rows = []
    for u in range(n_users):
        steps = pd.date_range(start, periods=length, freq="37min") + pd.Timedelta(minutes=int(rng.integers(0, 600)))
        for k, when in enumerate(steps):
            item = target if k % 2 else rng.choice(popular)
            rows.append({"event_id": f"fake-{u}-{k}", "user_id": f"zz-fake-{u:05d}", "item_id": item,
                         "event_type": "view", "timestamp": when.strftime("%Y-%m-%d %H:%M:%S")})
    return pd.DataFrame(rows), str(target)


def perturbed_ndcg(model, valid: dict, eps: float, worst: bool, seed: int = 0) -> float:
    """Validation NDCG@10 with every trained item's vector moved by eps of its length (random or
    worst direction); the model is left as it was."""
    import torch

    from recsys_spark.model import pad_left
    from recsys_spark.trainer import validate

    items = model.item_vectors().detach()
    if worst:
        seq = torch.as_tensor(pad_left(valid["seen"], model.cfg.max_len))
        target = torch.zeros_like(seq)
        target[:, -1] = torch.as_tensor(valid["target"])
        pc = torch.as_tensor(valid["profile_cat"]) if model.use_profile else None
        leaf = items.clone().requires_grad_(True)
        _, loss = model.next_item_loss(leaf, seq, target, pc, None)
        direction = torch.autograd.grad(loss, leaf)[0]
    else:
        direction = torch.randn(items.shape, generator=torch.Generator().manual_seed(seed))
    delta = eps * items.norm(dim=1, keepdim=True) * torch.nn.functional.normalize(direction, dim=1)
    weight = model.items.id_emb.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[model.trained_ids] += delta[model.trained_ids]
    try:
        return validate(model, valid)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def exposure(model, valid: dict, item_idx: int, k: int = 10) -> float:
    """Share of the validation users with item_idx in their top k (history removed)."""
    import torch

    from recsys_spark.ranking import encode_users
    from recsys_spark.topk import topk_excluding

    with torch.no_grad():
        items = model.item_vectors()
        users = encode_users(model, valid["seen"], valid["profile_cat"], valid["profile_num"], items)
        top = topk_excluding(users, items, valid["seen"], k)[0]
    return float(np.mean([(row == item_idx).any() for row in np.asarray(top)]))


def measure(model, valid: dict, eps: float, target_idx: int) -> dict:
    from recsys_spark.trainer import validate

    return {"ndcg@10": validate(model, valid), f"ndcg@10_random_{eps}": perturbed_ndcg(model, valid, eps, False),
            f"ndcg@10_worst_{eps}": perturbed_ndcg(model, valid, eps, True),
            "target_exposure@10": exposure(model, valid, target_idx)}


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__, dataset=False, config="conf/local.yaml")
    p.add_argument("--eps", type=float, default=0.2, help="train.adversarial_eps of the adversarial models")
    p.add_argument("--fake-share", type=float, default=0.01, help="fake users, as a share of the real ones")
    args = p.parse_args(argv)
    from recsys_spark import checkpoints, features, generate, ingest, schema, tables, train

    with harness.work_dir(args.work, "recsys-adversarial-") as work:
        cfgs = {}
        for name in ("clean", "attacked"):
            cfgs[name] = harness.load_config(args.config, harness.lakehouse(os.path.join(work, name)) + args.overrides)
            if cfgs[name] is None:
                return 2
        clean, attacked = cfgs["clean"], cfgs["attacked"]
        generate.generate(clean.generate, clean.paths.raw)
        shutil.copytree(clean.paths.raw, attacked.paths.raw, dirs_exist_ok=True)
        real = pd.read_parquet(os.path.join(clean.paths.raw, "events"))
        fake, target = fake_events(real, args.fake_share, clean.generate.seed)
        fake.to_parquet(os.path.join(attacked.paths.raw, "events", "fake-users.parquet"), index=False)
        print(f"{fake['user_id'].nunique()} fake users, {len(fake)} views, target item {target} "
              f"({int((real['item_id'] == target).sum())} real events)", flush=True)
        rows = []
        with harness.spark_session(clean) as spark:
            for name, cfg in cfgs.items():
                ingest.run(spark, cfg)
                features.run(spark, cfg)
            valid = train.prepare(spark, clean).valid
            index = tables.read(spark, tables.location(clean.tables_root, schema.ITEM_INDEX))
            target_idx = index.where(index.item_id == target).first().item_idx
            for name, cfg in cfgs.items():
                for eps in (0.0, args.eps):
                    vcfg = harness.load_config(args.config, harness.lakehouse(os.path.join(work, name)) + args.overrides
                                               + [f"train.adversarial_eps={eps}"])
                    print(f"\n=== {name} data, adversarial_eps {eps}", flush=True)
                    t0 = time.time()
                    trained = train.run(spark, vcfg)
                    model, _ = checkpoints.load(trained["checkpoint"])
                    rows.append({"data": name, "adversarial_eps": eps, "train_s": round(time.time() - t0, 1),
                                 "epochs": len(trained["history"]),
                                 **{k: round(v, 4) for k, v in measure(model, valid, args.eps, target_idx).items()}})
                    print(rows[-1], flush=True)
    result = {"benchmark": "adversarial", "eps": args.eps, "fake_share": args.fake_share, "fake_users": int(fake["user_id"].nunique()),
              "target_item": target, "validation_users": len(valid["target"]), "rows": rows,
              "config": {k: v for k, v in clean.to_dict().items() if k in ("generate", "features", "train")}}
    print(f"\n{'data':<10}{'eps':>6}" + "".join(f"{c:>22}" for c in rows[0] if c not in ("data", "adversarial_eps")))
    for r in rows:
        print(f"{r['data']:<10}{r['adversarial_eps']:>6}" + "".join(f"{v:>22}" for c, v in r.items()
                                                                   if c not in ("data", "adversarial_eps")))
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
