"""The rank loop: Petastorm over pinned Delta versions, both launchers on local Spark (2 ranks,
Gloo: Horovod, and TorchDistributor with DistributedDataParallel), resume after a lost rank,
early stopping and the schedules."""
import dataclasses
import glob
import logging
import os
import sys

import cloudpickle
import numpy as np
import pytest
from pyspark import cloudpickle as spark_cloudpickle

from benchmarks import faults
from recsys_spark import checkpoints, schema, tables
from recsys_spark import train as train_mod
from recsys_spark.config import TrainConfig
from recsys_spark.model import ModelConfig
from recsys_spark.train import launch
from recsys_spark.trainer import PetastormShards, TrainJob, shard_batches, worker

# Both launchers ship rank functions with cloudpickle (Horovod the package, TorchDistributor pyspark's
# copy); this module and the fault injector are not importable on the ranks, so they travel by value.
for _pickler in (cloudpickle, spark_cloudpickle):
    _pickler.register_pickle_by_value(sys.modules[__name__])
    _pickler.register_pickle_by_value(faults)
LAUNCHERS = ["horovod", "torch_distributor"]

L = 4


def _train_df(spark, users, files):
    rows = []
    for u in users:
        seq = [(u % 7) + 1, (u % 5) + 2, (u % 3) + 3, (u % 11) + 1, (u % 13) + 1]
        rows.append((u, 0, seq[:L], seq[1:], [1, 1, 1], [0.5, 0.1]))
    df = spark.createDataFrame(rows, "user_idx long, window int, input array<int>, target array<int>, "
                                     "profile_cat array<int>, profile_num array<float>")
    return df.repartition(files, "user_idx").sortWithinPartitions("user_idx")


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


@pytest.fixture(scope="module")
def train_files(spark, tmp_path_factory):
    """The active files of a small training table (300 users, 4 files)."""
    loc = str(tmp_path_factory.mktemp("train") / "train")
    tables.overwrite(_train_df(spark, range(300), 4), loc)
    return tables.active_files(spark, loc, tables.version(spark, loc))


def _validation_case():
    """A seeded small model and 37 validation users (an odd count: the ranks get unequal shares)."""
    import torch

    from recsys_spark.model import AttentionRecommender

    torch.manual_seed(0)
    model = AttentionRecommender(ModelConfig(n_items=60, max_len=10, d_model=16, n_heads=2, n_layers=1))
    rng = np.random.default_rng(0)
    n = 37
    valid = {"target": rng.integers(1, 60, n), "seen": [rng.integers(1, 60, rng.integers(1, 12)) for _ in range(n)],
             "profile_cat": np.zeros((n, 1), dtype=np.int64), "profile_num": np.zeros((n, 0), dtype=np.float32)}
    return model, valid


def what_each_rank_sees(files, launcher):
    """Rank function: every rank's shard read once, as (user_idx, window) keys, and the validation
    users' figures after the ranks shared the users out, both gathered by rank."""
    from recsys_spark import ranks as ranks_mod
    from recsys_spark.trainer import sharded_validation_ndcgs

    ranks = ranks_mod.connect(launcher)
    ids = []
    for b in shard_batches(files, ranks.rank, ranks.size, batch_size=1 << 30, seed=0, num_epochs=1,
                           columns=["user_idx", "window"]):
        ids.extend(zip(b["user_idx"].tolist(), b["window"].tolist()))
    model, valid = _validation_case()
    ndcgs = sharded_validation_ndcgs(model, valid, ranks)
    seen = {"rank": ranks.rank, "ids_by_rank": ranks.gather(ids), "ndcgs_by_rank": ranks.gather(ndcgs.tolist())}
    ranks.close()
    return seen


@pytest.fixture(scope="module", params=LAUNCHERS)
def rank_views(request, spark, train_files):
    """What rank 0 gathered from one launch of 2 ranks under each launcher (a launch costs 5-6 s
    whatever its ranks do: benchmarks/launch_overhead.py)."""
    return launch(request.param, 2, what_each_rank_sees, train_files, request.param)


@pytest.mark.slow
def test_ranks_read_disjoint_shards_covering_the_table(rank_views):
    a, b = (set(map(tuple, ids)) for ids in rank_views["ids_by_rank"])
    assert a and b and not (a & b)
    assert sorted(a | b) == [(u, 0) for u in range(300)]


@pytest.mark.slow
def test_ranks_share_the_validation_users_and_each_gets_every_users_figure_in_order(rank_views):
    from recsys_spark.trainer import validation_ndcgs

    model, valid = _validation_case()
    alone = validation_ndcgs(model, valid)
    assert 0 < alone.mean() < 1  # some users are found, some are not: the order matters
    for ndcgs in rank_views["ndcgs_by_rank"]:
        np.testing.assert_allclose(ndcgs, alone, rtol=0, atol=1e-12)


def joined_ranks(launcher, _argument):
    """Rank function: the rank numbers of the process group, as rank 0 gathers them."""
    from recsys_spark import ranks as ranks_mod

    ranks = ranks_mod.connect(launcher)
    numbers, rank = ranks.gather(ranks.rank), ranks.rank
    ranks.close()
    return {"rank": rank, "ranks": numbers}


