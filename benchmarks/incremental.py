"""Incremental vs full nights (features and scoring) when a small share of users has new events.

    python -m benchmarks.incremental --out RESULT.json [--users 100000] [--items 5000]
        [--events 2000000] [--changed 0.01] [--repeats 3] [--profile DIR] [--work DIR] [--set key=value ...]

Builds a synthetic shop with the nightly code (generate, ingest, features, a 1-epoch train: the
model's quality does not matter here), scores it once in full, then `repeats` times: appends new
events for `changed` of the users (+ a few new users), runs ingest, times the features stage in
incremental mode then in full mode, and the score stage in incremental mode then in full mode, on
the same tables. It checks that both feature builds give the same sequences and profiles and both
scorings the same lists for the changed users, and reports medians and the incremental night's
share of a full night (features + score). With --profile, the first repetition's incremental features
and score runs are profiled in the driver (cProfile: each call's time includes the Spark work it
waits for): the .prof files go to DIR and the project's slowest calls are printed.

With --successive N it runs N incremental nights in a row instead (ingest, features, score, as a
nightly that does not retrain), then one full night on the same tables: what months of incremental
nights do to the tables they add files to (their files, and the rows deleted but still inside
them) and to the night's time. Settings under test go in --set.
"""
from __future__ import annotations

import contextlib
import cProfile
import json
import os
import pstats
import statistics
import sys
import time

import numpy as np
import pandas as pd

from benchmarks import harness
from recsys_spark import config as config_mod


def _cfg(root: str, overrides: list[str], config: str = None) -> config_mod.Config:
    return config_mod.load(config, harness.lakehouse(root) + overrides)


def _build_shop(spark, cfg) -> dict:
    """generate, ingest, features, train, evaluate (promotes the model), a first full score; seconds
    per stage."""
    from recsys_spark import cli
    from recsys_spark.generate import generate

    stages, t0 = {}, time.time()
    generate(cfg.generate, cfg.paths.raw)
    for stage in ("ingest", "features", "train", "evaluate", "score"):
        t = time.time()
        cli.run_stage(spark, cfg, stage)
        stages[stage] = time.time() - t
    print(f"setup: {time.time() - t0:.0f}s {stages}", flush=True)
    return stages


def _new_events(rng, users: list, items: list, share: float, rep: int) -> pd.DataFrame:
    """1-3 events for `share` of the users and 5 new users, on the day after the last night."""
    changed = list(rng.choice(users, max(1, int(len(users) * share)), replace=False))
    changed += [f"u_new_{rep}_{i}" for i in range(5)]
    per = rng.integers(1, 4, len(changed))
    return pd.DataFrame({
        "user_id": np.repeat(changed, per),
        "item_id": rng.choice(items, per.sum()),
        "event_type": rng.choice(["view", "add_to_cart", "purchase"], per.sum()),
        "timestamp": pd.Timestamp("2026-08-01") + pd.to_timedelta(rep + 1, "D")
                     + pd.to_timedelta(rng.integers(0, 3600, per.sum()), "s"),
    })


@contextlib.contextmanager
def _profiled(profile_dir: str, name: str):
    """cProfile the block into profile_dir/name.prof and print its 15 slowest project calls (no-op
    without profile_dir)."""
    if not profile_dir:
        yield
        return
    os.makedirs(profile_dir, exist_ok=True)
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(os.path.join(profile_dir, f"{name}.prof"))
        print(f"--- {name}: slowest calls of the project (cumulative seconds)", flush=True)
        pstats.Stats(profile).sort_stats("cumulative").print_stats("recsys_spark", 15)


