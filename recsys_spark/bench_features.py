"""Feature-group ablation and cold start on a dataset: what each feature group adds.

    python -m recsys_spark.bench_features DATASET_FILE --out RESULT.json [--config conf/bench.yaml]
        [--variants all,no_profile,...] [--set key=value ...] [--work DIR]

One lakehouse, ingest + features once (with the side files next to the dataset, and 10% of users
and 10% of items held out for cold start), then for each variant: train (the nightly Horovod
path) with some feature groups off, and evaluate -- warm users (leave-last-out, full ranking) and
the cold-start slices (recsys_spark.evaluate.cold_start). Prints one table; writes RESULT.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from recsys_spark import config as config_mod

GROUPS = ("use_profile", "use_behaviour", "use_content", "use_text")
VARIANTS = {
    "all": {},  # the defaults: declared profile, item content, titles (behaviour profile off)
    "with_behaviour": {"use_behaviour": True},
    "no_profile": {"use_profile": False},
    "no_content": {"use_content": False},
    "no_text": {"use_text": False},
    "id_only": {g: False for g in GROUPS},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="conf/bench.yaml")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--work", default=None)
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not os.path.isfile(args.dataset):
        print(f"error: unknown variant(s) {unknown} (known: {', '.join(VARIANTS)})" if unknown
              else f"error: dataset file {args.dataset} not found", file=sys.stderr)
        return 2
    work = args.work or tempfile.mkdtemp(prefix="recsys-features-")
    from recsys_spark.datasets import side_files

    side = side_files(args.dataset, os.path.join(work, "side"))
    base = [f"paths.root={work}", f"paths.raw={os.path.join(work, 'raw')}", f"ingest.events={os.path.abspath(args.dataset)}",
            "features.holdout_users=0.1", "features.holdout_items=0.1", "evaluate.baselines=[popularity]"]
    base += [f"ingest.{k}={v}" for k, v in side.items()] + args.overrides
    try:
        cfg = config_mod.load(args.config, base)
    except config_mod.ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from recsys_spark import evaluate, features, ingest, train
    from recsys_spark.session import build_spark

    spark = build_spark(cfg.spark)
    rows, cold = [], {}
    try:
        t0 = time.time()
        ingest.run(spark, cfg)
        features.run(spark, cfg)
        prep_s = time.time() - t0
        for name in variants:
            vcfg = config_mod.load(args.config, base + [f"train.{k}={str(v).lower()}" for k, v in VARIANTS[name].items()])
            print(f"\n=== variant {name}: {VARIANTS[name] or 'the default feature groups'}", flush=True)
            trained = train.run(spark, vcfg)
            ev = evaluate.run(spark, vcfg)
            m = ev["metrics"]["attention"]
            c = ev["cold"] or {}
            row = {"variant": name, "ndcg@10": m["ndcg@10"], "recall@10": m["recall@10"],
                   "train_s": round(trained["seconds"], 1), "epochs": len(trained["history"])}
            for n, by in c.get("users", {}).items():
                row[f"cold_users_{n}_recall@10"] = by["attention"]["recall@10"]
            if c.get("items"):
                row["cold_items_recall@10"] = c["items"]["attention"]["recall@10"]
                row["cold_items_among_recall@10"] = c["items"]["attention_among_cold"]["recall@10"]
            rows.append(row)
            cold[name] = c
            if "popularity" not in {r["variant"] for r in rows}:
                pm = ev["metrics"]["popularity"]
                prow = {"variant": "popularity", "ndcg@10": pm["ndcg@10"], "recall@10": pm["recall@10"]}
                for n, by in c.get("users", {}).items():
                    prow[f"cold_users_{n}_recall@10"] = by["popularity"]["recall@10"]
                    prow[f"cold_users_{n}_segment_recall@10"] = by["segment_popularity"]["recall@10"]
                if c.get("items"):
                    prow["cold_items_recall@10"] = c["items"]["popularity"]["recall@10"]
                    prow["cold_items_random_recall@10"] = c["items"]["random"]["recall@10"]
                    prow["cold_items_among_random_recall@10"] = c["items"]["random_among_cold"]["recall@10"]
                rows.append(prow)
    finally:
        spark.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {"dataset": os.path.basename(args.dataset), "side_files": sorted(side), "prep_s": round(prep_s, 1),
              "protocol": "warm: leave-last-out, full ranking, history removed, held-out users excluded; "
                          "cold users: 10% of users never trained on, profile + first n events -> next item; "
                          "cold items: 10% of items cut from training sequences, warm test targets among them",
              "rows": rows, "cold": {k: {kk: vv for kk, vv in v.items()} for k, v in cold.items()},
              "config": {k: v for k, v in cfg.to_dict().items() if k in ("features", "train")}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    cols = ["ndcg@10", "recall@10", "cold_users_0_recall@10", "cold_users_1_recall@10", "cold_users_3_recall@10",
            "cold_items_recall@10", "cold_items_among_recall@10"]
    print(f"\n{result['dataset']} (side files: {', '.join(result['side_files']) or 'none'})")
    print(f"{'variant':<14}" + "".join(f"{c.replace('_recall@10', ' R@10'):>22}" for c in cols))
    for r in rows:
        print(f"{r['variant']:<14}" + "".join(f"{r[c]:>22.4f}" if c in r else f"{'-':>22}" for c in cols))
    pop = next((r for r in rows if r["variant"] == "popularity"), {})
    for n in (0, 1, 3):
        if f"cold_users_{n}_segment_recall@10" in pop:
            print(f"segment popularity, cold users {n} events: R@10 {pop[f'cold_users_{n}_segment_recall@10']:.4f}")
    if "cold_items_random_recall@10" in pop:
        print(f"random ranking, cold items: R@10 {pop['cold_items_random_recall@10']:.4f} over the catalog, "
              f"{pop['cold_items_among_random_recall@10']:.4f} among the held-out items")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
