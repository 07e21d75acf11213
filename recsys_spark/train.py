"""Training, driver side: pin the training data, size the model from it, launch the ranks.

`prepare` pins the Delta versions of the training table and its companions, resolves that
version's active parquet files through Spark, builds the typed model config from data statistics
and a fixed validation sample, and returns one picklable TrainJob (continuing an interrupted run
with the same fingerprint when train.resume is auto). `launch` runs recsys_spark.trainer.worker on
the executors with the configured launcher: `horovod.spark.run`, or pyspark's TorchDistributor.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import re
import shutil
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Optional

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import baselines, checkpoints, privacy, ranks, schema, splits, tables
from recsys_spark.config import (Config, ConfigError, TrainConfig, auto_dropout, auto_final_pass_epochs, auto_negatives,
                                 epoch_batch_size)
from recsys_spark.features import item_feature_arrays, read_stats
from recsys_spark.model import ModelConfig, pad_right
from recsys_spark.trainer import PetastormShards, TrainJob, worker

logger = logging.getLogger(__name__)

# The tables a training run reads, pinned at the newest complete feature set (recorded in the checkpoint).
PINNED_TABLES = (schema.TRAIN_EXAMPLES, schema.ITEM_CONTENT, schema.ITEM_INDEX, schema.USER_PROFILE,
                 schema.SEQUENCES, schema.EVENTS, schema.FEATURE_STATS)


def _pin_versions(spark: SparkSession, root: str) -> dict:
    tables.require(spark, tables.location(root, schema.TRAIN_EXAMPLES), "features")
    return tables.pinned_versions(spark, root, PINNED_TABLES)


def _training_files(spark: SparkSession, cfg: Config, versions: dict) -> tuple[list[str], DataFrame, int]:
    """(parquet files of the pinned training table, the table, its row count)."""
    loc = tables.location(cfg.tables_root, schema.TRAIN_EXAMPLES)
    files = tables.readable_files(spark, loc, versions[schema.TRAIN_EXAMPLES], cfg.staging_dir,
                                  max(cfg.features.train_files, cfg.train.num_proc))
    if len(files) < cfg.train.num_proc:
        raise ValueError(f"the training table has {len(files)} file(s) but train.num_proc is {cfg.train.num_proc}: "
                         f"every rank needs its own shard. Raise features.train_files (now "
                         f"{cfg.features.train_files}) to at least {cfg.train.num_proc} and re-run features.")
    train_df = tables.read(spark, loc, versions[schema.TRAIN_EXAMPLES])
    n_rows = train_df.count()
    if n_rows == 0:
        raise ValueError(f"the training table {loc} is empty: no user has 2+ items in the training split")
    return files, train_df, n_rows


def _item_features(spark: SparkSession, root: str, versions: dict, train_df: DataFrame) -> dict:
    """The catalog's item features; has_id marks the items with a trained id embedding: those that
    occur in the training table (held-out and never-touched items are represented by content alone)."""
    content = tables.read_pinned(spark, root, schema.ITEM_CONTENT, versions)
    feats = item_feature_arrays(content)
    n_items = len(feats["category"])
    trained = (train_df.select(F.explode(F.concat("input", "target")).alias("i")).where("i > 0").distinct()
               .collect())
    feats["has_id"] = np.zeros(n_items, dtype=bool)
    feats["has_id"][[r.i for r in trained if r.i < n_items]] = True
    return feats


def resolve_dropout(dropout, stats: dict) -> float:
    """train.dropout, or with 'auto' the value chosen from the history-length statistic."""
    if dropout != "auto":
        return float(dropout)
    p80 = _history_p80(stats, "train.dropout")
    value = auto_dropout(p80)
    logger.info(f"train: dropout {value} from data (80th percentile of training history lengths "
          f"{p80:.0f}; train.dropout: auto)")
    return value


def _history_p80(stats: dict, setting: str) -> float:
    """The 80th percentile of training history lengths that the features job stored, for an 'auto' setting."""
    if not stats.get("history_len_p80"):
        raise ConfigError(f"{setting} is 'auto' but gold/feature_stats has no history_len_p80 (features were "
                          f"built by an older version): rerun the features job, or set {setting} to a number")
    return stats["history_len_p80"][0]


def resolve_final_pass(tc: TrainConfig, stats: dict) -> TrainConfig:
    """train.* with train.final_pass_epochs 'auto' replaced by the number chosen from the
    history-length statistic (auto_final_pass_epochs)."""
    if tc.final_pass_epochs != "auto":
        return tc
    p80 = _history_p80(stats, "train.final_pass_epochs")
    value = auto_final_pass_epochs(p80)
    logger.info(f"train: {value} final pass{'' if value == 1 else 'es'} over the validation items, from data (80th "
                f"percentile of training history lengths {p80:.0f}; train.final_pass_epochs: auto)")
    return dataclasses.replace(tc, final_pass_epochs=value)


def resolve_negatives(tc, batch: int, max_len: int, n_items: int) -> int:
    """train.loss_negatives, or with 'auto' the value chosen from a step's shape (auto_negatives)."""
    if tc.loss_negatives != "auto":
        return int(tc.loss_negatives)
    value = auto_negatives(batch, max_len, n_items, tc.max_step_logits)
    logits = f"{batch} windows x {max_len} positions x {n_items} items = {batch * max_len * n_items:.3g} logits"
    if value:
        logger.info(f"train: sampled softmax against {value} uniform negatives per step: a full-catalog step would "
                    f"compute {logits}, over train.max_step_logits {tc.max_step_logits:.3g} (train.loss_negatives: auto)")
    else:
        logger.info(f"train: full-catalog softmax: a step computes {logits}, within train.max_step_logits "
                    f"{tc.max_step_logits:.3g} (train.loss_negatives: auto)")
    return value


