"""The training loop of one rank: its shard of the training rows, the optimizer steps, validation,
early stopping, the per-epoch resume state and the checkpoint (rank 0). Pure torch and Petastorm:
never imports pyspark, so the same function runs under torchrun on a machine without Spark.

`worker` is the one rank function of both launchers (recsys_spark.train starts it on Spark
executors with Horovod or TorchDistributor; recsys_spark.ranks hides which). Each rank reads a
disjoint shard of the job's batch source: on Spark, row groups of the pinned training table's
files through Petastorm (`make_batch_reader(cur_shard=rank, shard_count=size)`); elsewhere, rows of
exported arrays. Gradients are averaged across ranks; rank 0 decides early stopping and the time
budget for every rank, saves the resume state after every epoch and writes the checkpoint.
"""
from __future__ import annotations

import copy
import ctypes
import itertools
import json
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import torch

from recsys_spark import calibration, checkpoints, devices
from recsys_spark.ranks import connect
from recsys_spark.metrics import mean_halfwidth, ndcg_per_user
from recsys_spark.collaborative import ALS_PARAMS, CollaborativeFactors
from recsys_spark.model import AttentionRecommender, pad_left
from recsys_spark.ranking import encode_users, padded_histories
from recsys_spark.topk import topk_excluding

if TYPE_CHECKING:  # the job carries them; this module needs no config code to run a rank
    from recsys_spark.config import TrainConfig
    from recsys_spark.model import ModelConfig

TRAIN_COLUMNS = ["user_idx", "window", "input", "target", "profile_cat", "profile_num"]


# Train settings that do not change what a run computes: a rerun that differs only in them resumes.
RESUME_NEUTRAL = ("resume", "progress_every_s", "retrain_every", "keep_freed_memory", "collaborative",
                  "final_pass_epochs")
# The collaborative shares of the served scores' spread that choose_blend tries (1: ALS alone).
BLEND_SHARES = (0.25, 0.5, 0.75, 1.0)
# With train.length_buckets and train.keep_freed_memory: a CPU rank hands its free heap pages back to
# the kernel every this many steps (trainer.returning_freed_memory).
FREED_MEMORY_RETURN_STEPS = 8


@dataclass
class PetastormShards:
    """Batches from the pinned training table's active parquet files, read with Petastorm: a rank's
    shard is every size-th row group (see shard_batches)."""
    files: list[str]

    def open(self, rank: int, size: int, batch_size: int, seed: int) -> Iterator[dict]:
        return shard_batches(self.files, rank, size, batch_size, seed)


@dataclass
class ArrayShards:
    """Batches from an .npz of training rows (`{prefix}input`, `{prefix}target`, `{prefix}profile_cat`,
    `{prefix}profile_num`, as `python -m benchmarks.gpu export` writes), for a machine without Spark:
    a rank's shard is rows rank, rank + size, ...; each pass over it is a fresh seeded shuffle."""
    path: str
    prefix: str = "train_"

    def open(self, rank: int, size: int, batch_size: int, seed: int) -> Iterator[dict]:
        with np.load(self.path) as npz:
            arrays = {c: npz[self.prefix + c] for c in ("input", "target", "profile_cat", "profile_num")}
        rows = np.arange(rank, len(arrays["input"]), size)
        if len(rows) < batch_size:
            raise ValueError(f"{self.path}: rank {rank} of {size} has {len(rows)} rows, fewer than a batch of {batch_size}")
        rng = np.random.default_rng(seed + rank)
        pending = np.zeros(0, dtype=np.int64)
        while True:
            pending = np.concatenate([pending, rng.permutation(rows)])
            while len(pending) >= batch_size:
                take, pending = pending[:batch_size], pending[batch_size:]
                yield {k: v[take] for k, v in arrays.items()}


@dataclass
class TrainJob:
    """Everything a rank needs (it is pickled to the executors)."""
    batches: PetastormShards | ArrayShards
    model_config: "ModelConfig"
    item_features: dict  # recsys_spark.model.ITEM_FEATURES as numpy arrays
    stats: dict  # scaling statistics from gold/feature_stats
    train_config: "TrainConfig"
    full_config: dict
    data_versions: dict
    batch_size: int  # windows per rank and step (config.epoch_batch_size)
    steps_per_epoch: int
    checkpoint_dir: str
    run_id: str
    # Validation sample for early stopping: target (V,), seen (V training histories, oldest first),
    # profile_cat (V, A), profile_num (V, P). None disables early stopping.
    valid: Optional[dict] = None
    # train.collaborative: ALS item factors of each evaluate.als_* grid point ({rank, regParam, alpha,
    # factors}), for choose_blend.
    collaborative: Optional[list] = None

    def fingerprint(self, ranks: int) -> dict:
        """What a run computes from (data, model, settings, ranks): a resume state saved under
        another fingerprint cannot continue this run."""
        tc = {k: v for k, v in asdict(self.train_config).items() if k not in RESUME_NEUTRAL}
        return json.loads(json.dumps({"data_versions": self.data_versions, "model_config": self.model_config.to_dict(),
                                      "train_config": tc, "ranks": ranks, "batch_size": self.batch_size,
                                      "steps_per_epoch": self.steps_per_epoch},
                                     sort_keys=True, default=str))


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