def _night(spark, cfg, work: str, base: list, new: pd.DataFrame, rep: int, config: str = None,
           profile_dir: str = None) -> dict:
    """Ingest the new events, rebuild features, score incrementally then in full; seconds and checks."""
    from pyspark.sql import functions as F

    from recsys_spark import cli, schema, tables

    new_dir = os.path.join(work, f"new-{rep}")
    os.makedirs(new_dir, exist_ok=True)
    new.to_parquet(os.path.join(new_dir, "events.parquet"))
    t = time.time()
    cli.run_stage(spark, _cfg(work, base + [f"ingest.events={new_dir}"], config), "ingest")
    ingest_s = time.time() - t
    built = {}
    for mode in ("incremental", "full"):
        t = time.time()
        with _profiled(profile_dir if mode == "incremental" else None, f"features-{mode}-{rep}"):
            report = cli.run_stage(spark, _cfg(work, base + [f"features.mode={mode}"], config), "features")
        built[mode] = (time.time() - t, report)
    days = {"incremental": f"2026-08-{10 + 2 * rep:02d}", "full": f"2026-08-{11 + 2 * rep:02d}"}
    # Incremental first: a full run records the current events version, after which an
    # incremental run has nothing left to do.
    walls, outs = {}, {}
    for mode, day in days.items():
        t = time.time()
        with _profiled(profile_dir if mode == "incremental" else None, f"score-{mode}-{rep}"):
            outs[mode] = cli.run_stage(spark, _cfg(work, base + [f"score.mode={mode}", f"score.run_date={day}"],
                                                   config), "score")
        walls[mode] = time.time() - t
    recs = tables.read(spark, tables.location(cfg.tables_root, schema.RECOMMENDATIONS))
    pick = sorted({str(u) for u in new.user_id})

    def lists(day):
        return sorted((r.user_id, r.rank, r.item_id) for r in
                      recs.where((F.col("run_date") == day) & F.col("user_id").isin(pick))
                      .select("user_id", "rank", "item_id").collect())

    return {"rep": rep, "changed_users": len(pick), "incremental_s": walls["incremental"],
            "full_s": walls["full"], "ingest_s": ingest_s,
            "features_incremental_s": built["incremental"][0], "features_full_s": built["full"][0],
            "features_mode": built["incremental"][1].mode, "features_users_rebuilt": built["incremental"][1].users_rebuilt,
            "same_features": _same_features(spark, cfg, built["incremental"][1].versions, built["full"][1].versions),
            "incremental_mode": outs["incremental"]["mode"], "users_scored": outs["incremental"]["users_scored"],
            "users_carried": outs["incremental"]["users_carried"],
            "same_lists_for_changed_users": lists(days["incremental"]) == lists(days["full"])}


def _files(spark, root: str) -> dict:
    """harness.table_files of the tables an incremental night adds files to (the events table by
    ingest; the others by replacing the changed users' rows)."""
    from recsys_spark import schema, tables

    names = (schema.USER_ITEM, schema.SEQUENCES, schema.USER_PROFILE, schema.TRAIN_EXAMPLES,
             schema.RECOMMENDATIONS_LATEST, schema.EVENTS)
    return {name: harness.table_files(spark, tables.location(root, name)) for name in names
            if tables.exists(spark, tables.location(root, name))}


