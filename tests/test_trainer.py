"""The rank loop: Petastorm over pinned Delta versions, Horovod on local Spark (2 ranks, Gloo),
early stopping and the schedules."""
import glob
import os
import sys

import cloudpickle
import numpy as np
import pytest

from recsys_spark import tables
from recsys_spark.config import TrainConfig
from recsys_spark.model import ModelConfig
from recsys_spark.trainer import TrainJob, shard_batches, worker

# Horovod ships rank functions with cloudpickle; this module is not importable on the ranks, so its
# functions (shard_ids) travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

L = 4


def _train_df(spark, users, files):
    rows = []
    for u in users:
        seq = [(u % 7) + 1, (u % 5) + 2, (u % 3) + 3, (u % 11) + 1, (u % 13) + 1]
        rows.append((u, 0, seq[:L], seq[1:], [1, 1, 1], [0.5, 0.1]))
    df = spark.createDataFrame(rows, "user_idx long, window int, input array<int>, target array<int>, "
                                     "profile_cat array<int>, profile_num array<float>")
    return df.repartition(files, "user_idx").sortWithinPartitions("user_idx")


def shard_ids(files, seed=0):
    """Horovod rank function: this rank's shard read once, as (user_idx, window) keys."""
    import horovod.torch as hvd

    hvd.init()
    ids = []
    for b in shard_batches(files, hvd.rank(), hvd.size(), batch_size=1 << 30, seed=seed, num_epochs=1,
                           columns=["user_idx", "window"]):
        ids.extend(zip(b["user_idx"].tolist(), b["window"].tolist()))
    rank = hvd.rank()
    hvd.shutdown()
    return {"rank": rank, "ids": ids}


def _read_all(files):
    keys = []
    for b in shard_batches(files, 0, 1, batch_size=1 << 30, seed=0, num_epochs=1, columns=["user_idx", "window"]):
        keys += list(zip(b["user_idx"].tolist(), b["window"].tolist()))
    return keys


def test_petastorm_reads_exactly_the_pinned_delta_version(spark, tmp_path):
    loc = str(tmp_path / "train")
    tables.overwrite(_train_df(spark, range(0, 100), 4), loc)
    v0 = tables.version(spark, loc)
    tables.overwrite(_train_df(spark, range(1000, 1060), 3), loc)
    v1 = tables.version(spark, loc)
    on_disk = glob.glob(os.path.join(loc, "*.parquet"))
    files_v1 = tables.active_files(spark, loc, v1)
    # The old version's files are still in the directory: a raw scan would read them.
    assert len(on_disk) > len(files_v1)
    keys = _read_all(files_v1)
    assert sorted(keys) == [(u, 0) for u in range(1000, 1060)]
    # Pinning the old version still reads the old rows, and only those.
    assert sorted(_read_all(tables.active_files(spark, loc, v0))) == [(u, 0) for u in range(100)]


@pytest.mark.slow
def test_horovod_ranks_read_disjoint_shards_covering_the_table(spark, tmp_path):
    import horovod.spark

    loc = str(tmp_path / "train")
    tables.overwrite(_train_df(spark, range(200), 6), loc)
    files = tables.active_files(spark, loc, tables.version(spark, loc))
    results = horovod.spark.run(shard_ids, args=(files,), num_proc=2, use_gloo=True, verbose=0)
    assert sorted(r["rank"] for r in results) == [0, 1]
    a, b = (set(r["ids"]) for r in results)
    assert a and b and not (a & b)
    assert sorted(a | b) == [(u, 0) for u in range(200)]


def test_early_stopping_waits_for_patience_and_min_steps():
    from recsys_spark.trainer import patience_spent

    assert not patience_spent(bad_evals=4, patience=5, steps_done=10_000)
    assert patience_spent(bad_evals=5, patience=5, steps_done=10_000)
    # A small dataset: 4 steps an epoch, 9 epochs = 36 steps, below min_steps 1000: keep training.
    assert not patience_spent(bad_evals=5, patience=5, steps_done=36, min_steps=1000)
    assert patience_spent(bad_evals=5, patience=5, steps_done=1000, min_steps=1000)


