"""The feedback loop on the simulated shop: LinUCB against the greedy model and uniform exploration.

    python -m benchmarks.bandit --out RESULT.json [--users 5000] [--days 30] [--repeats 3]
                                [--plot FIGURE.png] [--config conf/local.yaml] [--set key=value ...]
                                [--work DIR]

Generates a shop, runs ingest, features and train (the nightly code), then repeats
`bandit-simulate` (recsys_spark.bandit) with seeds 1..R: a seed changes the simulated clicks and
conversions and the uniform policy's draws. Reported per policy, as the median over repeats: revenue
and clicks per user over all days (drawn), expected revenue per user on the first and last day
(the simulator's expectation of the lists shown, without the luck of the draws), and the bandit's
ratios to greedy. --plot writes the report's figure for the median repeat.
"""
from __future__ import annotations

import base64
import statistics
import sys
import time

from benchmarks import harness


def summary(days: list[dict], n_days: int) -> dict:
    out = {}
    for policy in ("greedy", "uniform", "bandit"):
        mine = sorted((d for d in days if d["policy"] == policy), key=lambda d: d["day"])
        users = mine[0]["users"]
        out[policy] = {"revenue": sum(d["revenue"] for d in mine) / users / n_days,
                       "clicks": sum(d["clicks"] for d in mine) / users / n_days,
                       "expected_revenue_first_day": mine[0]["expected_revenue"] / users,
                       "expected_revenue_last_day": mine[-1]["expected_revenue"] / users,
                       "expected_clicks_last_day": mine[-1]["expected_clicks"] / users}
    return out


def write_plot(spark, cfg, run_id: str, path: str) -> None:
    from pyspark.sql import functions as F

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recsys_spark import report, schema, tables

    days = tables.read(spark, tables.location(cfg.tables_root, schema.BANDIT_DAYS)).where(F.col("run_id") == run_id)
    uri = report.bandit_figure(plt, days.toPandas())
    with open(path, "wb") as fh:
        fh.write(base64.b64decode(uri.split(",", 1)[1]))


def main(argv: list[str] | None = None) -> int:
    from recsys_spark import bandit

    p = harness.parser(__doc__, dataset=False, config="conf/local.yaml")
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--plot", default="")
    args = p.parse_args(argv)
    with harness.trained_shop(args, "recsys-bandit-", 500, [f"bandit.days={args.days}"]) as (spark, _, cfg, base):
        runs = []
        for seed in range(1, args.repeats + 1):
            t0 = time.time()
            run_cfg = harness.load_config(args.config, base + [f"abtest.seed={seed}"])
            out = bandit.simulate(spark, run_cfg)
            runs.append({"seed": seed, "run_id": out["run_id"], "seconds": time.time() - t0,
                         "theta": out["theta"], "policies": summary(out["days"], args.days)})
            print(f"repeat {seed}: {runs[-1]['seconds']:.0f}s {runs[-1]['policies']}", flush=True)
        by_ratio = sorted(runs, key=lambda r: r["policies"]["bandit"]["revenue"] / r["policies"]["greedy"]["revenue"])
        median_run = by_ratio[len(by_ratio) // 2]
        if args.plot:
            write_plot(spark, cfg, median_run["run_id"], args.plot)
    table = {policy: {m: statistics.median(r["policies"][policy][m] for r in runs) for m in runs[0]["policies"][policy]}
             for policy in ("greedy", "uniform", "bandit")}
    ratios = {m: statistics.median(r["policies"]["bandit"][m] / r["policies"]["greedy"][m] for r in runs)
              for m in ("revenue", "clicks", "expected_revenue_last_day")}
    result = {"users": args.users, "days": args.days, "repeats": args.repeats, "bandit": vars(cfg.bandit),
              "median": table, "bandit_over_greedy": ratios, "runs": runs,
              "seconds_per_repeat": statistics.median(r["seconds"] for r in runs)}
    print(f"\n{args.days} days, {args.users} users, median of {args.repeats} repeats (per user and day):")
    print(f"  {'policy':<9}{'revenue':>9}{'clicks':>9}{'E[rev] day 1':>14}{'E[rev] last':>13}")
    for policy, t in table.items():
        print(f"  {policy:<9}{t['revenue']:>9.4f}{t['clicks']:>9.4f}{t['expected_revenue_first_day']:>14.4f}"
              f"{t['expected_revenue_last_day']:>13.4f}")
    print(f"  bandit / greedy: {', '.join(f'{m} {v:.3f}' for m, v in ratios.items())}")
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