def _model_config(spark: SparkSession, cfg: Config, versions: dict, train_df: DataFrame, feats: dict,
                  stats: dict, batch: int) -> ModelConfig:
    """Architecture from train.*, sizes from the data, the loss from a step's shape (batch windows)."""
    tc = cfg.train
    max_len = int(train_df.select(F.size("input").alias("n")).first()["n"])
    prof = tables.read_pinned(spark, cfg.tables_root, schema.USER_PROFILE, versions)
    n_attr = prof.select(F.max(F.size("profile_cat"))).first()[0] or 0
    sizes = prof.select(*[F.max(F.col("profile_cat")[i]).alias(f"c{i}") for i in range(n_attr)],
                        F.max(F.size("profile_num")).alias("n_num")).first()
    return ModelConfig(
        n_items=len(feats["category"]), max_len=max_len,
        d_model=tc.d_model, n_heads=tc.n_heads, n_layers=tc.n_layers, block=tc.block,
        dropout=resolve_dropout(tc.dropout, stats),
        n_categories=int(feats["category"].max()) + 1, n_brands=int(feats["brand"].max()) + 1,
        n_tags=int(feats["tags"].max()) + 1, text_dim=len(stats.get("idf", [])), n_item_num=int(feats["num"].shape[1]),
        n_item_vec=int(feats["vec"].shape[1]),
        attr_cardinalities=[int(sizes[f"c{i}"] or 0) + 1 for i in range(n_attr)], n_profile_num=int(sizes["n_num"] or 0),
        use_profile=tc.use_profile, use_behaviour=tc.use_behaviour, use_content=tc.use_content, use_text=tc.use_text,
        use_vectors=tc.use_vectors,
        item_id_dropout=tc.item_id_dropout,
        loss_negatives=resolve_negatives(tc, batch, max_len, len(feats["category"])),
        loss_positions=tc.loss_positions, adversarial_eps=tc.adversarial_eps, label_smoothing=tc.label_smoothing,
        target_span=tc.target_span)


def _validation_sample(spark: SparkSession, cfg: Config, versions: dict, n_num: int) -> Optional[dict]:
    """Up to train.valid_users users with a validation target, as numpy arrays (a fixed sample:
    the users with the smallest hash of their index)."""
    n = cfg.train.valid_users
    if n <= 0:
        return None
    rows = (splits.valid_users(spark, cfg, versions).orderBy(F.xxhash64("user_idx"), "user_idx").limit(n).collect())
    if not rows:
        return None
    return {
        "target": np.array([r.target for r in rows], dtype=np.int64),
        "bought": np.array([bool(r.target_bought) for r in rows], dtype=bool),
        "seen": [np.asarray(r.input, dtype=np.int64) for r in rows],
        "profile_cat": pad_right([r.profile_cat for r in rows], max([len(r.profile_cat or []) for r in rows] + [1])),
        "profile_num": np.array([r.profile_num if r.profile_num and len(r.profile_num) == n_num
                                 else [0.0] * n_num for r in rows], dtype=np.float32),
    }