def test_budget_aware_linear_schedule():
    from recsys_spark.trainer import linear_lr, planned_epochs

    # No budget: the configured epochs. With one: the epochs that end by the first one past it.
    assert planned_epochs(200, 0, 3, 300.0) == 200
    assert planned_epochs(200, 1800, 1, 100.0) == 18
    assert planned_epochs(200, 1800, 4, 480.0) == 15  # slower epochs than the first one suggested
    assert planned_epochs(10, 1800, 1, 100.0) == 10  # never more than train.epochs
    assert planned_epochs(200, 100, 5, 400.0) == 6  # past the budget: at least one more is planned
    assert linear_lr(1.0, 0, 100) == 1.0 and linear_lr(1.0, 50, 100) == 0.5
    assert linear_lr(1.0, 100, 100) == linear_lr(1.0, 500, 100) == 0.01  # floor, never zero


def _job(files, checkpoint_dir, run_id, **train):
    return TrainJob(
        files=files,
        model_config=ModelConfig(n_items=16, max_len=L, d_model=16, n_heads=2, n_layers=1, dropout=0.1,
                                 n_categories=1, attr_cardinalities=[2, 2, 2], n_profile_num=2,
                                 use_profile=True, use_content=True),
        item_features={"category": np.zeros(16, dtype=np.int64), "has_id": np.ones(16, dtype=bool)}, stats={},
        train_config=TrainConfig(**{"epochs": 3, "batch_size": 32, "lr": 0.01, "weight_decay": 0.0, "seed": 3,
                                    "threads_per_rank": 1, **train}),
        full_config={}, data_versions={"train": 0}, steps_per_epoch=5,
        checkpoint_dir=checkpoint_dir, run_id=run_id,
    )


@pytest.mark.slow
def test_horovod_averages_gradients_so_ranks_end_identical(spark, tmp_path):
    import horovod.spark
    import torch

    from recsys_spark.checkpoints import load as load_checkpoint

    loc = str(tmp_path / "train")
    tables.overwrite(_train_df(spark, range(300), 4), loc)
    files = tables.active_files(spark, loc, tables.version(spark, loc))
    # The budget-aware schedule: rank 0 re-plans after every epoch and broadcasts the plan, so both
    # ranks must still apply the same learning rate at every step.
    job = _job(files, str(tmp_path / "models"), "attn-test", lr_schedule="linear", time_budget_s=3600)
    results = horovod.spark.run(worker, args=(job,), num_proc=2, use_gloo=True, verbose=0)
    by_rank = {r["rank"]: r for r in results}
    assert set(by_rank) == {0, 1}
    assert by_rank[0]["checksum"] == pytest.approx(by_rank[1]["checksum"], rel=1e-9, abs=1e-9)
    losses = [h["loss"] for h in by_rank[0]["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    lrs = [h["lr"] for h in by_rank[0]["history"]]
    peak = 0.01 * 2 ** 0.5
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(peak * 1 / 15, rel=1e-4)
    # Rank 0 wrote a self-describing checkpoint that rebuilds the model on its own.
    model, ckpt = load_checkpoint(str(tmp_path / "models" / "attn-test"))
    assert ckpt["data_versions"] == {"train": 0} and ckpt["history"] == by_rank[0]["history"]
    total = float(sum(p.detach().double().sum() for p in model.parameters()))
    assert total == pytest.approx(by_rank[0]["checksum"], rel=1e-9)
    scores, _ = model(torch.tensor([[0, 1, 2, 3]]))
    assert scores.shape == (1, 16)


@pytest.mark.slow
def test_same_seed_same_weights(spark, tmp_path):
    """Seeded training over the same pinned files is repeatable (Petastorm order, init, Gloo sums)."""
    import horovod.spark

    loc = str(tmp_path / "train")
    tables.overwrite(_train_df(spark, range(200), 4), loc)
    files = tables.active_files(spark, loc, tables.version(spark, loc))
    sums = []
    for run in ("a", "b"):
        res = horovod.spark.run(worker, args=(_job(files, str(tmp_path / "models"), f"attn-{run}"),),
                                num_proc=2, use_gloo=True, verbose=0)
        sums.append([r["checksum"] for r in sorted(res, key=lambda r: r["rank"])])
    assert sums[0] == sums[1]


def test_epoch_progress_is_throttled(capsys, monkeypatch):
    # Long epochs report where they are, but at most once per interval (no log flooding on a cluster).
    from recsys_spark import trainer

    assert trainer.throttled_progress("x", 0) is None
    clock = iter([0.0] + [float(t) for t in range(1, 200)])  # one second per step
    monkeypatch.setattr(trainer.time, "time", lambda: next(clock))
    report = trainer.throttled_progress("[train r] epoch 1/3", 30)
    for step in range(1, 101):
        report(step, 100, 5.0)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0] == "[train r] epoch 1/3: 30/100 steps (30%), running loss 5.0000"
