"""Off-policy evaluation of nightly runs (`ope.night`), where each candidate's true value is known.

    python -m benchmarks.nightly_ope --out RESULT.json [--users 3000] [--repeats 10]
                                     [--config conf/local.yaml] [--set key=value ...] [--work DIR]

Generates a shop and runs ingest, features and train (the nightly code). The relevance policy's
lists come from a `score` run without exploration. Then, for nights 1..R after it, each night:
- `score` with score.explore_slots of its k slots drawn from the next score.explore_pool
  candidates (the draws change with the date);
- simulated feedback on what it showed, written as events and loaded by `ingest`: a user views a
  shown item with chance CLICK_BASE, or CLICK_BASE + CLICK_LIFT when the item is in the category of
  the last item of the user's history (a preference the per-item reward model cannot see), and
  buys a viewed item with chance CONVERT, earning its price;
- `ope` with ope.night on that night, candidates relevance and popularity.
The truth of relevance is the expected clicks and revenue of its lists under those chances, per
user; that of the logging policy, of the night's own lists. Reported per candidate, metric and
estimator: coverage of the intervals, bias, standard deviation and RMSE across nights; and the
seconds of each night's score and ope runs.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import date, timedelta

from benchmarks import harness

CLICK_BASE, CLICK_LIFT, CONVERT = 0.02, 0.2, 0.3
FIRST_NIGHT = date(2026, 8, 1)  # after the generated shop's events


def _chances(spark, cfg):
    """user_id, item_id, p (view chance), value (price x CONVERT): for every user and item."""
    from pyspark.sql import functions as F

    from recsys_spark import schema, tables

    content = tables.read(spark, tables.location(cfg.tables_root, schema.ITEM_CONTENT)).select(
        "item_id", "item_idx", "category_idx", F.coalesce("price", F.lit(0.0)).cast("double").alias("price"))
    last = (tables.read(spark, tables.location(cfg.tables_root, schema.SEQUENCES))
            .select("user_id", F.element_at("items", -1).alias("item_idx"))
            .join(content.select("item_idx", F.col("category_idx").alias("liked")), "item_idx").drop("item_idx"))
    same = (F.col("category_idx") == F.col("liked")).cast("double")
    return last.crossJoin(content).select("user_id", "item_id", (F.lit(CLICK_BASE) + F.lit(CLICK_LIFT) * same).alias("p"),
                                          (F.col("price") * CONVERT).alias("value"))


def _truth(lists, chances, n_users: int) -> dict:
    """Expected clicks and revenue per user of showing `lists` (user_id, item_id)."""
    from pyspark.sql import functions as F

    s = lists.join(chances, ["user_id", "item_id"]).agg(F.sum("p").alias("c"), F.sum(F.col("p") * F.col("value")).alias("r")).first()
    return {"clicks": (s["c"] or 0.0) / n_users, "revenue": (s["r"] or 0.0) / n_users}


def _feedback(shown, chances, night: date, seed: int):
    """Events drawn for the shown items (user_id, item_id): a view with chance p, then a purchase."""
    from pyspark.sql import functions as F

    def draw(salt: int):
        return (F.pmod(F.xxhash64(F.lit(seed), F.lit(salt), "user_id", "item_id"), F.lit(1_000_003)) / 1_000_003.0)

    drawn = shown.join(chances, ["user_id", "item_id"]).where(draw(1) < F.col("p"))
    views = drawn.select("user_id", "item_id", F.lit("view").alias("event_type"),
                         F.lit(f"{night} 10:00:00").alias("timestamp"))
    buys = drawn.where(draw(2) < CONVERT).select("user_id", "item_id", F.lit("purchase").alias("event_type"),
                                                 F.lit(f"{night} 11:00:00").alias("timestamp"))
    return views.unionByName(buys)


def main(argv: list[str] | None = None) -> int:
    from pyspark.sql import functions as F

    from recsys_spark import cli, schema, tables

    p = harness.parser(__doc__, dataset=False, config="conf/local.yaml")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    settings = ["score.new_item_slots=0", "ope.policies=[relevance,popularity]"]
    with harness.trained_shop(args, "recsys-nightly-ope-", 400, settings) as (spark, work, cfg, base):
        recs = lambda: tables.read(spark, tables.location(cfg.tables_root, schema.RECOMMENDATIONS))  # noqa: E731
        plain = harness.load_config(args.config, base + [f"score.run_date={FIRST_NIGHT}"])
        cli.run_stage(spark, plain, "score")
        relevance = recs().where(F.col("run_date") == F.lit(FIRST_NIGHT)).select("user_id", "item_id").persist()
        n_users = relevance.select("user_id").distinct().count()
        chances = _chances(spark, cfg).persist()
        truth = {"relevance": _truth(relevance, chances, n_users)}
        print(f"{n_users} users; true relevance per user: {truth['relevance']}", flush=True)
        runs, seconds = [], {"score": [], "ope": []}
        for r in range(1, args.repeats + 1):
            night = FIRST_NIGHT + timedelta(days=r)
            night_cfg = harness.load_config(args.config, base + [
                f"score.run_date={night}", "score.explore_slots=3", "score.explore_pool=20",
                f"ope.night={night}", f"ingest.events={work}/feedback/{night}"])
            t0 = time.time()
            cli.run_stage(spark, night_cfg, "score")
            seconds["score"].append(time.time() - t0)
            shown = recs().where(F.col("run_date") == F.lit(night)).select("user_id", "item_id")
            logging_truth = _truth(shown, chances, n_users)
            _feedback(shown, chances, night, r).write.parquet(f"{work}/feedback/{night}")
            cli.run_stage(spark, night_cfg, "ingest")
            t0 = time.time()
            out = cli.run_stage(spark, night_cfg, "ope")
            seconds["ope"].append(time.time() - t0)
            for e in out["estimates"]:
                t = truth.get(e["policy"]) if e["estimator"] != "logged" else logging_truth
                runs.append({"night": str(night), **e, "truth": t[e["metric"]] if t else None})
            print(f"night {night}: score {seconds['score'][-1]:.0f}s, ope {seconds['ope'][-1]:.0f}s; "
                  f"logging policy's true clicks/user {logging_truth['clicks']:.4f}", flush=True)
    rows = []
    for policy in ("relevance", "popularity"):
        for metric in ("clicks", "revenue"):
            for est in ("logged", "DM", "IPS", "SNIPS", "DR"):
                got = [e for e in runs if (e["policy"], e["metric"], e["estimator"]) == (policy, metric, est)]
                values = [e["value"] for e in got]
                row = {"policy": policy, "metric": metric, "estimator": est, "mean": statistics.mean(values),
                       "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                       "matched_share": statistics.mean(e["matched_share"] for e in got)}
                if all(e["truth"] is not None for e in got):
                    errors = [e["value"] - e["truth"] for e in got]
                    row.update(truth=statistics.mean(e["truth"] for e in got), bias=statistics.mean(errors),
                               rmse=statistics.mean(x * x for x in errors) ** 0.5,
                               coverage=sum(e["ci_low"] <= e["truth"] <= e["ci_high"] for e in got) / len(got))
                rows.append(row)
    print(f"\n{args.repeats} nights, {n_users} users, {int(round((1 - cfg.ope.alpha) * 100))}% intervals; "
          f"logging: relevance top-{cfg.score.k} with 3 slots from the next 20 ('logged': against its own truth)")
    print(f"{'policy':<12}{'metric':<9}{'est':<8}{'truth':>9}{'mean':>9}{'bias':>9}{'sd':>8}{'rmse':>8}{'cover':>7}"
          f"{'matched':>9}")
    for r in rows:
        known = "truth" in r
        print(f"{r['policy']:<12}{r['metric']:<9}{r['estimator']:<8}"
              + (f"{r['truth']:>9.4f}" if known else f"{'-':>9}") + f"{r['mean']:>9.4f}"
              + (f"{r['bias']:>+9.4f}" if known else f"{'-':>9}") + f"{r['sd']:>8.4f}"
              + (f"{r['rmse']:>8.4f}{r['coverage']:>7.0%}" if known else f"{'-':>8}{'-':>7}")
              + f"{r['matched_share']:>9.1%}")
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"median seconds per night: score {med['score']:.1f}, ope (2 candidates) {med['ope']:.1f}")
    harness.write_result(args.out, {"benchmark": "nightly_ope", "users": args.users, "nights": args.repeats,
                                    "click_base": CLICK_BASE, "click_lift": CLICK_LIFT, "convert": CONVERT,
                                    "rows": rows, "runs": runs, "seconds": seconds, "median_seconds": med,
                                    "cores": os.cpu_count()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