class FailsToLoadOnTheFirstLaunch:
    """A rank function argument that the rank processes of the first launch cannot load, as when
    torchrun fails before the function starts. Decided when the driver pickles the launch, which it
    does once per attempt."""

    def __init__(self):
        self.launches = 0

    def __reduce__(self):
        self.launches += 1
        return (_loaded_in_a_rank, (self.launches == 1,))


class _LoadedArgument:
    def __init__(self, fail):
        self.fail = fail

    def __reduce__(self):
        return (_loaded_in_a_rank, (self.fail,))


def _loaded_in_a_rank(fail):
    # The Spark task's Python loads the argument too, before it starts torchrun: only torchrun's
    # rank processes (LOCAL_RANK set) fail.
    if fail and "LOCAL_RANK" in os.environ:
        raise RuntimeError("injected: this rank process cannot start")
    return _LoadedArgument(fail)


@pytest.mark.slow
def test_a_torch_distributor_launch_that_failed_before_the_ranks_started_is_started_again(spark, caplog):
    with caplog.at_level(logging.WARNING, logger="recsys_spark.train"):
        result = launch("torch_distributor", 2, joined_ranks, "torch_distributor", FailsToLoadOnTheFirstLaunch())
    assert result["ranks"] == [0, 1]
    (retry,) = [r.getMessage() for r in caplog.records if "starting it again" in r.getMessage()]
    # The warning says what the ranks printed: here the injected error, in practice the port torchrun lost.
    assert "(attempt 1 of 3)" in retry and "injected: this rank process cannot start" in retry


_REUSE_PROBE = """
import resource, sys
import torch
from recsys_spark.trainer import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
for step in range(4):  # a 200 MB tensor allocated, every page touched, freed: as a step's logits
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(50_000_000).sum()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_a_horovod_task_keeps_its_command_alive_three_seconds_from_its_start_not_from_its_end():
    """scripts/build_horovod.sh patches Horovod's Spark task, which started its 3-second minimum
    command lifetime when the command ended: every launch waited 3 s more after its ranks returned."""
    import threading

    from horovod.spark.task.task_service import SparkTaskService

    task = SparkTaskService(0, b"k" * 32, None, minimum_command_lifetime_s=3)
    try:
        task._run_command("sleep 1", dict(os.environ), threading.Event())
        assert task._minimum_command_lifetime.remaining() <= 2.0  # the clock ran during the 1-s command
    finally:
        task.shutdown()


def test_a_cpu_rank_reuses_freed_memory_instead_of_faulting_in_fresh_pages():
    """A step-sized allocation after a few steps: fresh pages every time by default (about 49,000
    page faults for 200 MB), the pages of earlier steps when the rank keeps freed memory."""
    import subprocess

    def last_step_faults(mode):
        out = subprocess.run([sys.executable, "-c", _REUSE_PROBE, mode], capture_output=True, text=True, check=True)
        kept, n = out.stdout.split()
        return kept, int(n)

    assert last_step_faults("default")[1] > 40_000
    kept, n = last_step_faults("keep")
    assert kept == "True" and n < 1_000


_RETURN_PROBE = """
import torch
from recsys_spark.trainer import keep_freed_memory, returning_freed_memory
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
keep_freed_memory()
big = torch.ones(50_000_000)  # 200 MB, every page touched: a step's logits
after = torch.ones(1_000)  # allocated above it, so the heap cannot shrink from its top
del big
kept = resident_mb()
batches = returning_freed_memory((b for b in ["b0", "b1", "b2", "b3", "b4"]), 4)
first = next(batches)
print(kept - resident_mb(), first, ",".join(batches))
"""


def test_length_bucketed_cpu_ranks_hand_freed_heap_pages_back_every_few_batches():
    """With train.keep_freed_memory, freed blocks stay resident; batches of a new shape every step
    (train.length_buckets) cannot reuse them all, so the worker hands them back every few batches
    (here: before the first and the fifth), batches passing through unchanged."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _RETURN_PROBE], capture_output=True, text=True, check=True)
    returned_mb, first, rest = out.stdout.split()
    assert int(returned_mb) > 150  # the freed 200 MB below a live block went back to the kernel
    assert (first, rest) == ("b0", "b1,b2,b3,b4")


def _evaluated(stopper, ndcgs, steps_per_epoch, halfwidth=0.008) -> list[tuple[bool, int]]:
    """Feed a validation curve to stopper: (stop?, lr cuts so far) after each evaluation."""
    import torch

    model = torch.nn.Linear(2, 1)
    return [(stopper.update(model, ndcg, epoch, steps_per_epoch * epoch, halfwidth), stopper.lr_cuts)
            for epoch, ndcg in enumerate(ndcgs, start=1)]


