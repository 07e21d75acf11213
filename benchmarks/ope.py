"""Off-policy evaluation on the simulated shop, where each candidate's true value is known.

    python -m benchmarks.ope --out RESULT.json [--users 5000] [--repeats 20]
                             [--config conf/local.yaml] [--set key=value ...] [--work DIR]

Generates a shop, runs ingest, features and train (the nightly code), then repeats with seeds
1..R: abtest-simulate logs every test user under the logging policy (the model's relevance top-k
with score.explore_slots of its k slots drawn from the next score.explore_pool candidates) and
`ope.estimate` estimates each candidate's clicks and revenue per user from that log. The truth is
the simulator's expected value of each candidate's lists (abtest.expected_value). A seed changes
the exploration draws and the simulated clicks, so repeats measure each estimator's spread.
Reported per candidate, metric and estimator: coverage (share of repeats whose interval holds the
truth), bias, standard deviation and RMSE across repeats.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

from benchmarks import harness

CANDIDATES = ("relevance", "expected_revenue", "popularity")


def main(argv: list[str] | None = None) -> int:
    from recsys_spark import abtest, ope, tables

    p = harness.parser(__doc__, dataset=False, config="conf/local.yaml")
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    logging_policy = ["score.explore_slots=3", "score.explore_pool=20", "score.new_item_slots=0",
                      "abtest.sim_variants=[relevance]"]
    with harness.trained_shop(args, "recsys-ope-", 500, logging_policy) as (spark, _, cfg, base):
        shop = abtest.Shop.open(spark, cfg)
        lists = {c: ope.candidate_lists(spark, cfg, shop, c).persist() for c in CANDIDATES}
        truth = {c: abtest.expected_value(spark, shop, shop.lists(cfg, c), cfg.abtest) for c in CANDIDATES}
        truth["logging"] = abtest.expected_value(spark, shop, shop.lists(cfg, "relevance", explore=True,
                                                                         seed=1), cfg.abtest)
        shop.close()
        print(f"true values per user: {truth}", flush=True)
        runs = []
        for seed in range(1, args.repeats + 1):
            t0 = time.time()
            run_cfg = harness.load_config(args.config, base + [f"abtest.seed={seed}"])
            sim = abtest.simulate(spark, run_cfg)
            log = tables.read(spark, sim["exposures"])
            for c in CANDIDATES:
                for r in ope.estimate(log, lists[c], cfg.ope.alpha):
                    runs.append({"seed": seed, "policy": c, **r})
            print(f"repeat {seed}: {time.time() - t0:.0f}s", flush=True)
    rows = []
    for c in CANDIDATES:
        for metric in ("clicks", "revenue"):
            for est in ("DM", "IPS", "SNIPS", "DR"):
                got = [r for r in runs if (r["policy"], r["metric"], r["estimator"]) == (c, metric, est)]
                values = [r["value"] for r in got]
                t = truth[c][metric]
                bias = statistics.mean(values) - t
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                rows.append({"policy": c, "metric": metric, "estimator": est, "truth": t,
                             "mean": statistics.mean(values), "bias": bias, "sd": sd,
                             "rmse": (bias ** 2 + sd ** 2) ** 0.5,
                             "coverage": sum(r["ci_low"] <= t <= r["ci_high"] for r in got) / len(got),
                             "matched_share": statistics.mean(r["matched_share"] for r in got),
                             "ess": statistics.mean(r["ess"] for r in got)})
    level = int(round((1 - cfg.ope.alpha) * 100))
    print(f"\n{args.repeats} repeats, {level}% intervals; logging policy: relevance top-{cfg.score.k} with "
          f"{cfg.score.explore_slots} slots from the next {cfg.score.explore_pool} (true clicks/user "
          f"{truth['logging']['clicks']:.4f})")
    print(f"{'policy':<18}{'metric':<9}{'est':<7}{'truth':>9}{'mean':>9}{'bias':>9}{'sd':>8}{'rmse':>8}"
          f"{'cover':>7}{'matched':>9}")
    for r in rows:
        print(f"{r['policy']:<18}{r['metric']:<9}{r['estimator']:<7}{r['truth']:>9.4f}{r['mean']:>9.4f}"
              f"{r['bias']:>+9.4f}{r['sd']:>8.4f}{r['rmse']:>8.4f}{r['coverage']:>7.0%}{r['matched_share']:>9.1%}")
    harness.write_result(args.out, {"rows": rows, "truth": truth, "runs": runs, "repeats": args.repeats,
                                    "users": args.users, "cores": os.cpu_count()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