def length_bucketed(batches: Iterator[dict], group: int, seed: int) -> Iterator[dict]:
    """The rows of `batches`, every `group` batches pooled, ordered by history length (rows of equal
    length in the order drawn) and cut again into as many batches of about equal numbers of targets,
    which come in a seeded random order. A batch then holds windows of like length (many short ones
    or a few long ones), and the model trims it to its longest window (model.leading_padding): on
    skewed history lengths most of a drawn batch is padding. Cutting by targets, not by windows,
    keeps what a step's loss averages over as in the drawn batches, so every target weighs the same;
    equal numbers of windows would give a batch of short windows a whole step for a few targets."""
    rng = np.random.default_rng(seed)
    try:
        while True:
            pool = list(itertools.islice(batches, group))
            if not pool:
                return
            merged = {k: np.concatenate([b[k] for b in pool]) for k in pool[0]}
            targets = (merged["target"] > 0).sum(1)
            order = np.argsort(targets, kind="stable")
            n, parts, j = len(order), len(pool), np.arange(1, len(pool))
            cuts = np.searchsorted(np.cumsum(targets[order]), targets.sum() * j / parts, side="right")
            cuts = np.clip(np.maximum.accumulate(cuts - j), 0, n - parts) + j  # at least one window a batch
            bounds = np.concatenate([[0], cuts, [n]])
            for i in rng.permutation(parts):
                rows = order[bounds[i]: bounds[i + 1]]
                yield {k: v[rows] for k, v in merged.items()}
    finally:
        batches.close()


def train_steps(model, optimizer, batches: Iterator[dict], steps: int, device: str = "cpu",
                progress=None, lr_at=None, net=None, keep_going=None, average=None) -> float:
    """Run `steps` optimizer steps; return the mean loss. Works with any iterator of batches.
    progress(step, steps, mean_loss), if given, is called after every step (it throttles itself);
    lr_at(step), if given, is the learning rate for step 0..steps-1 of this call; net, if given, is
    the module to call (model wrapped by DistributedDataParallel); keep_going(steps_done), if given,
    is asked after every step before the last, and False ends the call there; average (a
    WeightAverage), if given, takes in the weights after every step. bf16 autocast on a GPU."""
    net = model if net is None else net
    model.train()
    total, done = 0.0, 0
    for step in range(steps):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
        b = next(batches)
        seq = torch.as_tensor(b["input"], dtype=torch.long, device=device)
        tgt = torch.as_tensor(b["target"], dtype=torch.long, device=device)
        pc = torch.as_tensor(b["profile_cat"], dtype=torch.long, device=device) if model.use_profile else None
        pn = torch.as_tensor(b["profile_num"], dtype=torch.float32, device=device) if model.use_behaviour else None
        with devices.autocast(device):
            _, loss = net(seq, tgt, pc, pn)
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
        if average is not None:
            average.update()
        total += float(loss.detach())
        done = step + 1
        if progress is not None:
            progress(done, steps, total / done)
        if keep_going is not None and done < steps and not keep_going(done):
            break
    return total / max(1, done)


class WeightAverage:
    """An exponential moving average of a model's weights over about `horizon_steps` optimizer steps
    (train.weight_average_epochs). Late in training the steps wander around a minimum more than they
    descend into it; their average sits nearer its middle than any one step's weights. Every rank
    keeps the same average, as every rank has the same weights."""

    def __init__(self, model, horizon_steps: float):
        self.decay = 1.0 - 1.0 / max(1.0, horizon_steps)
        self.params = list(model.parameters())
        self.average = [p.detach().clone() for p in self.params]
        self.steps = 0

    def update(self) -> None:
        self.steps += 1
        # A shorter memory over the first steps, whose weights are far from where training goes: about
        # the last ninth of the steps so far, until that reaches the horizon (after ~9 horizons).
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            for a, p in zip(self.average, self.params):
                a.lerp_(p.detach(), 1.0 - decay)

    @contextmanager
    def applied(self):
        """Inside the block the model holds the averaged weights; after it, its own again."""
        own = [p.detach().clone() for p in self.params]
        self.keep()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, o in zip(self.params, own):
                    p.copy_(o)

    def state(self) -> dict:
        return {"average": [a.cpu() for a in self.average], "steps": self.steps}

    def restore(self, state: dict) -> None:
        with torch.no_grad():
            for a, saved in zip(self.average, state["average"]):
                a.copy_(saved)
        self.steps = state["steps"]

    def keep(self) -> None:
        """The model holds the averaged weights from now on."""
        with torch.no_grad():
            for p, a in zip(self.params, self.average):
                p.copy_(a)


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


def validate(model, valid: dict, k: int = 10, batch: int = 512, device: str = "cpu") -> float:
    """NDCG@k of the validation targets, full ranking with each user's history removed."""
    return float(validation_ndcgs(model, valid, k, batch, device).mean())


def validation_ndcgs(model, valid: dict, k: int = 10, batch: int = 512, device: str = "cpu") -> np.ndarray:
    """Each validation user's NDCG@k (see validate)."""
    if not len(valid["target"]):
        return np.zeros(0)
    users, items = served_vectors(model, valid, batch, device)
    model.train()
    return ranked_ndcgs(users, items, valid, k, batch)


def sharded_validation_ndcgs(model, valid: dict, ranks, device: str = "cpu") -> np.ndarray:
    """validation_ndcgs with the users split across the ranks (user i on rank i % size), every
    user's figure gathered on every rank in the sample's order: all ranks wait for the decision
    anyway, so together they rank a sample `size` times as large in the same time."""
    part = validation_ndcgs(model, {key: rows[ranks.rank::ranks.size] for key, rows in valid.items()}, device=device)
    out = np.empty(len(valid["target"]))
    for rank, ndcgs in enumerate(ranks.gather(part)):
        out[rank::ranks.size] = ndcgs
    return out


