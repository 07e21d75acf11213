"""Audience speed: the audience stage (the product's code) over a generated shop, by users and campaigns.

    python -m benchmarks.audience_speed --out RESULT.json [--users 100000,300000] [--campaigns 100,1000]
                                       [--config conf/local.yaml] [--set key=value ...] [--work DIR]

For each user count: generate a shop (10 events per user, 2,000 items), ingest, features and a
short training (one epoch, sampled softmax); then for each campaign count run the audience stage
with that many campaigns (item lists of 5 random items, each with an audience of 1% of the users)
and report its wall time and user x campaign probabilities scored per second. Medians of --repeats.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np
import yaml

from benchmarks import harness


def campaigns_file(path: str, n: int, n_items: int, size: int, seed: int = 3) -> str:
    rng = np.random.default_rng(seed)
    rows = [{"campaign_id": f"c{c:05d}", "items": [f"i{i:06d}" for i in rng.choice(n_items, 5, replace=False)],
             "size": size} for c in range(n)]
    with open(path, "w") as fh:
        yaml.safe_dump(rows, fh)
    return path


def main(argv: list[str] | None = None) -> int:
    from recsys_spark import audience
    from recsys_spark.generate import generate

    p = harness.parser(__doc__, dataset=False, config="conf/local.yaml")
    p.add_argument("--users", default="100000,300000")
    p.add_argument("--campaigns", default="100,1000")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    rows = []
    for n_users in [int(x) for x in args.users.split(",")]:
        with harness.work_dir(args.work and os.path.join(args.work, str(n_users)), "recsys-audience-") as work:
            overrides = harness.lakehouse(work) + harness.shop_overrides(n_users, 2000, 10) + [
                "train.epochs=1", "train.loss_negatives=256", "train.valid_users=2000", "tracking.enabled=false",
                "spark.conf={spark.driver.memory: 8g}"]
            cfg = harness.load_config(args.config, overrides + args.overrides)
            if cfg is None:
                return 2
            generate(cfg.generate, cfg.paths.raw)
            with harness.spark_session(cfg) as spark:
                trained = harness.run_stages(spark, cfg, label=f"{n_users} users: ")
                for n_campaigns in [int(x) for x in args.campaigns.split(",")]:
                    path = campaigns_file(os.path.join(work, f"campaigns-{n_campaigns}.yaml"), n_campaigns,
                                          cfg.generate.items, max(1, n_users // 100))
                    run_cfg = harness.load_config(args.config, overrides + args.overrides + [
                        f"audience.campaigns={path}", "audience.exclude_purchased_days=30", "audience.max_per_user=3",
                        # Speed, not promotion, is measured here: the model just trained serves.
                        f"score.model_run_id={trained['run_id']}"])
                    times = []
                    for _ in range(args.repeats):
                        t0 = time.time()
                        out = audience.run(spark, run_cfg)
                        times.append(time.time() - t0)
                    median = statistics.median(times)
                    pairs = out["users_scored"] * n_campaigns
                    rows.append({"users": out["users_scored"], "campaigns": n_campaigns, "seconds": round(median, 1),
                                 "runs": [round(t, 1) for t in times], "pairs_per_s": round(pairs / median)})
                    print(f"audience: {rows[-1]}", flush=True)
    print(f"\n{'users':>9}{'campaigns':>11}{'seconds':>9}{'pairs/s':>12}")
    for r in rows:
        print(f"{r['users']:>9}{r['campaigns']:>11}{r['seconds']:>9.1f}{r['pairs_per_s']:>12,}")
    harness.write_result(args.out, {"rows": rows, "cores": os.cpu_count(),
                                    "setup": "shop: 10 events/user, 2,000 items; campaigns of 5 items, audience 1% of users, "
                                             "30-day purchase exclusion, max 3 audiences per user"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