def _collaborative_grid(spark: SparkSession, cfg: Config, versions: dict, n_items: int) -> Optional[list]:
    """With train.collaborative: ALS item factors at every point of the evaluate.als_* grid, fitted on
    the training histories (the validation users' inputs, as evaluate's ALS baseline); rank 0
    chooses among them and the attention model alone on the validation users (trainer.choose_blend)."""
    if not cfg.train.collaborative:
        return None
    ev, t0 = cfg.evaluate, time.time()
    histories = baselines.interactions(splits.valid_users(spark, cfg, versions).select("user_idx", "input")).persist()
    grid = baselines.als_factor_grid(histories, n_items, {"ranks": ev.als_ranks, "reg_params": ev.als_reg_params,
                                                         "alphas": ev.als_alphas}, cfg.train.seed, ev.als_max_iter)
    histories.unpersist()
    logger.info(f"train: ALS fitted at {len(grid)} grid point(s) in {time.time() - t0:.1f}s for the collaborative blend "
                f"(train.collaborative)")
    return grid


def task_slots(spark: SparkSession) -> int:
    """Tasks the cluster can run at once (what a barrier stage needs one of per rank), GPUs included."""
    sc = spark.sparkContext._jsc.sc()
    return int(sc.maxNumConcurrentTasks(sc.resourceProfileManager().defaultResourceProfile()))


def check_shipped_code(spark: SparkSession, cfg: Config) -> None:
    """TorchDistributor's ranks are `torchrun` processes that an executor's Python starts: they see
    the executor's PYTHONPATH, not the archives of --py-files that Spark puts on its workers' sys.path.
    Warn when code is shipped that way but not named in spark.executorEnv.PYTHONPATH."""
    if cfg.train.launcher != "torch_distributor" or spark.sparkContext.master.startswith("local"):
        return
    conf = spark.sparkContext.getConf()
    shipped = [os.path.basename(p) for p in conf.get("spark.submit.pyFiles", "").split(",")
               if p.endswith((".zip", ".egg", ".py"))]  # the list also holds the --packages jars
    seen = {os.path.basename(p) for p in conf.get("spark.executorEnv.PYTHONPATH", "").split(os.pathsep)}
    missing = [f for f in shipped if f not in seen]
    if missing:
        logger.warning(f"--py-files {', '.join(missing)} will not reach the torch_distributor ranks unless the package "
                       f"is installed on the executors: add --conf spark.executorEnv.PYTHONPATH={os.pathsep.join(missing)} "
                       f"(executors find the shipped files in their working directory)")


def check_slots(spark: SparkSession, cfg: Config) -> None:
    """Every rank is a Spark task running beside the others: refuse more ranks than task slots
    (TorchDistributor's barrier stage and Horovod would otherwise wait for slots that never come)."""
    slots = task_slots(spark)
    # On a cluster, executors may still be registering (a job that starts with train).
    deadline = time.time() + (0 if spark.sparkContext.master.startswith("local") else 60)
    while slots < cfg.train.num_proc and time.time() < deadline:
        time.sleep(2)
        slots = task_slots(spark)
    if cfg.train.num_proc > slots:
        gpu = spark.conf.get("spark.task.resource.gpu.amount", None)
        per = f" (one GPU each: spark.task.resource.gpu.amount={gpu})" if gpu else ""
        raise ConfigError(f"train.num_proc is {cfg.train.num_proc} but the cluster runs {slots} task(s) at once{per}: "
                          f"every {cfg.train.launcher} rank needs its own task slot. Lower train.num_proc to at most "
                          f"{slots}, or add executors or cores.")