def interval_halfwidth(values: np.ndarray) -> Optional[float]:
    """Half the width of the 95% normal interval of the mean of values (None for fewer than 2)."""
    return mean_halfwidth(float(np.std(values, ddof=1)), len(values)) if len(values) > 1 else None


def selection(history: list, best_epoch: int, n_users: int, per_user: Optional[dict] = None) -> dict:
    """What early stopping kept and how sure the validation sample can be of it: the kept epoch's
    NDCG@10 with its 95% interval over the sample's users, and the evaluated epochs whose NDCG@10
    lies inside that interval (the sample cannot tell them from the kept one). Empty without
    validation.

    per_user ({epoch: each validation user's NDCG@10}) adds the paired comparison: for every
    evaluated epoch, the mean difference to the kept epoch over the same users with its 95%
    interval (`paired`), and the epochs whose interval holds 0 (`paired_indistinguishable_epochs`).
    The users' own spread cancels out of a difference, so this separates epochs the unpaired
    intervals cannot."""
    evaluated = [h for h in history if h.get("valid_ndcg@10") is not None]
    kept = next((h for h in evaluated if h["epoch"] == best_epoch), None)
    if kept is None:
        return {}
    half = kept.get("valid_ndcg@10_halfwidth")
    out = {"valid_users": n_users, "epoch": best_epoch, "valid_ndcg@10": kept["valid_ndcg@10"], "halfwidth": half,
           "indistinguishable_epochs": [h["epoch"] for h in evaluated
                                        if half is not None and abs(h["valid_ndcg@10"] - kept["valid_ndcg@10"]) <= half]}
    if per_user and best_epoch in per_user:
        paired = {}
        for h in evaluated:
            if h["epoch"] in per_user and h["epoch"] != best_epoch:
                diff = np.asarray(per_user[h["epoch"]], dtype=np.float64) - np.asarray(per_user[best_epoch], dtype=np.float64)
                paired[h["epoch"]] = {"difference": float(diff.mean()), "halfwidth": interval_halfwidth(diff)}
        out["paired"] = paired
        out["paired_indistinguishable_epochs"] = sorted(
            [best_epoch] + [e for e, p in paired.items()
                            if p["halfwidth"] is not None and abs(p["difference"]) <= p["halfwidth"]])
    return out


class EarlyStopping:
    """Rank 0's record of the best validated weights and of evaluations without a gain; and, with
    plateau_evals > 0, how many times the learning rate has been cut on a plateau (lr_cuts: every
    plateau_evals evaluations in a row without a gain; rank 0 broadcasts it).

    Neither stops nor cuts during the run's start: a model that has learned little sits on a flat
    stretch of validation noise, which patience would mistake for convergence (ml-latest-small
    without side files: about 100 steps). The start ends at the first validation NDCG above the
    first evaluation's 95% interval, or after min_steps optimizer steps at the latest.

    With relative_patience > 0, a run that peaked early stops sooner: after
    ceil(relative_patience x the best evaluation's number) evaluations without a gain when that is
    fewer than patience, but never fewer than min_patience (TrainConfig.relative_patience says why)."""

    def __init__(self, patience: int, min_steps: int, plateau_evals: int = 0, relative_patience: float = 0.0,
                 min_patience: int = 1):
        self.patience, self.min_steps, self.plateau_evals = patience, min_steps, plateau_evals
        self.relative_patience, self.min_patience = relative_patience, min_patience
        self.best_ndcg, self.best_epoch, self.best_state, self.bad_evals = -1.0, 0, None, 0
        self.evals, self.best_eval = 0, 0  # evaluations so far; the best one's number (1-based)
        self.lr_cuts = 0
        self.start_bound, self.risen = None, False  # the first evaluation's upper bound; passed yet

    @classmethod
    def of(cls, tc: "TrainConfig") -> "EarlyStopping":
        """The run's early stopping as train settings ask (plateau cuts only where the rate is cut)."""
        return cls(tc.patience, tc.min_steps, tc.lr_plateau_evals if tc.lr_plateau_factor < 1 else 0,
                   tc.relative_patience, tc.lr_plateau_evals + 1)

    def current_patience(self) -> int:
        """Evaluations without a gain that end the run, given where the best one came."""
        if self.relative_patience <= 0 or not self.best_eval:
            return self.patience
        grown = max(self.min_patience, math.ceil(self.relative_patience * self.best_eval))
        return min(self.patience, grown)

    def update(self, model, ndcg: float, epoch: int, steps_done: int, halfwidth: Optional[float] = None) -> bool:
        """Record an evaluation (halfwidth: its 95% interval's); True when training should stop."""
        self.evals += 1
        if self.start_bound is None:
            self.start_bound = ndcg + (halfwidth or 0.0)
        elif ndcg > self.start_bound:
            self.risen = True
        past_start = self.risen or steps_done >= self.min_steps
        if ndcg > self.best_ndcg:
            self.best_ndcg, self.best_epoch, self.best_eval, self.bad_evals = ndcg, epoch, self.evals, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_evals += 1
            if self.plateau_evals and self.bad_evals % self.plateau_evals == 0 and past_start:
                self.lr_cuts += 1
        return self.bad_evals >= self.current_patience() and past_start

    def state(self) -> dict:
        return {"best_ndcg": self.best_ndcg, "best_epoch": self.best_epoch, "best_state": self.best_state,
                "bad_evals": self.bad_evals, "lr_cuts": self.lr_cuts, "start_bound": self.start_bound,
                "risen": self.risen, "evals": self.evals, "best_eval": self.best_eval}

    def restore(self, state: dict) -> None:
        self.best_ndcg, self.best_epoch = state["best_ndcg"], state["best_epoch"]
        self.best_state, self.bad_evals, self.lr_cuts = state["best_state"], state["bad_evals"], state["lr_cuts"]
        self.start_bound, self.risen = state.get("start_bound"), state.get("risen", False)  # absent: saved before the rule
        self.evals, self.best_eval = state.get("evals", 0), state.get("best_eval", 0)  # absent: fixed patience