def test_early_stopping_sits_out_a_flat_start_until_validation_rises_above_the_first_evaluation():
    from recsys_spark.trainer import EarlyStopping

    # ml-latest-small without side files: 17 steps an epoch, validation flat for 5 epochs inside
    # the first evaluation's interval (0.020 +- 0.008), then rising, then 5 evaluations without a gain.
    curve = [0.020, 0.018, 0.017, 0.019, 0.016, 0.017, 0.035, 0.050, 0.049, 0.048, 0.047, 0.046, 0.045]
    decisions = _evaluated(EarlyStopping(patience=5, min_steps=300, plateau_evals=2), curve, steps_per_epoch=17)
    stops = [stop for stop, _ in decisions]
    assert stops == [False] * 12 + [True]  # 5 flat evaluations did not end it; 5 after the rise did
    assert [cuts for _, cuts in decisions] == [0] * 9 + [1, 1, 2, 2]  # no cut in the flat start either
    # The same curve where the rise never comes: min_steps ends the start (epoch 18 = 306 steps).
    flat = _evaluated(EarlyStopping(patience=5, min_steps=300), [0.020] + [0.019] * 20, steps_per_epoch=17)
    assert [stop for stop, _ in flat].index(True) == 17


def test_early_stopping_waits_for_patience_once_validation_has_risen():
    from recsys_spark.trainer import EarlyStopping

    # A rise at epoch 2 starts the count at once, long before min_steps.
    decisions = _evaluated(EarlyStopping(patience=3, min_steps=10_000), [0.03, 0.06, 0.07, 0.06, 0.06, 0.05],
                           steps_per_epoch=17)
    assert [stop for stop, _ in decisions] == [False] * 5 + [True]
    # A gain inside the first evaluation's interval is no rise: 4 steps an epoch, stopped after 36
    # steps below popularity was the defect; here the start holds until min_steps.
    held = _evaluated(EarlyStopping(patience=5, min_steps=1000), [0.020, 0.025, 0.024, 0.023, 0.022, 0.021, 0.020],
                      steps_per_epoch=4)
    assert not any(stop for stop, _ in held)


def test_relative_patience_ends_a_run_that_peaked_early_sooner_and_leaves_a_late_peak_its_full_patience():
    from recsys_spark.trainer import EarlyStopping

    def stop_epoch(curve, **kw):
        stopper = EarlyStopping(patience=5, min_steps=10_000, plateau_evals=2, **kw)
        return [stop for stop, _ in _evaluated(stopper, curve, steps_per_epoch=17)].index(True) + 1, stopper

    # ml-latest-small's curve (peak at epoch 6): half of 6 evaluations is 3 without a gain.
    early = [0.026, 0.047, 0.071, 0.077, 0.075, 0.082, 0.0816, 0.079, 0.073, 0.075, 0.076]
    assert stop_epoch(early, relative_patience=0.5, min_patience=3)[0] == 9
    assert stop_epoch(early)[0] == 11  # fixed patience
    # Never below the floor: a peak at epoch 2 still gets 3 evaluations, not 1.
    assert stop_epoch([0.02, 0.06, 0.05, 0.05, 0.05, 0.05, 0.05], relative_patience=0.5, min_patience=3)[0] == 5
    # A peak at epoch 12 keeps all 5 (half of 12 is more), so a gain 5 evaluations later still counts.
    late = [0.02 + 0.005 * e for e in range(12)] + [0.07, 0.07, 0.07, 0.07, 0.076, 0.07, 0.07, 0.07, 0.07, 0.07]
    epoch, stopper = stop_epoch(late, relative_patience=0.5, min_patience=3)
    assert (epoch, stopper.best_epoch) == (22, 17)
    # The settings reach the run's stopper (conf/bench.yaml's patience 5, relative 0.5, rate halved).
    from recsys_spark.config import TrainConfig

    configured = EarlyStopping.of(TrainConfig(patience=5, relative_patience=0.5, lr_plateau_factor=0.5, min_steps=10_000))
    assert [stop for stop, _ in _evaluated(configured, early, steps_per_epoch=17)].index(True) + 1 == 9
    # A resumed run goes on with the same patience.
    resumed = EarlyStopping(patience=5, min_steps=10_000, plateau_evals=2, relative_patience=0.5, min_patience=3)
    resumed.restore(stop_epoch(early, relative_patience=0.5, min_patience=3)[1].state())
    assert resumed.current_patience() == 3


def test_the_learning_rate_is_cut_on_every_plateau_of_the_given_length_after_the_start():
    from recsys_spark.trainer import EarlyStopping

    # A validation every 20 steps; no gain at epochs 2-3 (in the start: no cut), a gain above the
    # first evaluation's interval at 4, then none.
    stopper = EarlyStopping(patience=5, min_steps=100, plateau_evals=2)
    decisions = _evaluated(stopper, [0.10, 0.09, 0.08, 0.12, 0.11, 0.11, 0.10, 0.10], steps_per_epoch=20)
    assert [cuts for _, cuts in decisions] == [0, 0, 0, 0, 0, 1, 1, 2]
    off = EarlyStopping(patience=5, min_steps=0)
    _evaluated(off, [0.1, 0.09, 0.08, 0.07], steps_per_epoch=1)
    assert off.lr_cuts == 0
    restored = EarlyStopping(patience=5, min_steps=100, plateau_evals=2)
    restored.restore(stopper.state())
    assert (restored.lr_cuts, restored.risen, restored.start_bound) == (2, True, stopper.start_bound)