def _successive(spark, cfg, work: str, base: list, users: list, items: list, nights: int, share: float,
                config: str = None) -> dict:
    """`nights` incremental nights in a row, then a full one; seconds and file counts per night."""
    from recsys_spark import cli

    rng = np.random.default_rng(11)
    rows = []
    for night in range(nights + 1):
        mode = "incremental" if night < nights else "full"
        new = _new_events(rng, users, items, share, night)
        new_dir = os.path.join(work, f"new-{night}")
        os.makedirs(new_dir, exist_ok=True)
        new.to_parquet(os.path.join(new_dir, "events.parquet"))
        day = (pd.Timestamp("2026-08-02") + pd.to_timedelta(night, "D")).date().isoformat()
        seconds = {}
        for stage, settings in (("ingest", [f"ingest.events={new_dir}"]), ("features", [f"features.mode={mode}"]),
                                ("score", [f"score.mode={mode}", f"score.run_date={day}"])):
            t = time.time()
            report = cli.run_stage(spark, _cfg(work, base + settings, config), stage)
            seconds[stage] = time.time() - t
        row = {"night": night + 1, "mode": mode, **{f"{k}_s": v for k, v in seconds.items()},
               "night_s": seconds["features"] + seconds["score"], "score_mode": report["mode"],
               "files": _files(spark, cfg.tables_root)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    full = rows[-1]["night_s"]
    return {"nights": rows, "full_night_s": full,
            "share_first_nights": statistics.median(r["night_s"] for r in rows[:3]) / full,
            "share_last_nights": statistics.median(r["night_s"] for r in rows[-4:-1]) / full}


def _same_features(spark, cfg, incremental: dict, full: dict) -> bool:
    """Whether the incremental and the full build hold the same sequences and profile counts."""
    from recsys_spark import schema, tables

    columns = {schema.SEQUENCES: ["user_idx", "items", "train_items", "valid_target", "test_target"],
               schema.USER_PROFILE: ["user_idx", "n_events", "n_items", "active_days", "last_active_day", "profile_cat"]}
    for name, cols in columns.items():
        loc = tables.location(cfg.tables_root, name)
        a, b = (tables.read(spark, loc, v[name]).select(*cols) for v in (incremental, full))
        if not (a.exceptAll(b).isEmpty() and b.exceptAll(a).isEmpty()):
            return False
    return True


def main(argv=None) -> int:
    p = harness.parser(__doc__, dataset=False, config=None)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--changed", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", metavar="DIR", help="profile the first repetition's incremental runs into DIR")
    p.add_argument("--successive", type=int, metavar="N", help="N incremental nights in a row, then a full one")
    args = p.parse_args(argv)
    from recsys_spark import schema, tables

    base = [f"generate.users={args.users}", f"generate.items={args.items}", f"generate.events={args.events}",
            "generate.categories=24", "train.epochs=1", "train.valid_users=0", "score.k=10",
            "spark.conf={'spark.driver.memory': '8g', 'spark.ui.enabled': 'false'}"] + args.overrides
    with harness.work_dir(args.work, "bench-incremental-") as work:
        cfg = _cfg(work, base + ["score.run_date=2026-08-01"], args.config)
        with harness.spark_session(cfg) as spark:
            stages = _build_shop(spark, cfg)
            rng = np.random.default_rng(11)
            all_users = [r.user_id for r in tables.read(spark, tables.location(cfg.tables_root, schema.SEQUENCES))
                         .select("user_id").collect()]
            items = [r.item_id for r in tables.read(spark, tables.location(cfg.tables_root, schema.ITEM_INDEX))
                     .select("item_id").collect()]
            if args.successive:
                result = {"benchmark": "incremental-successive", "users": len(all_users), "items": args.items,
                          "events": args.events, "changed_share": args.changed, "settings": args.overrides,
                          "setup_stage_s": stages,
                          **_successive(spark, cfg, work, base, all_users, items, args.successive, args.changed,
                                        args.config)}
                print(f"{args.successive} incremental nights in a row: the first three "
                      f"{result['share_first_nights']:.0%} of a full night, the last three "
                      f"{result['share_last_nights']:.0%} ({result['full_night_s']:.1f}s)")
                harness.write_result(args.out, result)
                return 0
            reps = []
            for rep in range(args.repeats):
                new = _new_events(rng, all_users, items, args.changed, rep)
                reps.append(_night(spark, cfg, work, base, new, rep, args.config,
                                   args.profile if rep == 0 else None))
                print(json.dumps(reps[-1]), flush=True)
    med = {key: statistics.median(r[key] for r in reps)
           for key in ("incremental_s", "full_s", "features_incremental_s", "features_full_s")}
    night_full = med["features_full_s"] + med["full_s"]
    night_incremental = med["features_incremental_s"] + med["incremental_s"]
    result = {"benchmark": "incremental", "users": len(all_users), "items": args.items, "events": args.events,
              "changed_share": args.changed, "setup_stage_s": stages, "reps": reps,
              "median_incremental_s": med["incremental_s"], "median_full_s": med["full_s"],
              "speedup": med["full_s"] / med["incremental_s"],
              "median_features_incremental_s": med["features_incremental_s"],
              "median_features_full_s": med["features_full_s"],
              "night_share": night_incremental / night_full}
    print(f"{args.changed:.0%} of {len(all_users)} users changed (median of {len(reps)}): score full "
          f"{med['full_s']:.1f}s, incremental {med['incremental_s']:.1f}s; features full {med['features_full_s']:.1f}s, "
          f"incremental {med['features_incremental_s']:.1f}s; incremental night (features + score) "
          f"{night_incremental:.1f}s = {result['night_share']:.0%} of a full night ({night_full:.1f}s); "
          f"same features: {all(r['same_features'] for r in reps)}; same lists for changed users: "
          f"{all(r['same_lists_for_changed_users'] for r in reps)}")
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