def _glibc_function(name: str):
    """A function of glibc's allocator, or None where the C library is not glibc."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Have glibc serve every allocation from its heap and never hand freed memory back, so the
    next step reuses pages already touched (TrainConfig.keep_freed_memory says why). False where
    the C library is not glibc: nothing changes there."""
    mallopt = _glibc_function("mallopt")
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return mallopt is not None and bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))


def return_freed_memory() -> bool:
    """Have glibc hand the free pages of its heaps back to the kernel now (malloc_trim). False where
    the C library is not glibc."""
    malloc_trim = _glibc_function("malloc_trim")
    return malloc_trim is not None and bool(malloc_trim(0))


def returning_freed_memory(batches: Iterator[dict], every: int) -> Iterator[dict]:
    """batches, handing the rank's free heap pages back to the kernel before every `every`-th."""
    try:
        for i, batch in enumerate(batches):
            if i % every == 0:
                return_freed_memory()
            yield batch
    finally:
        batches.close()


def _rank_setup(job: TrainJob, size: int, device: str):
    """(model on the device, optimizer, peak lr): the seeded initial state, identical on every rank."""
    tc = job.train_config
    if tc.keep_freed_memory and device == "cpu":
        keep_freed_memory()
    torch.set_num_threads(tc.threads_per_rank)
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    model = AttentionRecommender(job.model_config, {k: torch.as_tensor(v) for k, v in job.item_features.items()},
                                 job.stats).to(device)
    peak_lr = tc.lr * size ** 0.5
    return model, torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=tc.weight_decay), peak_lr


@dataclass
class RunState:
    """Where a run is: epochs done, their history, the planned epochs, seconds trained, early stopping."""
    epoch: int
    plan: int
    stopper: EarlyStopping
    history: list = field(default_factory=list)
    elapsed_s: float = 0.0
    # Each evaluated epoch's per-user validation NDCG@10 (rank 0), for the paired comparison.
    valid_ndcgs: dict = field(default_factory=dict)


def _resume(job: TrainJob, ranks, model, state: RunState) -> Optional[dict]:
    """Load the run's resume state, if it has one, into the model, run state and this rank's RNG;
    returns it (the optimizer's part is loaded once the optimizer is wrapped)."""
    saved = checkpoints.load_resume(job.checkpoint_dir, job.run_id, job.fingerprint(ranks.size))
    if saved is None:
        return None
    model.load_state_dict(saved["model"])
    state.epoch, state.plan, state.history, state.elapsed_s = (saved["epoch"], saved["plan"], saved["history"],
                                                               saved["elapsed_s"])
    state.stopper.restore(saved["stopper"])
    state.valid_ndcgs = {int(e): v.numpy() for e, v in saved.get("valid_ndcgs", {}).items()}
    torch.set_rng_state(saved["rng"][ranks.rank]["cpu"])
    if "cuda" in saved["rng"][ranks.rank] and ranks.device != "cpu":
        torch.cuda.set_rng_state(saved["rng"][ranks.rank]["cuda"], ranks.device)
    if ranks.rank == 0:
        print(f"[train {job.run_id}] resuming after epoch {state.epoch} (resume state in {job.checkpoint_dir})",
              flush=True)
    return saved


def _weight_average(job: TrainJob, model, saved: Optional[dict]) -> Optional[WeightAverage]:
    """The run's WeightAverage (None with train.weight_average_epochs 0), resumed where saved."""
    epochs = job.train_config.weight_average_epochs
    if not epochs:
        return None
    average = WeightAverage(model, epochs * job.steps_per_epoch)
    if saved is not None and saved.get("average") is not None:
        average.restore(saved["average"])
    return average


def _save_resume(job: TrainJob, ranks, model, opt, state: RunState, average: Optional[WeightAverage]) -> None:
    """Every rank's RNG is gathered (a collective: all ranks call this); rank 0 writes."""
    rng = {"cpu": torch.get_rng_state()}
    if ranks.device != "cpu":
        rng["cuda"] = torch.cuda.get_rng_state(ranks.device)
    rngs = ranks.gather(rng)
    if ranks.rank == 0:
        checkpoints.save_resume(job.checkpoint_dir, job.run_id, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rngs, "epoch": state.epoch,
            "plan": state.plan, "history": state.history, "elapsed_s": state.elapsed_s,
            "valid_ndcgs": {e: torch.from_numpy(v) for e, v in state.valid_ndcgs.items()},
            "stopper": state.stopper.state(), "average": average.state() if average is not None else None},
            job.fingerprint(ranks.size))


def _epoch_schedule(job: TrainJob, state: RunState, peak_lr: float, is_root: bool):
    """(progress callback, lr_at) for the next epoch: the schedule's rate, cut on plateaus."""
    tc, epoch = job.train_config, state.epoch
    progress = (throttled_progress(f"[train {job.run_id}] epoch {epoch + 1}/{tc.epochs}", tc.progress_every_s)
                if is_root else None)
    rate = peak_lr * tc.lr_plateau_factor ** state.stopper.lr_cuts
    lr_at = lambda step: rate  # noqa: E731
    if tc.lr_schedule == "linear":
        done_steps, total_steps = epoch * job.steps_per_epoch, state.plan * job.steps_per_epoch
        lr_at = lambda step: linear_lr(rate, done_steps + step, total_steps)  # noqa: E731
    return progress, lr_at