def test_length_buckets_regroup_the_drawn_rows_by_length_into_batches_of_equal_targets_in_a_seeded_order():
    from recsys_spark.trainer import length_bucketed

    def drawn():  # the same stream on every call: batches of 8 left-padded windows of width 10
        rng = np.random.default_rng(0)
        while True:
            lengths = rng.integers(1, 11, 8)
            windows = (np.arange(10) >= 10 - lengths[:, None]).astype(np.int64) * 7
            yield {"input": windows, "target": windows, "user_idx": rng.integers(0, 10**6, 8)}

    def take(stream, n):
        return [next(stream) for _ in range(n)]

    plain = take(drawn(), 8)
    bucketed = take(length_bucketed(drawn(), 4, seed=1), 8)
    targets = lambda b: (b["target"] > 0).sum(1)  # noqa: E731
    for g in (0, 4):  # every pool of 4 drawn batches: the same rows, cut again into 4 batches
        pool, cut = plain[g: g + 4], bucketed[g: g + 4]
        assert sorted(np.concatenate([b["user_idx"] for b in cut])) == sorted(np.concatenate([b["user_idx"] for b in pool]))
        # ... of windows of like length: no two batches' lengths interleave ...
        spans = sorted((targets(b).min(), targets(b).max()) for b in cut)
        assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))
        # ... holding a quarter of the pool's targets each, to within one window.
        share = sum(targets(b).sum() for b in pool) / 4
        assert all(abs(targets(b).sum() - share) <= 10 for b in cut)
        assert len({len(b["input"]) for b in cut}) > 1  # short windows come many to a batch
    # The order of a pool's batches comes from the seed: the same seed repeats it, another need not.
    again = take(length_bucketed(drawn(), 4, seed=1), 8)
    assert all(np.array_equal(a["user_idx"], b["user_idx"]) for a, b in zip(bucketed, again))
    orders = {tuple(targets(b).max() for b in take(length_bucketed(drawn(), 4, seed=seed), 4)) for seed in range(8)}
    assert len(orders) > 1


def test_the_kept_epoch_is_reported_with_its_interval_and_the_epochs_the_sample_cannot_tell_from_it():
    import numpy as np

    from recsys_spark.trainer import interval_halfwidth, selection

    values = np.array([0.0, 1.0] * 50)  # mean 0.5, sample std 0.5025
    assert interval_halfwidth(values) == pytest.approx(1.96 * 0.50252 / 10, rel=1e-4)
    assert interval_halfwidth(np.array([0.3])) is None
    history = [{"epoch": 1, "valid_ndcg@10": 0.20, "valid_ndcg@10_halfwidth": 0.01},
               {"epoch": 2, "valid_ndcg@10": 0.28, "valid_ndcg@10_halfwidth": 0.01},
               {"epoch": 3, "loss": 1.0},  # not evaluated
               {"epoch": 4, "valid_ndcg@10": 0.30, "valid_ndcg@10_halfwidth": 0.025},
               {"epoch": 5, "valid_ndcg@10": 0.31, "valid_ndcg@10_halfwidth": 0.02}]
    assert selection(history, 4, 2000) == {"valid_users": 2000, "epoch": 4, "valid_ndcg@10": 0.30, "halfwidth": 0.025,
                                           "indistinguishable_epochs": [2, 4, 5]}
    assert selection(history, 3, 2000) == {}


def test_the_paired_comparison_separates_epochs_that_the_unpaired_intervals_cannot():
    """Users differ far more from each other than an epoch from the next: compared on the same
    users, a small but consistent gain is told apart; a change that is noise is not."""
    import numpy as np

    from recsys_spark.trainer import interval_halfwidth, selection

    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 1.0, 400)  # wide spread between users
    per_user = {1: base, 2: base + 0.02, 3: base + rng.normal(0.0, 0.05, 400) + 0.022}
    history = [{"epoch": e, "valid_ndcg@10": float(v.mean()), "valid_ndcg@10_halfwidth": interval_halfwidth(v)}
               for e, v in per_user.items()]
    kept = max(history, key=lambda h: h["valid_ndcg@10"])["epoch"]
    assert kept == 3
    chosen = selection(history, kept, 400, per_user)
    assert chosen["indistinguishable_epochs"] == [1, 2, 3]  # unpaired: the users' spread hides everything
    assert chosen["paired_indistinguishable_epochs"] == [2, 3]  # epoch 1 is 0.02 worse for every user
    assert chosen["paired"][1]["difference"] == pytest.approx(-(per_user[3] - base).mean())
    assert chosen["paired"][1]["halfwidth"] < 0.01 < chosen["halfwidth"]
    assert "paired" not in selection(history, kept, 400)


def test_the_weight_average_follows_each_step_and_is_only_lent_to_the_model_inside_its_block():
    import torch

    from recsys_spark.trainer import WeightAverage

    model = torch.nn.Linear(3, 1)
    average = WeightAverage(model, horizon_steps=4)  # decay 0.75, shorter over the first steps
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 7):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float(step))
        average.update()
        decay = min(0.75, (1 + step) / (10 + step))
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
    own = [p.detach().clone() for p in model.parameters()]
    with average.applied():
        for p, e in zip(model.parameters(), expected):
            assert torch.allclose(p, e)
    for p, o in zip(model.parameters(), own):
        assert torch.equal(p, o)  # its own weights again, exactly
    # A saved and restored average goes on as the original does.
    copy = WeightAverage(model, horizon_steps=4)
    copy.restore(average.state())
    average.update()
    copy.update()
    average.keep()
    for p, c in zip(model.parameters(), copy.average):
        assert torch.equal(p, c)


