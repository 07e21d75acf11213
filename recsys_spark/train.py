"""Training: a Horovod rank's loop over its Petastorm shard, and the Spark launcher.

The launcher pins the training table's Delta version, resolves that version's active parquet
files through Spark, and hands only plain picklable values (file URLs, config dicts, paths) to
`horovod.spark.run`. Each rank reads a disjoint shard of row groups with Petastorm's
`make_batch_reader(cur_shard=rank, shard_count=size)`, averages gradients with Horovod, and rank 0
writes a self-describing checkpoint.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Iterator, Optional

import numpy as np

TRAIN_COLUMNS = ["user_idx", "window", "input", "target", "profile_cat", "profile_num"]


@dataclass
class TrainJob:
    """Everything a rank needs, as plain values (it is pickled to the executors)."""
    files: list[str]
    model_config: dict
    item_features: dict  # recsys_spark.model.ITEM_FEATURES as numpy arrays
    stats: dict  # scaling statistics from gold/feature_stats
    train_config: dict
    full_config: dict
    data_versions: dict
    steps_per_epoch: int
    checkpoint_dir: str
    run_id: str
    # Validation sample for early stopping: input (V, L), target (V,), seen (list of arrays),
    # profile_cat (V, A), profile_num (V, P). None disables early stopping.
    valid: Optional[dict] = None


def _stack(column) -> np.ndarray:
    if isinstance(column, np.ndarray) and column.dtype != object:
        return column
    return np.stack([np.asarray(x) for x in column])


def shard_batches(files: list[str], rank: int, size: int, batch_size: int, seed: int,
                  num_epochs: Optional[int] = None, columns: Optional[list[str]] = None) -> Iterator[dict]:
    """Yield fixed-size dicts of numpy arrays from this rank's shard of the parquet files.

    The shard is every size-th row group (Petastorm's sharding), so shards of different ranks
    are disjoint and together cover the files. Rows are shuffled within a buffer with a seeded
    generator; num_epochs=None repeats the shard forever.
    """
    import warnings

    from petastorm import make_batch_reader

    # petastorm 0.12 uses pyarrow's legacy dataset API (the reason pyarrow is pinned < 15); its
    # deprecation warnings are known and would otherwise flood every rank's log.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
    rng = np.random.default_rng(seed + rank)
    buf: dict[str, list] = {}
    n_buf = 0
    # One reader per pass with its own seed: petastorm's own num_epochs=None repeats the row
    # groups in an order that differs from run to run, which would break reproducibility.
    passes = itertools.count() if num_epochs is None else range(num_epochs)
    for p in passes:
        with make_batch_reader(files, cur_shard=rank, shard_count=size, num_epochs=1,
                               shuffle_row_groups=True, seed=seed + p, reader_pool_type="dummy",
                               schema_fields=columns or TRAIN_COLUMNS) as reader:
            for batch in reader:
                d = batch._asdict()
                for name, col in d.items():
                    buf.setdefault(name, []).append(_stack(col))
                n_buf += len(next(iter(d.values())))
                if n_buf < batch_size * 4 and num_epochs is None:
                    continue
                merged = {k: np.concatenate(v) for k, v in buf.items()}
                perm = rng.permutation(n_buf)
                full = (n_buf // batch_size) * batch_size
                for lo in range(0, full, batch_size):
                    yield {k: v[perm[lo: lo + batch_size]] for k, v in merged.items()}
                rest = perm[full:]
                buf = {k: [v[rest]] for k, v in merged.items()}
                n_buf = len(rest)
    if n_buf:
        merged = {k: np.concatenate(v) for k, v in buf.items()}
        yield merged


def train_steps(model, optimizer, batches: Iterator[dict], steps: int, device: str = "cpu",
                progress=None, lr_at=None) -> float:
    """Run `steps` optimizer steps; return the mean loss. Works with any iterator of batches.
    progress(step, steps, mean_loss), if given, is called after every step (it throttles itself);
    lr_at(step), if given, is the learning rate for step 0..steps-1 of this call."""
    import torch

    model.train()
    total = 0.0
    for step in range(steps):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
        b = next(batches)
        seq = torch.as_tensor(b["input"], dtype=torch.long, device=device)
        tgt = torch.as_tensor(b["target"], dtype=torch.long, device=device)
        pc = torch.as_tensor(b["profile_cat"], dtype=torch.long, device=device) if model.use_profile else None
        pn = torch.as_tensor(b["profile_num"], dtype=torch.float32, device=device) if model.use_behaviour else None
        _, loss = model(seq, tgt, pc, pn)
        optimizer.zero_grad()
        loss.backward()
        if hasattr(optimizer, "synchronize"):
            # Horovod averages gradients asynchronously during backward: wait for the averages
            # before clipping, or a rank may clip its own half-reduced gradients (ranks diverge).
            optimizer.synchronize()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            with optimizer.skip_synchronize():
                optimizer.step()
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
        total += float(loss.detach())
        if progress is not None:
            progress(step + 1, steps, total / (step + 1))
    return total / max(1, steps)


def throttled_progress(label: str, every_s: float):
    """A train_steps progress callback printing at most one line per every_s seconds (none if 0)."""
    if every_s <= 0:
        return None
    last = [time.time()]

    def report(step: int, steps: int, loss: float) -> None:
        now = time.time()
        if now - last[0] >= every_s and step < steps:
            last[0] = now
            print(f"{label}: {step}/{steps} steps ({100 * step // steps}%), running loss {loss:.4f}", flush=True)
    return report


def patience_spent(bad_evals: int, patience: int, steps_done: int, min_steps: int = 0) -> bool:
    """Early stopping: `patience` evaluations in a row without a better validation NDCG, once at
    least `min_steps` optimizer steps have been taken."""
    return bad_evals >= patience and steps_done >= min_steps


def planned_epochs(epochs: int, budget_s: float, epochs_done: int, elapsed_s: float) -> int:
    """Epochs the run will train: `epochs`, or with a time budget the epochs that end by the first
    epoch ending past the budget, estimated from the mean epoch time so far (never fewer than done + 1)."""
    if not budget_s or epochs_done == 0:
        return epochs
    fit = math.ceil(budget_s / max(elapsed_s / epochs_done, 1e-9))
    return max(epochs_done + 1, min(epochs, fit))


def linear_lr(peak: float, step: int, total_steps: int, floor: float = 0.01) -> float:
    """Linear decay from peak at step 0 to 0 at total_steps; never below floor * peak, so a run that
    outlasts its estimate still learns."""
    return peak * max(floor, 1.0 - step / max(1, total_steps))


def worker(job: TrainJob) -> dict:
    """One Horovod rank. Returns per-epoch losses, timings and the rank's final weight checksum."""
    import horovod.torch as hvd
    import torch

    from recsys_spark.model import AttentionRecommender, ModelConfig

    hvd.init()
    tc = job.train_config
    torch.set_num_threads(int(tc["threads_per_rank"]))
    torch.manual_seed(int(tc["seed"]))
    np.random.seed(int(tc["seed"]))
    mcfg = ModelConfig(**job.model_config)
    model = AttentionRecommender(mcfg, {k: torch.as_tensor(v) for k, v in job.item_features.items()}, job.stats)
    peak_lr = float(tc["lr"]) * hvd.size() ** 0.5
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=float(tc["weight_decay"]))
    # Horovod cannot broadcast bool tensors; the bool buffer (has_id) comes from the job on every rank.
    hvd.broadcast_parameters({k: v for k, v in model.state_dict().items() if v.dtype != torch.bool}, root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    batches = shard_batches(job.files, hvd.rank(), hvd.size(), int(tc["batch_size"]), int(tc["seed"]))
    history = []
    best = {"ndcg@10": -1.0, "epoch": 0, "state": None}
    bad_evals = 0
    started = time.time()
    budget = float(tc.get("time_budget_s") or 0.0)
    schedule = tc.get("lr_schedule", "constant")
    plan = int(tc["epochs"])  # with a budget, re-estimated by rank 0 after every epoch and broadcast
    for epoch in range(int(tc["epochs"])):
        t0 = time.time()
        progress = (throttled_progress(f"[train {job.run_id}] epoch {epoch + 1}/{tc['epochs']}",
                                       float(tc.get("progress_every_s", 0) or 0)) if hvd.rank() == 0 else None)
        lr_at = None
        if schedule == "linear":
            done_steps, total_steps = epoch * job.steps_per_epoch, plan * job.steps_per_epoch
            lr_at = lambda step, d=done_steps, t=total_steps: linear_lr(peak_lr, d + step, t)  # noqa: E731
        loss = train_steps(model, opt, batches, job.steps_per_epoch, progress=progress, lr_at=lr_at)
        loss = float(hvd.allreduce(torch.tensor(loss), name="epoch_loss"))
        entry = {"epoch": epoch + 1, "loss": loss, "seconds": round(time.time() - t0, 3),
                 "lr": round(float(opt.param_groups[0]["lr"]), 7)}  # of the epoch's last step
        stop = 0
        if job.valid is not None and (epoch + 1) % int(tc["eval_every"]) == 0:
            if hvd.rank() == 0:
                entry["valid_ndcg@10"] = validate(model, job.valid)
                if entry["valid_ndcg@10"] > best["ndcg@10"]:
                    best = {"ndcg@10": entry["valid_ndcg@10"], "epoch": epoch + 1,
                            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
                    bad_evals = 0
                else:
                    bad_evals += 1
                stop = int(patience_spent(bad_evals, int(tc["patience"]), (epoch + 1) * job.steps_per_epoch,
                                          int(tc.get("min_steps", 0) or 0)))
        if budget and hvd.rank() == 0:
            if time.time() - started > budget:
                stop = 2
            plan = planned_epochs(int(tc["epochs"]), budget, epoch + 1, time.time() - started)
        # One broadcast carries rank 0's decisions, so every rank follows the same schedule.
        stop, plan = (int(v) for v in hvd.broadcast(torch.tensor([stop, plan]), root_rank=0, name=f"stop_{epoch}"))

        history.append(entry)
        if hvd.rank() == 0:
            extra = f", valid NDCG@10 {entry['valid_ndcg@10']:.4f}" if "valid_ndcg@10" in entry else ""
            print(f"[train {job.run_id}] epoch {epoch + 1}/{tc['epochs']} loss {loss:.4f}{extra} "
                  f"({entry['seconds']:.1f}s, {job.steps_per_epoch} steps x {hvd.size()} ranks)", flush=True)
        if stop:
            if hvd.rank() == 0:
                why = (f"no validation gain in {tc['patience']} evaluations" if stop == 1
                       else f"time budget of {budget:.0f}s used")
                print(f"[train {job.run_id}] early stop: {why}; keeping epoch {best['epoch'] or epoch + 1}", flush=True)
            break
    batches.close()  # closes the Petastorm reader
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    if hvd.rank() == 0:
        if best["state"] is not None:
            model.load_state_dict(best["state"])
        save_checkpoint(job, model, history, best_epoch=best["epoch"] or len(history))
    rank = hvd.rank()
    hvd.shutdown()
    return {"rank": rank, "history": history, "checksum": checksum}


def shard_ids(files: list[str], seed: int = 0) -> dict:
    """Horovod rank function: read this rank's shard once and return the (user_idx, window) keys.

    A diagnostic for checking that shards are disjoint and cover the table.
    """
    import horovod.torch as hvd

    hvd.init()
    ids = []
    for b in shard_batches(files, hvd.rank(), hvd.size(), batch_size=1 << 30, seed=seed, num_epochs=1,
                           columns=["user_idx", "window"]):
        ids.extend(zip(b["user_idx"].tolist(), b["window"].tolist()))
    rank = hvd.rank()
    hvd.shutdown()
    return {"rank": rank, "ids": ids}


def validate(model, valid: dict, k: int = 10, batch: int = 512) -> float:
    """NDCG@k of the validation targets, full ranking with each user's history removed."""
    import torch

    from recsys_spark.metrics import ndcg_at_k
    from recsys_spark.topk import topk_excluding

    model.eval()
    tops = []
    with torch.no_grad():
        items = model.item_vectors()
        for lo in range(0, len(valid["target"]), batch):
            sl = slice(lo, lo + batch)
            pc = torch.as_tensor(valid["profile_cat"][sl]) if model.use_profile else None
            pn = torch.as_tensor(valid["profile_num"][sl]) if model.use_behaviour else None
            users = model.user_vectors(torch.as_tensor(valid["input"][sl]), pc, pn, items)
            tops.append(topk_excluding(users, items, valid["seen"][sl], k)[0])
    model.train()
    return ndcg_at_k(np.concatenate(tops), valid["target"], k)


def save_checkpoint(job: TrainJob, model, history: list, best_epoch: Optional[int] = None) -> str:
    """Write <checkpoint_dir>/<run_id>/{model.pt,manifest.json} atomically (rename of a temp dir)."""
    import torch

    final = os.path.join(job.checkpoint_dir, job.run_id)
    tmp = final + ".tmp-" + uuid.uuid4().hex[:6]
    os.makedirs(tmp)
    manifest = {
        "run_id": job.run_id,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "model_config": job.model_config,
        "train_config": job.train_config,
        "data_versions": job.data_versions,
        "history": history,
        "best_epoch": best_epoch or len(history),
    }
    torch.save({"state_dict": model.state_dict(), **manifest, "config": job.full_config},
               os.path.join(tmp, "model.pt"))
    with open(os.path.join(tmp, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=2)
    os.rename(tmp, final)
    return final


def load_checkpoint(path: str):
    """Rebuild (model in eval mode, checkpoint dict) from a checkpoint directory alone."""
    import torch

    from recsys_spark.model import AttentionRecommender, ModelConfig

    ckpt = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=False)
    mcfg = ModelConfig(**ckpt["model_config"])
    sd = ckpt["state_dict"]
    model = AttentionRecommender(mcfg, {k[5:]: v for k, v in sd.items() if k.startswith("feat_")},
                                 {k[5:]: v for k, v in sd.items() if k.startswith("stat_")})
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def latest_checkpoint(models_dir: str, run_id: str = "") -> str:
    """The checkpoint directory of run_id, or the newest complete one under models_dir."""
    if run_id:
        path = os.path.join(models_dir, run_id)
        if not os.path.isfile(os.path.join(path, "manifest.json")):
            raise FileNotFoundError(f"no checkpoint {run_id} under {models_dir} (score.model_run_id)")
        return path
    runs = []
    if os.path.isdir(models_dir):
        for name in os.listdir(models_dir):
            m = os.path.join(models_dir, name, "manifest.json")
            if os.path.isfile(m):
                with open(m) as fh:
                    runs.append((json.load(fh)["created_at"], name))
    if not runs:
        raise FileNotFoundError(f"no trained model under {models_dir}; run the 'train' stage first")
    return os.path.join(models_dir, max(runs)[1])


# ------------------------------------------------------------------------------------------------
# Driver side


def prepare(spark, cfg) -> TrainJob:
    """Pin table versions, resolve active files, and size the model from the data."""
    from pyspark.sql import functions as F

    from recsys_spark import schema, tables

    root = cfg.tables_dir
    train_path = tables.path(root, schema.TRAIN_EXAMPLES)
    tables.require(spark, train_path, "features")
    versions = {name: tables.version(spark, tables.path(root, name))
                for name in (schema.TRAIN_EXAMPLES, schema.ITEM_CONTENT, schema.ITEM_INDEX, schema.USER_PROFILE,
                             schema.SEQUENCES, schema.EVENTS, schema.FEATURE_STATS)
                if tables.exists(spark, tables.path(root, name))}
    files = tables.active_files(spark, train_path, versions[schema.TRAIN_EXAMPLES])
    tc = cfg.train
    if len(files) < tc.num_proc:
        raise ValueError(f"the training table has {len(files)} file(s) but train.num_proc is {tc.num_proc}: "
                         f"every rank needs its own shard. Raise features.train_files (now "
                         f"{cfg.features.train_files}) to at least {tc.num_proc} and re-run features.")
    train_df = tables.read(spark, train_path, versions[schema.TRAIN_EXAMPLES])
    n_rows = train_df.count()
    if n_rows == 0:
        raise ValueError(f"the training table {train_path} is empty: no user has 2+ items in the training split")
    from recsys_spark.config import ConfigError, auto_dropout
    from recsys_spark.features import item_feature_arrays, read_stats

    content = tables.read(spark, tables.path(root, schema.ITEM_CONTENT), versions[schema.ITEM_CONTENT])
    feats = item_feature_arrays(content)
    n_items = len(feats["category"])
    # An item has a trained id embedding only if it occurs in the training table (held-out and
    # never-touched items are represented by their content alone).
    trained = (train_df.select(F.explode(F.concat("input", "target")).alias("i")).where("i > 0").distinct()
               .collect())
    feats["has_id"] = np.zeros(n_items, dtype=bool)
    feats["has_id"][[r.i for r in trained if r.i < n_items]] = True
    stats = read_stats(spark, tables.path(root, schema.FEATURE_STATS), versions.get(schema.FEATURE_STATS))
    prof = tables.read(spark, tables.path(root, schema.USER_PROFILE), versions[schema.USER_PROFILE])
    n_attr = prof.select(F.max(F.size("profile_cat"))).first()[0] or 0
    pstats = prof.select(*[F.max(F.col("profile_cat")[i]).alias(f"c{i}") for i in range(n_attr)],
                         F.max(F.size("profile_num")).alias("n_num")).first()
    max_len = train_df.select(F.size("input").alias("n")).first()["n"]  # chosen by features
    n_num = int(pstats["n_num"] or 0)
    dropout = tc.dropout
    if dropout == "auto":
        if not stats.get("history_len_p80"):
            raise ConfigError("train.dropout is 'auto' but gold/feature_stats has no history_len_p80 (features were "
                             "built by an older version): rerun the features job, or set train.dropout to a number")
        dropout = auto_dropout(stats["history_len_p80"][0])
        print(f"train: dropout {dropout} from data (80th percentile of training history lengths "
              f"{stats['history_len_p80'][0]:.0f}; train.dropout: auto)", flush=True)
    model_config = {
        "n_items": n_items, "max_len": int(max_len), "d_model": tc.d_model,
        "n_heads": tc.n_heads, "n_layers": tc.n_layers, "dropout": float(dropout),
        "n_categories": int(feats["category"].max()) + 1, "n_brands": int(feats["brand"].max()) + 1,
        "n_tags": int(feats["tags"].max()) + 1, "text_dim": len(stats.get("idf", [])),
        "n_item_num": int(feats["num"].shape[1]),
        "attr_cardinalities": [int(pstats[f"c{i}"] or 0) + 1 for i in range(n_attr)],
        "n_profile_num": n_num,
        "use_profile": tc.use_profile, "use_behaviour": tc.use_behaviour, "use_content": tc.use_content,
        "use_text": tc.use_text, "item_id_dropout": tc.item_id_dropout, "loss_negatives": tc.loss_negatives,
    }
    model_stats = {k: v for k, v in stats.items() if k in ("idf", "item_num_mean", "item_num_std")}
    if len(stats.get("profile_num_mean", [])) == n_num:
        model_stats.update({k: stats[k] for k in ("profile_num_mean", "profile_num_std")})
    valid = _validation_sample(spark, cfg, versions, int(max_len), model_config["n_profile_num"])
    run_id = "attn-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    return TrainJob(
        files=files, model_config=model_config, item_features=feats, stats=model_stats,
        train_config=asdict(tc), full_config=cfg.to_dict(), data_versions=versions,
        steps_per_epoch=max(1, math.ceil(n_rows / (tc.batch_size * tc.num_proc))),
        checkpoint_dir=cfg.models_dir, run_id=run_id, valid=valid,
    )


def _validation_sample(spark, cfg, versions: dict, max_len: int, n_num: int) -> Optional[dict]:
    """Up to train.valid_users users with a validation target, as numpy arrays (a fixed sample:
    the users with the smallest hash of their index)."""
    from pyspark.sql import functions as F

    from recsys_spark.evaluate import valid_users
    from recsys_spark.model import pad_left, pad_right

    n = cfg.train.valid_users
    if n <= 0:
        return None
    rows = (valid_users(spark, cfg, versions).orderBy(F.xxhash64("user_idx"), "user_idx").limit(n).collect())
    if not rows:
        return None
    return {
        "input": pad_left([r.input for r in rows], max_len),
        "target": np.array([r.target for r in rows], dtype=np.int64),
        "seen": [np.asarray(r.input, dtype=np.int64) for r in rows],
        "profile_cat": pad_right([r.profile_cat for r in rows], max([len(r.profile_cat or []) for r in rows] + [1])),
        "profile_num": np.array([r.profile_num if r.profile_num and len(r.profile_num) == n_num
                                 else [0.0] * n_num for r in rows], dtype=np.float32),
    }


def run(spark, cfg) -> dict:
    """Train with Horovod on Spark executors; return rank results and the checkpoint path."""
    import horovod.spark

    job = prepare(spark, cfg)
    os.makedirs(job.checkpoint_dir, exist_ok=True)
    print(f"train {job.run_id}: {len(job.files)} files of {cfg.tables_dir}/gold/train_examples at version "
          f"{job.data_versions['gold/train_examples']}, {cfg.train.num_proc} Horovod ranks, "
          f"{job.steps_per_epoch} steps/epoch", flush=True)
    t0 = time.time()
    results = horovod.spark.run(worker, args=(job,), num_proc=cfg.train.num_proc, use_gloo=True,
                                start_timeout=600, verbose=0)
    elapsed = time.time() - t0
    path = os.path.join(job.checkpoint_dir, job.run_id)
    history = next(r for r in results if r["rank"] == 0)["history"]
    print(f"train {job.run_id}: done in {elapsed:.1f}s ({len(history)} epochs), final loss "
          f"{history[-1]['loss']:.4f}; checkpoint {path}", flush=True)
    from recsys_spark.tracking import log_train

    mlflow_run = log_train(cfg, path)
    return {"run_id": job.run_id, "checkpoint": path, "results": results, "history": history, "seconds": elapsed,
            "mlflow_run_id": mlflow_run}