def _root_decision(job: TrainJob, model, entry: dict, state: RunState, started: float,
                   per_user: Optional[np.ndarray]) -> int:
    """Rank 0: record the validation (each validation user's NDCG@10, None when not due), re-plan
    under a time budget; 0 go on, 1 no validation gain, 2 time budget."""
    tc, epoch = job.train_config, entry["epoch"]
    stop = 0
    if per_user is not None:
        entry["valid_ndcg@10"], entry["valid_ndcg@10_halfwidth"] = float(per_user.mean()), interval_halfwidth(per_user)
        state.valid_ndcgs[epoch] = per_user.astype(np.float32)
        stop = int(state.stopper.update(model, entry["valid_ndcg@10"], epoch, epoch * job.steps_per_epoch,
                                        entry["valid_ndcg@10_halfwidth"]))
    if tc.time_budget_s:
        if time.time() - started > tc.time_budget_s:
            stop = 2
        state.plan = planned_epochs(tc.epochs, tc.time_budget_s, epoch, time.time() - started)
    return stop


# How often (in steps) the ranks ask rank 0 whether the time budget is spent: an epoch longer than
# the budget (a large dataset on few cores) is cut there instead of overrunning it by up to an epoch.
BUDGET_CHECK_STEPS = 10


def budget_check(job: TrainJob, ranks, started: float, epoch: int, cut: dict):
    """A keep_going for train_steps under train.time_budget_s (None without one): every
    BUDGET_CHECK_STEPS steps, rank 0's word on the clock, broadcast so all ranks stop at the same
    step (a collective: every rank asks at the same steps); records that step in cut["steps"]."""
    budget = job.train_config.time_budget_s
    if not budget:
        return None

    def keep_going(steps_done: int) -> bool:
        if steps_done % BUDGET_CHECK_STEPS:
            return True
        spent = int(ranks.rank == 0 and time.time() - started > budget)
        if ranks.broadcast_ints([spent], name=f"budget_{epoch}_{steps_done}")[0]:
            cut["steps"] = steps_done
            return False
        return True
    return keep_going


def _log_epoch(job: TrainJob, entry: dict, ranks: int, lr_cut: bool) -> None:
    extra = f", valid NDCG@10 {entry['valid_ndcg@10']:.4f}" if "valid_ndcg@10" in entry else ""
    if entry.get("valid_ndcg@10_halfwidth") is not None:
        extra += f" ± {entry['valid_ndcg@10_halfwidth']:.4f}"
    steps = (f"{entry['steps']} of {job.steps_per_epoch} steps (time budget)" if "steps" in entry
             else f"{job.steps_per_epoch} steps")
    print(f"[train {job.run_id}] epoch {entry['epoch']}/{job.train_config.epochs} loss {entry['loss']:.4f}{extra} "
          f"({entry['seconds']:.1f}s, {steps} x {ranks} ranks)", flush=True)
    if lr_cut:
        print(f"[train {job.run_id}] no validation gain in {job.train_config.lr_plateau_evals} evaluations: learning "
              f"rate x{job.train_config.lr_plateau_factor:g} from epoch {entry['epoch'] + 1}", flush=True)


def _rank_batches(job: TrainJob, ranks) -> Iterator[dict]:
    """This rank's batches: its shard as drawn, or regrouped by window length (train.length_buckets)."""
    tc = job.train_config
    batches = job.batches.open(ranks.rank, ranks.size, job.batch_size, tc.seed)
    if not tc.length_buckets:
        return batches
    # One order for every rank: step i takes each rank's i-th batch by length, so no rank waits at
    # the gradient average for another's long batch.
    batches = length_bucketed(batches, tc.length_buckets, tc.seed)
    if tc.keep_freed_memory and ranks.device == "cpu":
        # A kept heap reuses a freed block only for a request that fits it, and these batches change
        # shape every step: on ml-1m a rank's heap grew 1.5x. Handing free pages back every few steps
        # holds it near what drawn batches keep (docs/benchmarks.md).
        batches = returning_freed_memory(batches, FREED_MEMORY_RETURN_STEPS)
    return batches