def test_the_final_pass_window_ends_at_each_validation_item():
    from recsys_spark.trainer import final_pass_windows

    valid = {"target": np.array([6, 9, 4]), "seen": [np.array([3, 4, 5]), np.array([7]), np.array([], dtype=np.int64)],
             "profile_cat": np.array([[1], [2], [3]]), "profile_num": np.array([[0.1], [0.2], [0.3]], dtype=np.float32)}
    w = final_pass_windows(valid, max_len=4)
    # The newest window one step on: the validation item is the last target; no history, no window.
    assert w["input"].tolist() == [[0, 3, 4, 5], [0, 0, 0, 7]]
    assert w["target"].tolist() == [[0, 4, 5, 6], [0, 0, 0, 9]]
    assert w["profile_cat"].tolist() == [[1], [2]] and w["profile_num"].shape == (2, 1)
    short = final_pass_windows(valid, max_len=2)  # the newest max_len steps
    assert short["input"].tolist() == [[4, 5], [0, 7]] and short["target"].tolist() == [[5, 6], [0, 9]]
    new_only = final_pass_windows(valid, max_len=4, targets="new")  # the validation item alone
    assert new_only["input"].tolist() == w["input"].tolist()
    assert new_only["target"].tolist() == [[0, 0, 0, 6], [0, 0, 0, 9]]


def _final_pass_case(tmp_path, seed: int, final_pass_epochs: int):
    """(job, fresh model, rng) for the final pass: 64 validation users whose validation item is the
    item after their last one, a step no training window shows."""
    import torch

    from recsys_spark.model import AttentionRecommender

    rng = np.random.default_rng(seed)
    seen = [rng.integers(1, 16, size=3) for _ in range(64)]
    job = _job([], str(tmp_path), "attn-final", final_pass_epochs=final_pass_epochs)
    job.valid = {"target": np.array([s[-1] % 15 + 1 for s in seen]), "seen": seen,
                 "profile_cat": np.ones((64, 3), dtype=np.int64), "profile_num": np.zeros((64, 2), dtype=np.float32)}
    torch.manual_seed(seed)
    model = AttentionRecommender(job.model_config, {k: torch.as_tensor(v) for k, v in job.item_features.items()}, {})
    return job, model, rng


def test_the_final_pass_teaches_the_model_the_validation_items_it_held_out(tmp_path):
    import torch

    from recsys_spark.trainer import final_pass, validate

    job, model, _ = _final_pass_case(tmp_path, seed=0, final_pass_epochs=0)
    valid = job.valid
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    # As a launcher does, hook each parameter's gradient to average it across ranks, which are done
    # by the final pass.
    hooked = [p.expand_as(p).grad_fn.next_functions[0][0] for p in model.parameters()]
    for accumulator in hooked:
        accumulator.register_hook(lambda *grads: pytest.fail("the final pass reached the other ranks"))
    before = validate(model, valid)
    assert final_pass(job, model, optimizer) is None and validate(model, valid) == before  # off: untouched
    job.train_config = dataclasses.replace(job.train_config, final_pass_epochs=30)
    record = final_pass(job, model, optimizer)
    assert record["users"] == 64 and record["steps"] == 30 * 2 and record["batch_size"] == 32
    assert record["lr"] == 0.01 and not optimizer.state  # the run's rate; the run's optimizer left as it was
    after = validate(model, valid)
    assert after > before + 0.3, (before, after)


def test_a_blend_with_als_keeps_its_share_of_the_score_spread_through_the_final_pass(tmp_path):
    import torch

    from recsys_spark.trainer import final_pass, served_vectors_on_cpu

    job, model, rng = _final_pass_case(tmp_path, seed=1, final_pass_epochs=30)
    valid = job.valid
    model.attach_collaborative(rng.normal(size=(16, 4)).astype(np.float32), 0.1, 1.0, (0.75, 2.0))

    def spreads():  # (attention part, ALS part) of the served scores' spread
        users, items = served_vectors_on_cpu(model, valid)
        d = model.cfg.d_model
        return [float((users[:, part] @ items[1:, part].T).std(dim=1).mean())
                for part in (slice(0, d), slice(d, None))]

    attention, als = spreads()
    record = final_pass(job, model, torch.optim.AdamW(model.parameters(), lr=0.01))
    attention_after, als_after = spreads()
    # The pass moved the attention model's spread; ALS's weight followed, so its share is unchanged.
    assert abs(attention_after / attention - 1) > 0.05, (attention, attention_after)
    assert record["attention_spread_change"] == pytest.approx(attention_after / attention, rel=0.05)
    assert als_after / attention_after == pytest.approx(als / attention, rel=0.05)


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
    tc = TrainConfig(**{"epochs": 3, "batch_size": 32, "lr": 0.01, "weight_decay": 0.0, "seed": 3,
                        "threads_per_rank": 1, **train})
    return TrainJob(
        batches=PetastormShards(files),
        model_config=ModelConfig(n_items=16, max_len=L, d_model=16, n_heads=2, n_layers=1, dropout=0.1,
                                 n_categories=1, attr_cardinalities=[2, 2, 2], n_profile_num=2,
                                 use_profile=True, use_content=True),
        item_features={"category": np.zeros(16, dtype=np.int64), "has_id": np.ones(16, dtype=bool)}, stats={},
        train_config=tc, full_config={}, data_versions={"train": 0}, batch_size=tc.batch_size, steps_per_epoch=5,
        checkpoint_dir=checkpoint_dir, run_id=run_id,
    )


