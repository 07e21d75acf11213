"""Feature-group ablation and cold start on a dataset: what each feature group adds.

    python -m benchmarks.features DATASET_FILE --out RESULT.json [--config conf/bench.yaml]
        [--variants all,no_profile,label:use_text=false,...] [--set key=value ...] [--work DIR]
    python -m benchmarks.features shop --config conf/local.yaml --out RESULT.json ...

DATASET_FILE `shop` is the synthetic shop the config's `generate` section describes (users,
items with upstream vectors, events), generated into the work folder.

One lakehouse, ingest + features once (with the side files next to the dataset, and 10% of users
and 10% of items held out for cold start), then for each variant: train (the nightly Horovod
path) with some feature groups off, and evaluate -- warm users (leave-last-out, full ranking) and
the cold-start slices (recsys_spark.cold_start). Prints one table; writes RESULT.json.
"""
from __future__ import annotations

import os
import sys
import time

from benchmarks import harness

GROUPS = ("use_profile", "use_behaviour", "use_content", "use_text", "use_vectors")
VARIANTS = {
    "all": {},  # the defaults: declared profile, item content, titles (behaviour profile off)
    "with_behaviour": {"use_behaviour": True},
    "no_profile": {"use_profile": False},
    "no_content": {"use_content": False},
    "no_text": {"use_text": False},
    "no_vectors": {"use_vectors": False},
    "id_only": {g: False for g in GROUPS},
}
COLD_START = ["features.holdout_users=0.1", "features.holdout_items=0.1", "evaluate.baselines=[popularity]"]


def variant_row(name: str, trained: dict, ev: dict) -> dict:
    m, c = ev["metrics"]["attention"], ev["cold"] or {}
    row = {"variant": name, "ndcg@10": m["ndcg@10"], "recall@10": m["recall@10"],
           "train_s": round(trained["seconds"], 1), "epochs": len(trained["history"])}
    for n, by in c.get("users", {}).items():
        row[f"cold_users_{n}_recall@10"] = by["attention"]["recall@10"]
    if c.get("items"):
        row["cold_items_recall@10"] = c["items"]["attention"]["recall@10"]
        row["cold_items_among_recall@10"] = c["items"]["attention_among_cold"]["recall@10"]
    return row


def popularity_row(ev: dict) -> dict:
    pm, c = ev["metrics"]["popularity"], ev["cold"] or {}
    row = {"variant": "popularity", "ndcg@10": pm["ndcg@10"], "recall@10": pm["recall@10"]}
    for n, by in c.get("users", {}).items():
        row[f"cold_users_{n}_recall@10"] = by["popularity"]["recall@10"]
        row[f"cold_users_{n}_segment_recall@10"] = by["segment_popularity"]["recall@10"]
    if c.get("items"):
        row["cold_items_recall@10"] = c["items"]["popularity"]["recall@10"]
        row["cold_items_random_recall@10"] = c["items"]["random"]["recall@10"]
        row["cold_items_among_random_recall@10"] = c["items"]["random_among_cold"]["recall@10"]
    return row


def print_table(result: dict) -> None:
    rows = result["rows"]
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


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--variants", default=",".join(VARIANTS), help="names, or label:key=value,... (train.* keys)")
    args = p.parse_args(argv)
    variants = [harness.parse_variant(v, VARIANTS) for v in harness.split_variants(args.variants)]
    shop = args.dataset == "shop"
    if not shop and not os.path.isfile(args.dataset):
        print(f"error: dataset file {args.dataset} not found", file=sys.stderr)
        return 2
    from recsys_spark import evaluate, features, generate, ingest, train
    from benchmarks.datasets import side_files

    with harness.work_dir(args.work, "recsys-features-") as work:
        side = {} if shop else side_files(args.dataset, os.path.join(work, "side"))
        base = (harness.lakehouse(work, None if shop else args.dataset) + COLD_START
                + [f"ingest.{k}={v}" for k, v in side.items()] + args.overrides)
        cfg = harness.load_config(args.config, base)
        if cfg is None:
            return 2
        rows, cold = [], {}
        with harness.spark_session(cfg) as spark:
            t0 = time.time()
            if shop:
                generate.generate(cfg.generate, cfg.paths.raw)
            ingest.run(spark, cfg)
            features.run(spark, cfg)
            prep_s = time.time() - t0
            for name, over in variants:
                vcfg = harness.load_config(args.config, base + [f"train.{k}={str(v).lower()}" for k, v in over.items()])
                if vcfg is None:
                    return 2
                print(f"\n=== variant {name}: {over or 'the default feature groups'}", flush=True)
                trained = train.run(spark, vcfg)
                ev = evaluate.run(spark, vcfg)
                rows.append(variant_row(name, trained, ev))
                cold[name] = ev["cold"] or {}
                if "popularity" not in {r["variant"] for r in rows}:
                    rows.append(popularity_row(ev))
    result = {"dataset": "shop" if shop else os.path.basename(args.dataset),
              "side_files": ["users", "items"] if shop else sorted(side), "prep_s": round(prep_s, 1),
              "protocol": "warm: leave-last-out, full ranking, history removed, held-out users excluded; "
                          "cold users: 10% of users never trained on, profile + first n events -> next item; "
                          "cold items: 10% of items cut from training sequences, warm test targets among them",
              "rows": rows, "cold": cold,
              "config": {k: v for k, v in cfg.to_dict().items() if k in ("features", "train") + (("generate",) if shop else ())}}
    print_table(result)
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