def prepare(spark: SparkSession, cfg: Config) -> TrainJob:
    """Pin table versions, resolve active files, and size the model from the data."""
    versions = _pin_versions(spark, cfg.tables_root)
    files, train_df, n_rows = _training_files(spark, cfg, versions)
    feats = _item_features(spark, cfg.tables_root, versions, train_df)
    stats = read_stats(spark, tables.location(cfg.tables_root, schema.FEATURE_STATS), versions.get(schema.FEATURE_STATS))
    batch = epoch_batch_size(n_rows, cfg.train)
    model_config = _model_config(spark, cfg, versions, train_df, feats, stats, batch)
    model_stats = {k: v for k, v in stats.items() if k in schema.ITEM_STATISTICS}
    if len(stats.get("profile_num_mean", [])) == model_config.n_profile_num:
        model_stats.update({k: stats[k] for k in ("profile_num_mean", "profile_num_std")})
    if batch < cfg.train.batch_size:
        logger.info(f"train: batches of {batch} windows per rank instead of {cfg.train.batch_size}, so that an epoch "
                    f"of {n_rows} windows has at least {cfg.train.min_steps_per_epoch} steps (train.min_steps_per_epoch)")
    job = TrainJob(
        batches=PetastormShards(files), model_config=model_config, item_features=feats, stats=model_stats,
        train_config=resolve_final_pass(cfg.train, stats), full_config=privacy.redacted(cfg.to_dict()),
        data_versions=versions, batch_size=batch, steps_per_epoch=max(1, math.ceil(n_rows / (batch * cfg.train.num_proc))),
        checkpoint_dir=cfg.models_dir,
        run_id="attn-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6],
        valid=_validation_sample(spark, cfg, versions, model_config.n_profile_num),
        collaborative=_collaborative_grid(spark, cfg, versions, model_config.n_items),
    )
    if cfg.train.resume == "auto":
        fingerprint = job.fingerprint(cfg.train.num_proc)
        stale = checkpoints.drop_stale_resumes(job.checkpoint_dir, fingerprint)
        if stale:
            logger.info(f"train: removed the resume state of {', '.join(stale)} (trained on other data or settings)")
        found = checkpoints.find_resumable(job.checkpoint_dir, fingerprint)
        if found:
            job.run_id = found[0]
            logger.info(f"train: continuing run {job.run_id} after epoch {found[1]} (same data and settings; "
                  f"train.resume: auto)")
    return job


# TorchDistributor picks its rendezvous port by binding a free one and releasing it before torchrun
# binds it again; another process can take it in between ("Address already in use"). Such a launch
# fails before any rank starts its work, so it is started again, at most this many times in all.
TORCH_DISTRIBUTOR_ATTEMPTS = 3


def torch_distributor_local_mode(use_gpu: bool) -> bool:
    """Whether TorchDistributor starts the ranks from one torchrun on the driver's machine (local
    mode) rather than as barrier tasks on the executors: for CPU ranks on a local master, whose only
    executor is the driver's own JVM, so the ranks run on this machine either way, and one torchrun
    starts them in less than half the time (a launch of 2 ranks 5.0-5.2 s instead of 11.6-12.1 s,
    docs/benchmarks.md). GPU ranks stay barrier tasks, which get the GPUs Spark assigned them."""
    return not use_gpu and SparkSession.active().sparkContext.master.startswith("local")


def launch(launcher: str, num_proc: int, fn, *args, use_gpu: bool = False):
    """fn(*args) on num_proc executor task slots, ranks joined by recsys_spark.ranks.connect(launcher);
    rank 0's result (fn must return a dict with its "rank" under horovod). A failed launch raises
    RuntimeError with the lines in which the ranks said why."""
    if launcher == "horovod":
        return _launch_horovod(num_proc, fn, *args)
    from pyspark.ml.torch.distributor import TorchDistributor

    local_mode = torch_distributor_local_mode(use_gpu)
    for attempt in range(1, TORCH_DISTRIBUTOR_ATTEMPTS + 1):
        with _RankOutput() as output:
            try:
                return TorchDistributor(num_processes=num_proc, local_mode=local_mode, use_gpu=use_gpu).run(
                    ranks.announced, fn, *args)
            except Exception as e:
                if output.started or attempt == TORCH_DISTRIBUTOR_ATTEMPTS:
                    earlier = "" if attempt == 1 else f" (attempt {attempt}; the earlier ones failed before any rank started)"
                    raise output.failure(f"TorchDistributor{earlier}") from e
                logger.warning(f"train: TorchDistributor failed before any rank started (attempt {attempt} of "
                               f"{TORCH_DISTRIBUTOR_ATTEMPTS}), starting it again; the ranks printed: {output.summary()}")