# The budget-aware schedule: rank 0 re-plans after every epoch and broadcasts the plan, so both ranks
# must still apply the same learning rate at every step.
SCHEDULE = {"lr_schedule": "linear", "time_budget_s": 3600}


@pytest.fixture(scope="module")
def uninterrupted(train_files, tmp_path_factory):
    """launcher -> rank 0's result of a seeded, uninterrupted 3-epoch run (run once per launcher)."""
    models, runs = str(tmp_path_factory.mktemp("models")), {}

    def run(launcher):
        if launcher not in runs:
            runs[launcher] = launch(launcher, 2, worker, _job(train_files, models, f"attn-{launcher}",
                                                              launcher=launcher, **SCHEDULE))
            runs[launcher]["checkpoint"] = os.path.join(models, f"attn-{launcher}")
        return runs[launcher]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_ranks_end_identical_and_write_a_self_describing_checkpoint(spark, uninterrupted, launcher):
    import torch

    first = uninterrupted(launcher)
    # Gradients are averaged across ranks, so both ranks hold the same weights after every step.
    assert first["ranks"] == 2 and first["checksums"][0] == pytest.approx(first["checksums"][1], rel=1e-9, abs=1e-9)
    losses = [h["loss"] for h in first["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    lrs = [h["lr"] for h in first["history"]]
    peak = 0.01 * 2 ** 0.5
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(peak * 1 / 15, rel=1e-4)
    # Rank 0 wrote a checkpoint that rebuilds the model on its own, and removed its resume state.
    model, ckpt = checkpoints.load(first["checkpoint"])
    assert ckpt["data_versions"] == {"train": 0} and ckpt["history"] == first["history"]
    assert float(sum(p.detach().double().sum() for p in model.parameters())) == pytest.approx(first["checksum"], rel=1e-9)
    assert not os.path.exists(first["checkpoint"] + checkpoints.RESUME_MARK)
    scores, _ = model(torch.tensor([[0, 1, 2, 3]]))
    assert scores.shape == (1, 16)


@pytest.mark.slow
# Under Horovod the same loss and resume is the averaged-weights test's below.
@pytest.mark.parametrize("launcher", ["torch_distributor"])
def test_a_run_that_lost_a_rank_resumes_to_the_uninterrupted_weights(spark, train_files, tmp_path, uninterrupted,
                                                                     launcher):
    models = str(tmp_path / "models")
    job = _job(train_files, models, "attn-lost", launcher=launcher, **SCHEDULE)
    job.batches = faults.LosesRank(PetastormShards(train_files), rank=1, after=7)  # 5 steps an epoch: mid epoch 2
    with pytest.raises(Exception) as lost:
        launch(launcher, 2, worker, job)
    if launcher == "torch_distributor":  # the rank had started: not started again, its exit code reported
        assert "attempt" not in str(lost.value) and "exitcode: 3" in str(lost.value), str(lost.value)
    assert not os.path.exists(os.path.join(models, "attn-lost", checkpoints.MANIFEST_FILE))
    assert checkpoints.find_resumable(models, job.fingerprint(2)) == ("attn-lost", 1)
    # The rerun (a new job, as the next nightly builds it) continues after epoch 1 and ends where an
    # uninterrupted run ends: same weights on both ranks, same losses. (So seeded training over the
    # same pinned files also repeats exactly: Petastorm order, initial weights, Gloo sums.)
    resumed = launch(launcher, 2, worker, _job(train_files, models, "attn-lost", launcher=launcher, **SCHEDULE))
    full = uninterrupted(launcher)
    assert resumed["checksums"] == full["checksums"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    assert checkpoints.find_resumable(models, job.fingerprint(2)) is None
    assert checkpoints.latest(models).endswith("attn-lost")


@pytest.mark.slow
def test_a_run_with_averaged_weights_resumes_its_average_and_ends_with_it(spark, train_files, tmp_path, uninterrupted):
    models = str(tmp_path / "models")
    settings = dict(launcher="horovod", weight_average_epochs=1, **SCHEDULE)
    full = launch("horovod", 2, worker, _job(train_files, models, "attn-avg-full", **settings))
    job = _job(train_files, models, "attn-avg", **settings)
    job.batches = faults.LosesRank(PetastormShards(train_files), rank=1, after=7)  # mid epoch 2
    with pytest.raises(Exception):
        launch("horovod", 2, worker, job)
    resumed = launch("horovod", 2, worker, _job(train_files, models, "attn-avg", **settings))
    # Same steps as the run without the average, but both ranks end on the average, the same
    # whether or not the run was resumed; rank 0's checkpoint (no validation here) holds it too.
    assert [h["loss"] for h in full["history"]] == [h["loss"] for h in uninterrupted("horovod")["history"]]
    assert full["checksums"][0] == pytest.approx(full["checksums"][1], rel=1e-9, abs=1e-9)
    assert full["checksum"] != pytest.approx(uninterrupted("horovod")["checksum"], rel=1e-6)
    assert resumed["checksums"] == full["checksums"]
    model, _ = checkpoints.load(os.path.join(models, "attn-avg"))
    assert float(sum(p.detach().double().sum() for p in model.parameters())) == pytest.approx(full["checksum"], rel=1e-9)


@pytest.mark.slow
def test_every_rank_trains_on_at_the_cut_rate_after_a_plateau_and_rank_0_ends_with_the_final_pass(
        spark, train_files, tmp_path):
    # Each validation user's history holds every item but the target, and ranking removes the history:
    # the target is first at every epoch (NDCG@10 1), so each evaluation after the first has no gain.
    n = 9
    valid = {"target": np.arange(1, n + 1), "seen": [np.setdiff1d(np.arange(1, 16), [t]) for t in range(1, n + 1)],
             "profile_cat": np.ones((n, 3), dtype=np.int64), "profile_num": np.zeros((n, 2), dtype=np.float32)}
    models = str(tmp_path / "models")
    job = _job(train_files, models, "attn-plateau", launcher="horovod", patience=10,
               lr_plateau_factor=0.5, lr_plateau_evals=1, final_pass_epochs=1)
    job.valid = valid
    result = launch("horovod", 2, worker, job)
    peak = 0.01 * 2 ** 0.5
    assert [h["valid_ndcg@10"] for h in result["history"]] == [1.0, 1.0, 1.0]
    # Cut after epoch 2's evaluation (the first without a gain): epoch 3 trains at half the rate
    # (the history records lr to 7 places).
    assert [h["lr"] for h in result["history"]] == pytest.approx([peak, peak, peak / 2], rel=1e-4)
    assert result["checksums"][0] == pytest.approx(result["checksums"][1], rel=1e-9, abs=1e-9)
    # After selection rank 0 trained on the validation items at the run's last rate: the checkpoint
    # records the pass and holds weights past the ranks' last ones.
    model, manifest = checkpoints.load(os.path.join(models, "attn-plateau"))
    passed = manifest["final_pass"]
    assert passed["users"] == n and passed["steps"] == 1 and passed["lr"] == pytest.approx(peak / 2, rel=1e-4)
    assert float(sum(p.detach().double().sum() for p in model.parameters())) != pytest.approx(result["checksum"],
                                                                                            rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("launcher, barrier_tasks", [("horovod", False), ("torch_distributor", False),
                                                    ("torch_distributor", True)],
                         ids=["horovod", "torch_distributor", "torch_distributor-barrier-tasks"])
def test_a_checkpoint_rank_0_cannot_write_fails_the_launch_with_the_reason(spark, train_files, tmp_path, monkeypatch,
                                                                          launcher, barrier_tasks):
    # The other rank has finished and left the process group when rank 0 writes the checkpoint: the
    # launch must still end, failed, and say why (not wait on the finished rank). With barrier tasks,
    # as on a cluster, the ranks' lines reach the driver through pyspark's log server instead of
    # straight from the one torchrun of local mode.
    if barrier_tasks:
        monkeypatch.setattr(train_mod, "torch_distributor_local_mode", lambda use_gpu: False)
    blocked = tmp_path / "models-is-a-file"
    blocked.write_text("")
    job = _job(train_files, str(blocked / "models"), "attn-blocked", launcher=launcher, resume="off")
    with pytest.raises(Exception) as failed:
        launch(launcher, 2, worker, job)
    assert "NotADirectoryError" in str(failed.value) and "models-is-a-file" in str(failed.value), str(failed.value)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_an_epoch_longer_than_the_time_budget_is_cut_at_the_same_step_on_every_rank(spark, train_files, tmp_path,
                                                                                    launcher):
    from recsys_spark.trainer import BUDGET_CHECK_STEPS

    models = str(tmp_path / "models")
    job = _job(train_files, models, "attn-budget", launcher=launcher, time_budget_s=0.001)
    job.steps_per_epoch = 1000  # an epoch far longer than the budget
    result = launch(launcher, 2, worker, job)
    (epoch,) = result["history"]  # cut, then the run stops: the budget is spent
    assert epoch["steps"] == BUDGET_CHECK_STEPS  # rank 0's first look at the clock
    # Both ranks stopped at that step (had one gone on, its collectives would hang or the weights differ).
    assert result["checksums"][0] == pytest.approx(result["checksums"][1], rel=1e-9, abs=1e-9)
    assert checkpoints.load(os.path.join(models, "attn-budget"))[1]["history"] == result["history"]


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


def test_more_ranks_than_task_slots_stops_before_launching_naming_the_key(spark, tmp_path):
    from conftest import make_config
    from recsys_spark import train
    from recsys_spark.config import ConfigError

    cfg = make_config(tmp_path, train={"num_proc": 3, "launcher": "torch_distributor"})  # local[2]: 2 slots
    with pytest.raises(ConfigError, match=r"train.num_proc is 3 but the cluster runs 2 task\(s\) at once"):
        train.run(spark, cfg)


def test_small_data_is_trained_in_smaller_batches_with_the_steps_an_epoch_asked_for(spark, shop_copy):
    import dataclasses

    from recsys_spark import train

    tc = dataclasses.replace(shop_copy.train, min_steps_per_epoch=40, resume="off")
    job = train.prepare(spark, dataclasses.replace(shop_copy, train=tc))
    n_rows = tables.read(spark, tables.location(shop_copy.tables_root, schema.TRAIN_EXAMPLES)).count()
    assert n_rows // (tc.num_proc * tc.batch_size) < 40  # the shop's full batches make too few steps
    assert job.batch_size < tc.batch_size and job.steps_per_epoch >= 40
    first = next(job.batches.open(0, tc.num_proc, job.batch_size, tc.seed))
    assert len(first["input"]) == job.batch_size


def test_an_auto_final_pass_is_chosen_from_the_history_lengths_the_features_job_stored(spark, shop_copy):
    import dataclasses

    from recsys_spark import train
    from recsys_spark.config import ConfigError

    tc = dataclasses.replace(shop_copy.train, resume="off", final_pass_epochs="auto")
    job = train.prepare(spark, dataclasses.replace(shop_copy, train=tc))
    assert job.train_config.final_pass_epochs == 0  # the shop's histories are longer: an 80th percentile of 50
    assert job.full_config["train"]["final_pass_epochs"] == "auto"  # the manifest keeps the setting as written
    assert train.resolve_final_pass(tc, {"history_len_p80": [8.0]}).final_pass_epochs == 1  # Beauty's histories
    assert train.resolve_final_pass(tc, {"history_len_p80": [251.0]}).final_pass_epochs == 0  # ml-1m's
    fixed = dataclasses.replace(tc, final_pass_epochs=2)
    assert train.resolve_final_pass(fixed, {}) is fixed
    with pytest.raises(ConfigError, match="train.final_pass_epochs is 'auto' but gold/feature_stats has no "
                                          "history_len_p80.*rerun the features job"):
        train.resolve_final_pass(tc, {})


def test_a_catalog_too_large_for_a_full_softmax_step_is_trained_against_sampled_negatives_in_the_configured_layers(
        spark, shop_copy):
    import dataclasses

    from recsys_spark import train

    shop = train.prepare(spark, dataclasses.replace(shop_copy, train=dataclasses.replace(shop_copy.train, resume="off")))
    m = shop.model_config
    assert shop_copy.train.loss_negatives == "auto" and m.loss_negatives == 0  # the shop's step fits: full catalog
    assert m.block == "transformer"
    # A bound a tenth of the shop's full step: a tenth of the catalog per step, sampled.
    step = shop.batch_size * m.max_len * m.n_items
    tc = dataclasses.replace(shop_copy.train, resume="off", max_step_logits=step // 10, block="gated")
    m = train.prepare(spark, dataclasses.replace(shop_copy, train=tc)).model_config
    assert m.loss_negatives == step // 10 // (shop.batch_size * m.max_len)
    assert 0 < m.loss_negatives < m.n_items - 1
    assert m.block == "gated"  # the ranks build their encoder from this config


@pytest.mark.slow
def test_both_launchers_reach_the_same_validation_ndcg_on_the_shop(spark, shop, shop_copy):
    """The shop's nightly trained with Horovod; the same data and seed with TorchDistributor (DDP)
    differ only in the order of float sums when gradients are averaged, so the best validation
    NDCG@10 must agree within the sampling noise of ~600 validation users (about 0.01 per run)."""
    import dataclasses

    from recsys_spark import train

    horovod_cfg, _ = shop
    horovod = checkpoints.manifest(checkpoints.latest(horovod_cfg.models_dir))
    cfg = dataclasses.replace(shop_copy, train=dataclasses.replace(shop_copy.train, launcher="torch_distributor"))
    ddp = train.run(spark, cfg)
    best = {name: max(e["valid_ndcg@10"] for e in history)
            for name, history in (("horovod", horovod["history"]), ("ddp", ddp["history"]))}
    print(f"best validation NDCG@10: {best}")
    assert best["ddp"] > 0.05 and abs(best["ddp"] - best["horovod"]) <= 0.03, best
    # The kept epoch comes with its interval over the validation sample, in the manifest.
    chosen = horovod["selection"]
    kept = next(h for h in horovod["history"] if h["epoch"] == horovod["best_epoch"])
    assert chosen["epoch"] == horovod["best_epoch"] and chosen["valid_ndcg@10"] == kept["valid_ndcg@10"]
    assert 0 < chosen["halfwidth"] < 0.1 and chosen["valid_users"] > 100
    assert horovod["best_epoch"] in chosen["indistinguishable_epochs"]
    # ... and with every other evaluated epoch compared with it on the same users.
    evaluated = {h["epoch"] for h in horovod["history"] if "valid_ndcg@10" in h}
    assert {int(e) for e in chosen["paired"]} == evaluated - {horovod["best_epoch"]}
    assert all(p["halfwidth"] > 0 for p in chosen["paired"].values())
    assert horovod["best_epoch"] in chosen["paired_indistinguishable_epochs"]
    assert ddp["result"]["ranks"] == 2 and ddp["result"]["checksums"][0] == ddp["result"]["checksums"][1]