def worker(job: TrainJob) -> dict:
    """One rank, under either launcher. Returns the per-epoch history and every rank's final weight
    checksum (each rank returns them all: TorchDistributor hands back only rank 0's result), taken
    before rank 0's final pass (train.final_pass_epochs)."""
    tc = job.train_config
    ranks = connect(tc.launcher)
    is_root = ranks.rank == 0
    model, opt, peak_lr = _rank_setup(job, ranks.size, ranks.device)
    state = RunState(epoch=0, plan=tc.epochs, stopper=EarlyStopping.of(tc))
    saved = _resume(job, ranks, model, state) if tc.resume == "auto" else None
    net, opt = ranks.setup(model, opt)
    if saved is not None:
        opt.load_state_dict(saved["optimizer"])
    average = _weight_average(job, model, saved)
    batches = _rank_batches(job, ranks)
    # The data position of the resumed epoch: the batches the finished epochs drew, drawn again.
    next(itertools.islice(batches, state.epoch * job.steps_per_epoch, state.epoch * job.steps_per_epoch), None)
    started = time.time() - state.elapsed_s
    stop = 0
    while state.epoch < tc.epochs and not stop:
        t0 = time.time()
        progress, lr_at = _epoch_schedule(job, state, peak_lr, is_root)
        cut: dict = {}
        loss = train_steps(model, opt, batches, job.steps_per_epoch, ranks.device, progress, lr_at, net,
                           budget_check(job, ranks, started, state.epoch, cut), average)
        state.epoch += 1
        entry = {"epoch": state.epoch, "loss": ranks.mean(loss, name="epoch_loss"),
                 "seconds": round(time.time() - t0, 3),
                 "lr": round(float(opt.param_groups[0]["lr"]), 7), **cut}  # lr: of the epoch's last step
        cuts = state.stopper.lr_cuts
        # Validated and kept: the averaged weights, where there is an average.
        with average.applied() if average is not None else nullcontext():
            per_user = (sharded_validation_ndcgs(model, job.valid, ranks, ranks.device)
                        if job.valid is not None and state.epoch % tc.eval_every == 0 else None)
            if is_root:
                stop = _root_decision(job, model, entry, state, started, per_user)
        # One broadcast carries rank 0's decisions, so every rank follows the same schedule.
        stop, state.plan, state.stopper.lr_cuts = ranks.broadcast_ints([stop, state.plan, state.stopper.lr_cuts],
                                                                       name=f"stop_{state.epoch}")
        state.history.append(entry)
        state.elapsed_s = time.time() - started
        if is_root:
            _log_epoch(job, entry, ranks.size, lr_cut=state.stopper.lr_cuts > cuts and not stop)
        if tc.resume == "auto" and state.epoch < tc.epochs and not stop:
            _save_resume(job, ranks, model, opt, state, average)
    batches.close()  # closes the Petastorm reader
    if average is not None:  # the run ends with the average (rank 0 then restores the kept epoch's, if any)
        average.keep()
    if is_root:
        _report_stop(job, stop, state)
    checksums = ranks.gather(float(sum(p.detach().double().sum() for p in model.parameters())))
    rank = ranks.rank
    # Rank 0 saves outside the process group: the other ranks are done, and a collective reached by
    # mistake now fails at once instead of waiting for ranks that will never answer.
    ranks.close()
    if is_root:
        _save_model(job, model, state, opt, ranks.device)
    return {"rank": rank, "history": state.history, "checksum": checksums[rank], "checksums": checksums,
            "device": ranks.device, "ranks": len(checksums)}


def _report_stop(job: TrainJob, stop: int, state: RunState) -> None:
    if stop:
        tc = job.train_config
        why = (f"no validation gain in {state.stopper.current_patience()} evaluations" if stop == 1
               else f"time budget of {tc.time_budget_s:.0f}s used")
        print(f"[train {job.run_id}] early stop: {why}; keeping epoch {state.stopper.best_epoch or state.epoch}",
              flush=True)


