"""The pure-torch parts on a GPU: the top-K kernel, and training the attention model to convergence.

The GPU machine has torch but no Java or Spark, so the work is split in two:

    # here (Spark): the arrays a lakehouse built by bench_features holds, as one .npz
    python -m benchmarks.gpu export WORK_DIR OUT.npz [--config conf/bench.yaml --set ...]
    # there (torch only): kernel timings + one training run per variant, evaluated like `evaluate`
    python -m benchmarks.gpu run OUT.npz --out RESULT.json [--seconds 120] [--variants all,id_only]
        [--variant label:dropout=0.1,lr=0.004 ...] [--lr --batch-size --max-epochs --patience --cpu-epochs N]
    # there: train-step throughput of the product model, sequences/s per batch size, fp32 and bf16
    python -m benchmarks.gpu throughput OUT.npz --out RESULT.json
    # there: the product's rank function (recsys_spark.trainer.worker, what Spark launches) under
    # torchrun, reading the exported arrays, against a plain-torch SASRec step on the same device
    torchrun --nproc_per_node=N -m benchmarks.gpu ranks OUT.npz --out RESULT.json [--epochs 3]
        [--steps-per-epoch 200] [--batch-size 256] [--d-model 64]

`run` trains with the product's model and loop (recsys_spark.model, trainer.train_steps), picks the
epoch by validation NDCG@10 (the same validation sample as the Spark job), and reports test
NDCG/Recall@10 on warm users, Recall@10 on held-out items and on held-out users with no events,
full ranking with the history removed (recsys_spark.topk), next to popularity.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from benchmarks import harness

VARIANTS = {"all": {}, "all_drop03": {"item_id_dropout": 0.3},
            "all_drop05": {"item_id_dropout": 0.5},
            "id_only": {"use_profile": False, "use_behaviour": False, "use_content": False,
                        "use_text": False, "item_id_dropout": 0.0},
            "id_only_drop01": {"use_profile": False, "use_behaviour": False, "use_content": False,
                               "use_text": False, "item_id_dropout": 0.1},
            "no_profile": {"use_profile": False}, "no_behaviour": {"use_behaviour": False},
            "no_content": {"use_content": False}, "no_text": {"use_text": False}}


def _ragged(rows) -> tuple[np.ndarray, np.ndarray]:
    lens = np.array([len(r) for r in rows], dtype=np.int64)
    flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if len(rows) else np.zeros(0, np.int64)
    return flat, np.concatenate([[0], np.cumsum(lens)])


def _unragged(flat, offsets) -> list:
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def export(argv: list[str]) -> int:
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    from recsys_spark import config as config_mod
    from recsys_spark import schema, tables
    from recsys_spark.splits import held_out, test_users
    from recsys_spark.model import pad_left, pad_right
    from recsys_spark.session import build_spark
    from recsys_spark.train import prepare

    p = argparse.ArgumentParser()
    p.add_argument("work")
    p.add_argument("out")
    p.add_argument("--config", default="conf/bench.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args(argv)
    cfg = config_mod.load(a.config, [f"paths.root={a.work}", "features.holdout_users=0.1",
                                     "features.holdout_items=0.1"] + a.overrides)
    spark = build_spark(cfg.spark)
    job = prepare(spark, cfg)
    L = job.model_config.max_len
    parts = [pq.read_table(f[len("file:"):] if f.startswith("file:") else f,
                           columns=["input", "target", "profile_cat", "profile_num"]).to_pydict() for f in job.batches.files]
    train = {k: sum((p_[k] for p_ in parts), []) for k in ("input", "target", "profile_cat", "profile_num")}
    out = {f"feat_{k}": np.asarray(v) for k, v in job.item_features.items()}
    out.update({f"stat_{k}": np.asarray(v, dtype=np.float32) for k, v in job.stats.items()})
    out["train_input"] = np.asarray(train["input"], dtype=np.int64)
    out["train_target"] = np.asarray(train["target"], dtype=np.int64)
    out["train_profile_cat"] = pad_right(train["profile_cat"])
    out["train_profile_num"] = np.asarray(train["profile_num"], dtype=np.float32)
    for k, v in (job.valid or {}).items():
        if k == "seen":
            out["valid_seen"], out["valid_seen_off"] = _ragged(v)
            out["valid_input"] = pad_left(v, L)
        else:
            out[f"valid_{k}"] = np.asarray(v)
    fc = cfg.features
    content = tables.read(spark, tables.location(cfg.tables_root, schema.ITEM_CONTENT), job.data_versions[schema.ITEM_CONTENT])
    cold_items = np.array(sorted(r.item_idx for r in content.where(held_out("item_id", fc.holdout_items, fc.holdout_seed))
                                 .select("item_idx").collect()), dtype=np.int64)
    rows = test_users(spark, cfg, job.data_versions).orderBy("user_idx").collect()
    out["test_input"] = pad_left([r.input for r in rows], L)
    out["test_seen"], out["test_seen_off"] = _ragged([r.input for r in rows])
    out["test_target"] = np.array([r.target for r in rows], dtype=np.int64)
    out["test_profile_cat"] = pad_right([r.profile_cat for r in rows])
    out["test_profile_num"] = np.asarray([r.profile_num for r in rows], dtype=np.float32)
    out["cold_items"] = cold_items
    seqs = tables.read(spark, tables.location(cfg.tables_root, schema.SEQUENCES), job.data_versions[schema.SEQUENCES])
    prof = tables.read(spark, tables.location(cfg.tables_root, schema.USER_PROFILE), job.data_versions[schema.USER_PROFILE])
    cu = (seqs.where(held_out("user_id", fc.holdout_users, fc.holdout_seed))
          .select("user_idx", F.element_at("items", 1).alias("first")).join(prof.select("user_idx", "profile_cat"), "user_idx")
          .orderBy("user_idx").collect())
    out["cold_user_target"] = np.array([r.first for r in cu], dtype=np.int64)
    out["cold_user_profile_cat"] = pad_right([r.profile_cat for r in cu])
    out["model_config"] = np.frombuffer(json.dumps(job.model_config.to_dict()).encode(), dtype=np.uint8)
    spark.stop()
    np.savez_compressed(a.out, **out)
    print(f"wrote {a.out}: {len(out['train_input'])} training windows, {len(rows)} test users, "
          f"{len(cold_items)} held-out items, {len(cu)} held-out users")
    return 0


def _topk_eval(model, items, inp, pc, pn, seen, target, k, device, batch=1024):
    import torch

    from recsys_spark.metrics import ndcg_at_k, recall_at_k
    from recsys_spark.topk import topk_excluding

    tops = []
    with torch.no_grad():
        for lo in range(0, len(target), batch):
            sl = slice(lo, lo + batch)
            u = model.user_vectors(torch.as_tensor(inp[sl], device=device),
                                   torch.as_tensor(pc[sl], device=device) if model.use_profile else None,
                                   torch.as_tensor(pn[sl], device=device) if model.use_behaviour and pn is not None else None,
                                   items)
            tops.append(topk_excluding(u, items, seen[sl], k)[0])
    top = np.concatenate(tops)
    return top, {"recall@10": recall_at_k(top, target, 10), "ndcg@10": ndcg_at_k(top, target, 10),
                 "recall@20": recall_at_k(top, target, 20), "ndcg@20": ndcg_at_k(top, target, 20), "n_users": len(target)}


def _batches(d: dict, batch_size: int, seed: int = 0):
    """Endless training batches from the exported windows: a fresh shuffle every pass, full batches only."""
    n = len(d["train_input"])
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        for lo in range(0, n - batch_size + 1, batch_size):
            i = perm[lo: lo + batch_size]
            yield {"input": d["train_input"][i], "target": d["train_target"][i],
                   "profile_cat": d["train_profile_cat"][i], "profile_num": d["train_profile_num"][i]}


def parse_variant(spec: str) -> tuple[str, dict]:
    return harness.parse_variant(spec, VARIANTS)


def train_variant(d: dict, name: str, seconds: float, device: str, batch_size: int = 128, lr: float = 1e-3,
                  max_epochs: int = 10_000, patience: int = 0, cpu_epochs: int = 0) -> dict:
    """Train one variant until `seconds`, `max_epochs` or `patience` epochs without a better
    validation NDCG@10; evaluate the best validated epoch on the test users. With cpu_epochs, also
    the best validated epoch among the first cpu_epochs (what a CPU budget of that many epochs gets)."""
    import torch

    from recsys_spark.model import AttentionRecommender, ModelConfig
    from recsys_spark.trainer import train_steps

    mc = json.loads(bytes(d["model_config"]).decode())
    name, over = parse_variant(name)
    lr = over.pop("lr", lr)
    batch_size = over.pop("batch_size", batch_size)
    mc.update(over)
    torch.manual_seed(42)
    feats = {k[5:]: torch.as_tensor(v) for k, v in d.items() if k.startswith("feat_")}
    stats = {k[5:]: torch.as_tensor(v) for k, v in d.items() if k.startswith("stat_")}
    model = AttentionRecommender(ModelConfig(**mc), feats, stats).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    n = len(d["train_input"])
    it = _batches(d, batch_size)
    steps = max(1, n // batch_size)
    vseen = _unragged(d["valid_seen"], d["valid_seen_off"])
    best, best_cpu, history, t0 = (-1.0, None, 0), (-1.0, None, 0), [], time.time()
    while time.time() - t0 < seconds and len(history) < max_epochs:
        e0 = time.time()
        loss = train_steps(model, opt, it, steps, device)
        model.eval()
        items = model.item_vectors()
        _, vm = _topk_eval(model, items, d["valid_input"], d["valid_profile_cat"], d["valid_profile_num"], vseen,
                           d["valid_target"], 20, device)
        history.append({"epoch": len(history) + 1, "loss": round(loss, 4), "valid_ndcg@10": round(vm["ndcg@10"], 4),
                        "seconds": round(time.time() - e0, 2)})
        if vm["ndcg@10"] > best[0]:
            best = (vm["ndcg@10"], {k: v.detach().clone() for k, v in model.state_dict().items()}, len(history))
            if len(history) <= cpu_epochs:
                best_cpu = best
        if patience and len(history) - best[2] >= patience:
            break
    tseen = _unragged(d["test_seen"], d["test_seen_off"])

    def test(state):
        model.load_state_dict(state)
        model.eval()
        items = model.item_vectors()
        top, warm = _topk_eval(model, items, d["test_input"], d["test_profile_cat"], d["test_profile_num"], tseen,
                               d["test_target"], 20, device)
        return top, warm, items

    res = {"variant": name, "overrides": dict(over, lr=lr, batch_size=batch_size)}
    if best_cpu[1] is not None:
        _, warm_cpu, _ = test(best_cpu[1])
        res[f"first_{cpu_epochs}_epochs"] = {"best_epoch": best_cpu[2], "valid_ndcg@10": round(best_cpu[0], 4),
                                             "warm": warm_cpu}
    top, warm, items = test(best[1])
    cold = np.isin(d["test_target"], d["cold_items"])
    from recsys_spark.metrics import recall_at_k

    res.update({"epochs": len(history), "best_epoch": best[2], "valid_ndcg@10": round(best[0], 4),
                "train_s": round(time.time() - t0, 1), "warm": warm,
                "cold_items_recall@10": recall_at_k(top[cold], d["test_target"][cold], 10) if cold.any() else None,
                "n_cold_item_targets": int(cold.sum()), "history": history})
    if model.use_profile and len(d["cold_user_target"]):
        empty = np.zeros((len(d["cold_user_target"]), 1), dtype=np.int64)
        _, cu = _topk_eval(model, items, empty, d["cold_user_profile_cat"], None, [np.zeros(0, np.int64)] * len(empty),
                           d["cold_user_target"], 20, device)
        res["cold_users_0_events"] = cu
    return res


def kernel(device: str, sizes=((100_000, 50_000), (1_000_000, 100_000)), k: int = 100, dim: int = 64) -> list:
    """users/s of topk_excluding (blocked matmul + top-K, 20 seen items removed per user)."""
    import torch

    from recsys_spark.topk import topk_excluding

    rows = []
    for n_users, n_items in sizes:
        g = torch.Generator().manual_seed(0)
        items = torch.randn(n_items, dim, generator=g).to(device)
        seen = [np.random.default_rng(u).integers(1, n_items, 20) for u in range(4096)]
        users_all = torch.randn(4096, dim, generator=g).to(device)
        # Exactness on a sample: GPU ids == CPU ids.
        gpu_top = topk_excluding(users_all[:256], items, seen[:256], k)[0]
        cpu_top = topk_excluding(users_all[:256].cpu(), items.cpu(), seen[:256], k)[0]
        same = float((gpu_top == cpu_top).mean())
        torch.cuda.synchronize() if device == "cuda" else None
        t0 = time.time()
        done = 0
        while done < n_users:
            b = min(4096, n_users - done)
            topk_excluding(users_all[:b], items, seen[:b], k)
            done += b
        torch.cuda.synchronize() if device == "cuda" else None
        wall = time.time() - t0
        rows.append({"users": n_users, "items": n_items, "k": k, "wall_s": round(wall, 2),
                     "users_per_s": round(n_users / wall), "same_ids_as_cpu": same})
        print(f"kernel {n_users}x{n_items} k={k}: {n_users / wall:,.0f} users/s ({wall:.1f}s); ids equal to CPU: {same:.4f}",
              flush=True)
    return rows


def run(argv: list[str]) -> int:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("npz")
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--variants", default="all,id_only", help="comma-separated names of VARIANTS")
    p.add_argument("--variant", action="append", default=[],
                   help="label:key=value,... (ModelConfig fields, lr, batch_size); repeatable")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-epochs", type=int, default=10_000)
    p.add_argument("--patience", type=int, default=0, help="stop after this many epochs without a better validation")
    p.add_argument("--cpu-epochs", type=int, default=0, help="also test the best of the first N epochs")
    p.add_argument("--skip-kernel", action="store_true")
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__}
    if not a.skip_kernel:
        result["kernel"] = kernel(device)
    d = dict(np.load(a.npz))
    # Popularity = number of training windows holding the item (as the Spark job's distinct users).
    both = np.concatenate([d["train_input"], d["train_target"]], axis=1)
    pop = np.zeros(len(d["feat_category"]))
    for row in both:
        pop[np.unique(row[row > 0])] += 1
    pop[0] = -1
    ranked = np.argsort(-pop, kind="stable")
    tseen = _unragged(d["test_seen"], d["test_seen_off"])
    from recsys_spark.metrics import ndcg_at_k, recall_at_k

    from recsys_spark.topk import first_unseen

    def pop_top(seen_lists):
        return first_unseen(ranked, seen_lists, 20)

    ptop = pop_top(tseen)
    result["popularity"] = {"warm": {"recall@10": recall_at_k(ptop, d["test_target"], 10),
                                     "ndcg@10": ndcg_at_k(ptop, d["test_target"], 10),
                                     "recall@20": recall_at_k(ptop, d["test_target"], 20),
                                     "ndcg@20": ndcg_at_k(ptop, d["test_target"], 20)}}
    cold = np.isin(d["test_target"], d["cold_items"])
    if cold.any():  # exported with held-out items
        result["popularity"]["cold_items_recall@10"] = recall_at_k(ptop[cold], d["test_target"][cold], 10)
        result["random_cold_items_recall@10"] = float(np.mean([10 / (len(d["feat_category"]) - 1 - len(set(s.tolist())))
                                                               for s, c in zip(tseen, cold) if c]))
    if len(d["cold_user_target"]):  # exported with held-out users
        cu = pop_top([np.zeros(0, np.int64)] * len(d["cold_user_target"]))
        result["popularity"]["cold_users_0_events"] = {"recall@10": recall_at_k(cu, d["cold_user_target"], 10)}
    result["variants"] = []
    for name in ([v for v in a.variants.split(",") if v] + a.variant):
        r = train_variant(d, name, a.seconds, device, a.batch_size, a.lr, a.max_epochs, a.patience, a.cpu_epochs)
        result["variants"].append(r)
        first = r.get(f"first_{a.cpu_epochs}_epochs")
        if first:
            print(f"{r['variant']}: best of the first {a.cpu_epochs} epochs (epoch {first['best_epoch']}): warm NDCG@10 "
                  f"{first['warm']['ndcg@10']:.4f} R@10 {first['warm']['recall@10']:.4f}", flush=True)
        print(f"{r['variant']}: {r['epochs']} epochs in {r['train_s']}s (best {r['best_epoch']}); warm NDCG@10 "
              f"{r['warm']['ndcg@10']:.4f} R@10 {r['warm']['recall@10']:.4f}; cold items R@10 {r['cold_items_recall@10']}; "
              f"cold users 0 events R@10 {r.get('cold_users_0_events', {}).get('recall@10')}", flush=True)
        with open(a.out, "w") as fh:
            json.dump(result, fh, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "variants"}, indent=1))
    return 0


def throughput(argv: list[str]) -> int:
    """Train-step throughput (sequences/s) of the product model on an exported dataset: the
    model and step of trainer.train_steps (AdamW, full-catalog cross-entropy on every position,
    gradient clipping), per batch size, fp32 and with bf16 autocast, all features and ids only."""
    import contextlib

    import torch

    from recsys_spark.model import AttentionRecommender, ModelConfig
    from recsys_spark.trainer import train_steps

    p = argparse.ArgumentParser()
    p.add_argument("npz")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-sizes", default="128,256,512")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--variant", action="append", default=[], help="label:key=value,... ModelConfig overrides")
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    d = dict(np.load(a.npz))
    feats = {k[5:]: torch.as_tensor(v) for k, v in d.items() if k.startswith("feat_")}
    stats = {k[5:]: torch.as_tensor(v) for k, v in d.items() if k.startswith("stat_")}
    rows = []
    for spec in (a.variant or ["all", "id_only"]):
        label, over = parse_variant(spec)
        mc = json.loads(bytes(d["model_config"]).decode())
        mc.update(over)
        for bs in map(int, a.batch_sizes.split(",")):
            for prec in a.precisions.split(","):
                torch.manual_seed(0)
                model = AttentionRecommender(ModelConfig(**mc), feats, stats).to(device)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
                it = _batches(d, bs)
                ctx = (torch.autocast(device_type=device, dtype=torch.bfloat16) if prec == "bf16"
                       else contextlib.nullcontext())
                with ctx:
                    train_steps(model, opt, it, 5, device)  # warm-up
                    if device == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.time()
                    loss = train_steps(model, opt, it, a.steps, device)
                    if device == "cuda":
                        torch.cuda.synchronize()
                wall = time.time() - t0
                row = {"variant": label, "batch_size": bs, "precision": prec, "steps": a.steps,
                       "seq_len": mc["max_len"], "n_items": mc["n_items"], "d_model": mc["d_model"],
                       "sequences_per_s": round(bs * a.steps / wall), "ms_per_step": round(1000 * wall / a.steps, 2),
                       "loss": round(loss, 4)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
              "rows": rows}
    with open(a.out, "w") as fh:
        json.dump(result, fh, indent=2)
    return 0


def plain_sasrec_step_rate(n_items: int, max_len: int, d_model: int, batch_size: int, device: str,
                           steps: int = 50, n_layers: int = 2, n_heads: int = 2) -> float:
    """Sequences/s of a plain-torch SASRec training step (item + position embeddings, causal
    Transformer encoder, full-catalog cross-entropy on every position, AdamW, bf16 autocast on a GPU)
    on random sequences: the yardstick the product's step is compared with."""
    import torch

    from recsys_spark import devices

    class SASRec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.items = torch.nn.Embedding(n_items, d_model, padding_idx=0)
            self.pos = torch.nn.Embedding(max_len, d_model)
            layer = torch.nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, 0.2, batch_first=True,
                                                     norm_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)

        def forward(self, seq):
            causal = torch.nn.Transformer.generate_square_subsequent_mask(seq.shape[1], device=seq.device)
            h = self.encoder(self.items(seq) + self.pos.weight[: seq.shape[1]], mask=causal, is_causal=True)
            return h @ self.items.weight.T

    torch.manual_seed(0)
    model = SASRec().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seq = torch.randint(1, n_items, (batch_size, max_len), device=device)
    tgt = torch.randint(1, n_items, (batch_size, max_len), device=device)

    def step():
        with devices.autocast(device):
            loss = torch.nn.functional.cross_entropy(model(seq).float().reshape(-1, n_items), tgt.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for _ in range(5):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch_size * steps / (time.time() - t0)


def ranks(argv: list[str]) -> int:
    """The product's rank function under torchrun (train.launcher torch_distributor), batches from
    the exported arrays (trainer.ArrayShards): sequences/s per rank after the first (warm-up) epoch,
    against plain_sasrec_step_rate on the same device; validation NDCG@10 per epoch."""
    import os

    import torch

    from recsys_spark.config import TrainConfig
    from recsys_spark.model import ModelConfig
    from recsys_spark.trainer import ArrayShards, TrainJob, worker

    p = argparse.ArgumentParser()
    p.add_argument("npz")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--models", default=None, help="checkpoint folder (default: next to --out)")
    a = p.parse_args(argv)
    with np.load(a.npz) as npz:
        d = {k: npz[k] for k in npz.files if not k.startswith(("test_", "cold_"))}
    mc = json.loads(bytes(d["model_config"]).decode())
    mc["d_model"] = a.d_model
    valid = None
    if "valid_target" in d:
        valid = {"target": d["valid_target"], "seen": _unragged(d["valid_seen"], d["valid_seen_off"]),
                 "profile_cat": d["valid_profile_cat"], "profile_num": d["valid_profile_num"]}
    job = TrainJob(
        batches=ArrayShards(a.npz), model_config=ModelConfig(**mc),
        item_features={k[5:]: v for k, v in d.items() if k.startswith("feat_")},
        stats={k[5:]: v for k, v in d.items() if k.startswith("stat_")},
        train_config=TrainConfig(launcher="torch_distributor", epochs=a.epochs, batch_size=a.batch_size,
                                 d_model=a.d_model, resume="off", progress_every_s=0, threads_per_rank=4),
        full_config={}, data_versions={"npz": os.path.basename(a.npz)}, batch_size=a.batch_size,
        steps_per_epoch=a.steps_per_epoch,
        checkpoint_dir=a.models or os.path.join(os.path.dirname(os.path.abspath(a.out)), "models"),
        run_id=f"gpu-ranks-{int(time.time())}", valid=valid)
    result = worker(job)
    if result["rank"] != 0:
        return 0
    timed = result["history"][1:] or result["history"]
    per_rank = a.batch_size * a.steps_per_epoch * len(timed) / sum(h["seconds"] for h in timed)
    device = result["device"]
    plain = plain_sasrec_step_rate(mc["n_items"], mc["max_len"], a.d_model, a.batch_size, device)
    out = {"device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
           "torch": torch.__version__, "ranks": result["ranks"], "batch_size_per_rank": a.batch_size,
           "d_model": a.d_model, "n_items": mc["n_items"], "max_len": mc["max_len"],
           "sequences_per_s_per_rank": round(per_rank), "plain_sasrec_sequences_per_s": round(plain),
           "ratio_to_plain": round(per_rank / plain, 3), "history": result["history"],
           "ranks_identical": len(set(result["checksums"])) == 1}
    print(json.dumps({k: v for k, v in out.items() if k != "history"}), flush=True)
    with open(a.out, "w") as fh:
        json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    cmd, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    commands = {"export": export, "run": run, "throughput": throughput, "ranks": ranks}
    if cmd not in commands:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(commands[cmd](rest))