def _launch_horovod(num_proc: int, fn, *args):
    import horovod.spark

    with _RankOutput() as output:
        try:
            # stderr given: Horovod streams the ranks' stderr to the driver (else it stays in the
            # executors' logs, and a failure could not say why).
            results = horovod.spark.run(fn, args=args, num_proc=num_proc, use_gloo=True, start_timeout=600,
                                        verbose=0, stderr=output.stderr)
        except Exception as e:
            raise output.failure("Horovod") from e
    return next(r for r in results if r["rank"] == 0)


# What says why a rank failed: a Python exception line ("RuntimeError: ...",
# "torch.distributed.DistNetworkError: ...", after the rank prefix Horovod ("[0]<stderr>:") or torch
# ("[rank0]: ") puts before it), or torchrun's report of a rank's exit code.
_FAILURE_LINE = re.compile(r"^(\[\d+\]<stderr>:|\[rank\d+\]:\s*)?[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b|exitcode")


class _RankOutput:
    """While open, what the ranks print, as the launcher passes it on to the driver (Horovod and
    TorchDistributor's barrier tasks to its stderr, TorchDistributor's local mode to its stdout; both
    still get every line): whether a rank started the function (TorchDistributor's ranks say so,
    ranks.announced), and the lines that say why a rank failed."""

    def __init__(self):
        self.started = False
        self.failures: list[str] = []
        self.last: collections.deque = collections.deque(maxlen=5)
        self._streams = (sys.stdout, sys.stderr)

    def __enter__(self):
        self.stdout, self.stderr = (_Passed(self, stream) for stream in self._streams)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        return self

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self._streams

    def read(self, text: str) -> None:
        self.started = self.started or ranks.STARTED in text
        for line in filter(None, map(str.strip, text.splitlines())):
            self.last.append(line)
            if _FAILURE_LINE.search(line) and line not in self.failures and len(self.failures) < 10:
                self.failures.append(line)

    def failure(self, launcher: str) -> RuntimeError:
        return RuntimeError(f"training ranks failed under {launcher}: {self.summary()} (every line the ranks "
                            f"printed is above, in the driver's output)")

    def summary(self) -> str:
        if self.failures:
            return " | ".join(self.failures)
        return " | ".join(self.last) or "no line reached the driver"


class _Passed:
    """A driver stream whose text _RankOutput reads on its way through."""

    def __init__(self, output: _RankOutput, stream):
        self._output, self._stream = output, stream

    def write(self, text: str) -> int:
        self._output.read(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):  # the rest of a stream (encoding, fileno, isatty) is the stream's own
        return getattr(self._stream, name)


def run(spark: SparkSession, cfg: Config) -> dict:
    """Train on the executors with train.launcher; return rank 0's result and the checkpoint path."""
    from recsys_spark.tracking import log_train

    check_slots(spark, cfg)
    check_shipped_code(spark, cfg)
    try:
        job = prepare(spark, cfg)
        os.makedirs(job.checkpoint_dir, exist_ok=True)
        use_gpu = float(spark.conf.get("spark.task.resource.gpu.amount", "0") or 0) > 0
        logger.info(f"train {job.run_id}: {len(job.batches.files)} files of {tables.location(cfg.tables_root, schema.TRAIN_EXAMPLES)} "
              f"at version {job.data_versions[schema.TRAIN_EXAMPLES]}, {cfg.train.num_proc} {cfg.train.launcher} ranks "
              f"on {'GPUs' if use_gpu else 'CPUs'}, {job.steps_per_epoch} steps/epoch of {job.batch_size} windows per rank")
        t0 = time.time()
        result = launch(cfg.train.launcher, cfg.train.num_proc, worker, job, use_gpu=use_gpu)
    finally:
        # A staged copy of a catalog table (made by prepare) holds users' rows that forget cannot reach.
        shutil.rmtree(cfg.staging_dir, ignore_errors=True)
    elapsed = time.time() - t0
    path = os.path.join(job.checkpoint_dir, job.run_id)
    history = result["history"]
    logger.info(f"train {job.run_id}: done in {elapsed:.1f}s ({len(history)} epochs), final loss "
          f"{history[-1]['loss']:.4f}; checkpoint {path}")
    return {"run_id": job.run_id, "checkpoint": path, "result": result, "history": history, "seconds": elapsed,
            "steps_per_epoch": job.steps_per_epoch, "batch_size": job.batch_size, "mlflow_run_id": log_train(cfg, path)}