def served_vectors(model, valid: dict, batch: int = 512, device: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation users' vectors, item vectors) of the model as scoring serves them, on device (the
    model's by default). Leaves the model in eval mode."""
    model.eval()
    device = device or str(next(model.parameters()).device)
    with torch.no_grad():
        items = model.item_vectors()
        users = torch.cat([encode_users(model, valid["seen"][lo: lo + batch], valid["profile_cat"][lo: lo + batch],
                                        valid["profile_num"][lo: lo + batch], items, device)
                           for lo in range(0, len(valid["target"]), batch)])
    return users, items


def served_vectors_on_cpu(model, valid: dict, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """served_vectors as float32 on the CPU, where the blend and the calibration are fitted."""
    users, items = served_vectors(model, valid, batch)
    return users.float().cpu(), items.float().cpu()


def ranked_ndcgs(users: torch.Tensor, items: torch.Tensor, valid: dict, k: int = 10, batch: int = 512) -> np.ndarray:
    """Each validation user's NDCG@k when ranked by these user and item vectors (full ranking, the
    user's history removed)."""
    tops = [topk_excluding(users[lo: lo + batch], items, valid["seen"][lo: lo + batch], k)[0]
            for lo in range(0, len(users), batch)]
    return ndcg_per_user(np.concatenate(tops), valid["target"], k)


def _score_spread(users: torch.Tensor, items: torch.Tensor, n_users: int = 256) -> float:
    """How far apart a user's scores lie (what ranking sees): the standard deviation of each of the
    first n_users' scores over the catalog (padding row left out), averaged."""
    return float((users[:n_users] @ items[1:].T).std(dim=1).mean())


def attention_spread(model, valid: dict, n_users: int = 256) -> float:
    """_score_spread of the attention part of the served scores, for the first n_users validation users."""
    first = {key: valid[key][:n_users] for key in ("seen", "profile_cat", "profile_num", "target")}
    users, items = served_vectors_on_cpu(model, first)
    d = model.cfg.d_model
    return _score_spread(users[:, :d], items[:, :d])


def _blends(model, users: torch.Tensor, items: torch.Tensor, valid: dict, grid: list[dict]):
    """(grid point's params, share, weights, each validation user's NDCG@10) of every blend tried."""
    with torch.no_grad():
        for point in grid:
            part = CollaborativeFactors(len(items), int(point["rank"])).set(point["factors"], point["regParam"],
                                                                            point["alpha"], (1.0, 1.0))
            factors = part.item_factors(len(items))
            histories = (padded_histories(valid["seen"][lo: lo + 512], model.cfg.max_len, whole=True)
                         for lo in range(0, len(valid["seen"]), 512))
            folded = torch.cat([part.user_factors(torch.as_tensor(h)) for h in histories])
            spread = _score_spread(folded, factors)
            if not spread > 0:  # factors that score every item alike: nothing to blend
                continue
            ratio = _score_spread(users, items) / spread
            for share in BLEND_SHARES:
                weights = (1.0 - share, share * ratio)
                ndcgs = ranked_ndcgs(torch.cat([weights[0] * users, weights[1] * folded], 1),
                                     torch.cat([items, factors], 1), valid)
                yield {key: point[key] for key in ALS_PARAMS}, share, weights, ndcgs


def choose_blend(model, valid: Optional[dict], grid: list[dict]) -> Optional[dict]:
    """Rank 0, once the kept epoch is restored (train.collaborative): serve the attention model alone,
    ALS alone, or the two blended, with the ALS factors of one grid point ({rank, regParam, alpha,
    factors}), judged on how they rank the validation users (NDCG@10, full ranking, history removed).
    A blend puts a share s of the served scores' spread on ALS: user vectors [(1 - s) * attention,
    s * c * folded-in factors], c the ratio of the two models' score spreads, s in BLEND_SHARES
    (1: ALS alone).

    The simpler model wins unless the other's gain, paired over the same users, has a 95% interval
    above 0: the best ALS alone replaces the attention model only so, and the best mix (0 < s < 1)
    then replaces whichever of the two serves only so. The best of many mixes looks better on
    validation than it is; a gain the sample cannot tell from noise does not change what users get.
    Attaches the choice to the model; returns the record for the manifest (None without validation)."""
    if valid is None or not len(valid["target"]):
        return None
    users, items = served_vectors_on_cpu(model, valid)
    attention = ranked_ndcgs(users, items, valid)
    tried, best = [], {}  # best: {"ALS alone" | "mix": (ndcgs, choice)}
    for params, share, weights, ndcgs in _blends(model, users, items, valid, grid):
        tried.append({**params, "share": share, "valid_ndcg@10": float(ndcgs.mean())})
        kind = "ALS alone" if share == 1.0 else "mix"
        if kind not in best or ndcgs.mean() > best[kind][0].mean():
            best[kind] = (ndcgs, {**params, "share": share, "weights": list(weights)})
    record = {"attention_valid_ndcg@10": float(attention.mean()), "tried": tried}
    served, chosen, serving = attention, None, "attention"
    for kind in ("ALS alone", "mix"):
        if kind not in best:
            continue
        ndcgs, choice = best[kind]
        gain = ndcgs - served
        record["best_" + kind.lower().replace(" ", "_")] = {**choice, "valid_ndcg@10": float(ndcgs.mean()), "against": serving,
                                                    "gain": float(gain.mean()), "gain_halfwidth": interval_halfwidth(gain)}
        if gain.mean() > (interval_halfwidth(gain) or 0.0):
            served, chosen, serving = ndcgs, choice, kind
    if chosen is not None:
        point = next(p for p in grid if all(p[key] == chosen[key] for key in ALS_PARAMS))
        model.attach_collaborative(point["factors"], point["regParam"], point["alpha"], tuple(chosen["weights"]))
    return {**record, "chosen": chosen or "attention", "valid_ndcg@10": float(served.mean()),
            "halfwidth": interval_halfwidth(served), "valid_users": len(served)}


def _report_blend(job: TrainJob, blend: dict) -> None:
    chosen = blend["chosen"]
    what = "the attention model alone"
    if chosen != "attention":
        kind = "ALS alone" if chosen["share"] == 1.0 else f"a blend with ALS ({chosen['share']:.0%} of the score spread)"
        what = f"{kind} (rank {chosen['rank']}, regParam {chosen['regParam']}, alpha {chosen['alpha']})"
    steps = "".join(f"; best {kind} {b['valid_ndcg@10']:.4f}, {b['gain']:+.4f} ± {b['gain_halfwidth'] or 0:.4f} "
                    f"paired against {b['against']}"
                    for kind, b in (("ALS alone", blend.get("best_als_alone")), ("mix", blend.get("best_mix"))) if b)
    print(f"[train {job.run_id}] serving {what}: validation NDCG@10 {blend['valid_ndcg@10']:.4f}, the attention "
          f"model alone {blend['attention_valid_ndcg@10']:.4f} ({blend['valid_users']} users, "
          f"{len(blend['tried'])} blends tried{steps})", flush=True)


def calibrate(model, valid: Optional[dict], batch: int = 512) -> dict:
    """The model's calibration fitted on the validation targets (recsys_spark.calibration); without
    validation users the scores are read as they are (temperature 1, every next item new)."""
    if valid is None or not len(valid["target"]):
        return dict(calibration.NOT_FITTED)
    users, items = served_vectors_on_cpu(model, valid, batch)
    with torch.no_grad():
        fitted = calibration.fit(users, items, valid["seen"], valid["target"])
        if "bought" in valid:
            purchase = calibration.fit_purchase(users, items, valid["seen"], valid["target"], valid["bought"], fitted)
            if purchase is not None:
                fitted["purchase"] = purchase
        return fitted


def final_pass_windows(valid: dict, max_len: int, targets: str = "window") -> dict:
    """Each validation user's newest training window moved one step on, so that its last target is
    the validation item: input the newest max_len items of the training history, target the same
    positions' next items (left-padded with 0; with targets "new", the validation item alone), with
    the user's profile. Users without a training history give no window."""
    rows = [i for i, seen in enumerate(valid["seen"]) if len(seen)]
    steps = [np.append(valid["seen"][i], valid["target"][i]) for i in rows]
    target = pad_left([s[1:] for s in steps], max_len)
    if targets == "new":
        target[:, :-1] = 0
    return {"input": pad_left([s[:-1] for s in steps], max_len), "target": target,
            "profile_cat": np.asarray(valid["profile_cat"])[rows], "profile_num": np.asarray(valid["profile_num"])[rows]}


def _passes(windows: dict, batch_size: int, passes: int, seed: int) -> Iterator[dict]:
    """The windows in batches of batch_size (the last of a pass smaller), each pass in a fresh seeded order."""
    rng = np.random.default_rng(seed)
    for _ in range(passes):
        order = rng.permutation(len(windows["input"]))
        for lo in range(0, len(order), batch_size):
            yield {k: v[order[lo: lo + batch_size]] for k, v in windows.items()}


def final_pass(job: TrainJob, model, optimizer, device: str = "cpu") -> Optional[dict]:
    """Rank 0, after model selection (train.final_pass_epochs): train the model on the validation
    users' newest windows extended by their validation item (final_pass_windows), at the run's last
    rate, with the run's optimizer moments, its weights averaged over each pass as in the run
    (WeightAverage); the model ends with the average, and a blend with ALS keeps its share of the
    served scores' spread. Returns the record for the manifest (None when off or without validation
    users)."""
    tc = job.train_config
    if not tc.final_pass_epochs or job.valid is None:
        return None
    windows = final_pass_windows(job.valid, model.cfg.max_len, tc.final_pass_targets)
    n = len(windows["input"])
    if not n:
        return None
    t0, batch = time.time(), min(job.batch_size, n)
    steps_per_pass = -(-n // batch)
    # A copy trains, with a plain optimizer: the launcher hooked the run's parameters and optimizer
    # to average gradients across ranks, and the other ranks have finished.
    trained = copy.deepcopy(model)
    plain = torch.optim.AdamW(trained.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    plain.load_state_dict(optimizer.state_dict())
    lr = float(plain.param_groups[0]["lr"])
    batches = _passes(windows, batch, tc.final_pass_epochs, tc.seed)
    if tc.length_buckets:
        batches = length_bucketed(batches, tc.length_buckets, tc.seed)
    average = WeightAverage(trained, steps_per_pass)
    spread = attention_spread(model, job.valid) if model.collaborative is not None else None
    loss = train_steps(trained, plain, batches, steps_per_pass * tc.final_pass_epochs, device,
                       lr_at=lambda step: lr, average=average)
    average.keep()
    model.load_state_dict(trained.state_dict())
    record = {"epochs": tc.final_pass_epochs, "targets": tc.final_pass_targets, "users": n,
              "steps": steps_per_pass * tc.final_pass_epochs, "batch_size": batch, "lr": lr, "loss": loss}
    if spread is not None:
        # choose_blend chose ALS's share of the served scores' spread; the pass moved the attention
        # model's spread, so ALS's weight follows it to keep that share.
        record["attention_spread_change"] = attention_spread(model, job.valid) / spread
        model.collaborative.weights[1] *= record["attention_spread_change"]
    return {**record, "seconds": round(time.time() - t0, 3)}


def _save_model(job: TrainJob, model, state: RunState, optimizer, device: str = "cpu") -> None:
    """Rank 0: the checkpoint (best validated weights, blended and calibrated on validation, then
    the final pass), then the resume state is no longer needed."""
    if state.stopper.best_state is not None:
        model.load_state_dict(state.stopper.best_state)
    best_epoch = state.stopper.best_epoch or len(state.history)
    chosen = (selection(state.history, best_epoch, len(job.valid["target"]), state.valid_ndcgs)
              if job.valid is not None else {})
    if chosen.get("halfwidth") is not None:
        print(f"[train {job.run_id}] kept epoch {best_epoch}: validation NDCG@10 {chosen['valid_ndcg@10']:.4f} ± "
              f"{chosen['halfwidth']:.4f} (95% interval, {chosen['valid_users']} users); epochs within it, which this "
              f"sample cannot tell apart: {', '.join(map(str, chosen['indistinguishable_epochs']))}; compared on the "
              f"same users (paired): {', '.join(map(str, chosen.get('paired_indistinguishable_epochs', [])))}",
              flush=True)
    blend = choose_blend(model, job.valid, job.collaborative) if job.collaborative else None
    if blend is not None:
        _report_blend(job, blend)
    fitted = calibrate(model, job.valid)
    if fitted["method"] != "none":
        print(f"[train {job.run_id}] calibration: temperature {fitted['temperature']:.3f}, {fitted['new_share']:.1%} of "
              f"next items new to the user, {len(fitted['isotonic']['x'])} isotonic knots for shown items "
              f"(validation log loss "
              f"{fitted['log_loss_uncalibrated']:.4f} -> {fitted['log_loss']:.4f}, {fitted['users']} users)", flush=True)
        if "purchase" in fitted:
            print(f"[train {job.run_id}] purchase calibration: {fitted['purchase']['new_share']:.1%} of next steps "
                  f"bought a new item", flush=True)
    passed = final_pass(job, model, optimizer, device)
    if passed is not None:
        print(f"[train {job.run_id}] final pass: {passed['epochs']} x {passed['users']} validation users' newest "
              f"windows with their validation item, {passed['steps']} steps at lr {passed['lr']:.2e}, loss "
              f"{passed['loss']:.4f} ({passed['seconds']:.1f}s)"
              + (f"; the attention model's score spread x{passed['attention_spread_change']:.3f}, ALS's weight with "
                 f"it" if "attention_spread_change" in passed else ""), flush=True)
    checkpoints.save(job.checkpoint_dir, job.run_id, model, {
        "model_config": model.cfg.to_dict(), "train_config": asdict(job.train_config),
        "data_versions": job.data_versions, "history": state.history,
        "best_epoch": best_epoch, "selection": chosen, "calibration": fitted,
        **({"collaborative": blend} if blend is not None else {}),
        **({"final_pass": passed} if passed is not None else {})}, job.full_config)
    checkpoints.drop_resume(job.checkpoint_dir, job.run_id)
