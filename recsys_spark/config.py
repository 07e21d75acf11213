"""Typed, validated configuration.

A config file is YAML whose top-level sections map onto the frozen dataclasses below. Loading is
strict: an unknown section or key, or a value of the wrong type, raises :class:`ConfigError` naming
the exact key, so a typo in a nightly config fails at start-up instead of silently using a default.

Overrides use dotted keys with YAML values: ``--set train.epochs=3 --set spark.master=local[1]``.
Relative paths in ``paths`` are resolved against the current directory at load time, so a config is
unambiguous once loaded (executors receive absolute paths).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Optional

from recsys_spark.schema import EVENT_TYPES, USER_ATTRIBUTE_COLUMNS

FINAL_PASS_TARGETS = ("window", "new")
LR_SCHEDULES = ("constant", "linear")
LAUNCHERS = ("horovod", "torch_distributor")
BLOCKS = ("transformer", "gated")
OBJECTIVES = ("relevance", "expected_revenue", "expected_margin")
RESUME_MODES = ("auto", "off")


# The 80th percentile of training history lengths at or under which histories count as short and
# sparse (Amazon Beauty: 8), and at or over which as long and dense (MovieLens 1M: 251). The "auto"
# settings below take their values at these ends from those two datasets' measurements.
SHORT_HISTORY_P80 = 20
LONG_HISTORY_P80 = 200


def auto_dropout(history_p80: float) -> float:
    """`train.dropout: auto`: dropout from the 80th percentile of training history lengths, 0.4 for
    short histories (they need strong regularisation), 0.1 for long ones, log-linear between, rounded
    to 0.05. The end points are the validation-best values on Amazon Beauty and MovieLens 1M; see
    docs/benchmarks.md."""
    span = math.log(LONG_HISTORY_P80) - math.log(SHORT_HISTORY_P80)
    x = min(1.0, max(0.0, (math.log(max(history_p80, 1.0)) - math.log(SHORT_HISTORY_P80)) / span))
    return round((0.4 - 0.3 * x) * 20) / 20


def auto_final_pass_epochs(history_p80: float) -> int:
    """`train.final_pass_epochs: auto`: one pass for short histories, none otherwise. In a short
    window the held-out validation step is one target in a handful, and learning it gained test
    NDCG@10 on Amazon Beauty; in a long one it is one in hundreds, and the pass retrains steps
    already learned in every epoch: it lost on MovieLens 1M (docs/benchmarks.md)."""
    return 1 if history_p80 <= SHORT_HISTORY_P80 else 0


def auto_negatives(batch: int, max_len: int, n_items: int, max_step_logits: int) -> int:
    """`train.loss_negatives: auto`: 0 (the full-catalog softmax) while a step's logits, batch x
    max_len positions x n_items, stay within max_step_logits; beyond it, a sampled softmax against as
    many uniform negatives as keep the step within it (at least one). A step's memory grows with its
    logits (12-16 bytes each with their gradients), so a large catalog neither exhausts a rank's
    memory nor multiplies its step time (README, "Large catalogs")."""
    positions = batch * max_len
    if positions * n_items <= max_step_logits:
        return 0
    return min(n_items - 1, max(1, max_step_logits // positions))


# The smallest batch train.min_steps_per_epoch may shrink to: below it a step's gradient is mostly noise.
MIN_BATCH = 8


def epoch_batch_size(n_rows: int, tc: "TrainConfig") -> int:
    """Training windows per rank and step: train.batch_size, or fewer so that an epoch of n_rows
    windows over the ranks has at least train.min_steps_per_epoch steps (never below MIN_BATCH)."""
    if tc.min_steps_per_epoch <= 0:
        return tc.batch_size
    return max(MIN_BATCH, min(tc.batch_size, n_rows // (tc.num_proc * tc.min_steps_per_epoch)))


# Spark's name for the session catalog: "spark_catalog.recsys" and "recsys" are the same schema
# (Delta's DeltaTable.forName accepts only the second).
SESSION_CATALOG = "spark_catalog"


def is_uri(location: str) -> bool:
    """A storage URI (s3://, abfss://, dbfs:, file://, ...) rather than a local path."""
    return "://" in location or location.startswith("dbfs:")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and what was expected."""


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[2]"
    app_name: str = "recsys-spark"
    shuffle_partitions: int = 4
    # Resolve the Delta jars with spark.jars.packages (False when the cluster already has them,
    # e.g. Databricks, or when spark-submit --packages supplies them).
    delta_packages: bool = True
    log_level: str = "WARN"
    # Spark's console progress bar: auto = on for a local master writing to a terminal (an
    # interactive run), off otherwise (cluster and scheduled logs stay one line per event).
    progress: str = "auto"
    # Quiet console: the Delta jars resolved once and reused (no Ivy report per stage), the JVM's
    # start-up notes off (recsys_spark/log4j2.properties). `--verbose` sets it false.
    quiet: bool = True
    conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PathsConfig:
    # Root of the lakehouse: Delta tables live under <root>/tables, checkpoints under <root>/models.
    root: str = "data/local"
    # Where `generate` writes the raw synthetic shop and where `ingest` reads raw files from,
    # unless ingest.events / users / items name other locations.
    raw: str = "data/local/raw"
    # Empty: tables are Delta folders under <root>/tables. "<catalog>.<schema>" (Unity Catalog, e.g.
    # "main.recsys") or "<schema>" (the session's metastore): every table is a catalog table,
    # <catalog>.<schema>.silver_events for silver/events. Checkpoints and reports stay under root.
    catalog: str = ""


@dataclass(frozen=True)
class GenerateConfig:
    users: int = 2000
    items: int = 400
    events: int = 120_000
    categories: int = 16
    seed: int = 7
    formats: list[str] = field(default_factory=lambda: ["parquet"])
    # Share of event rows deliberately corrupted (null ids, bad timestamps, unknown types) so the
    # demo exercises quarantine; 0 for clean data.
    corrupt_fraction: float = 0.0
    # Users with a profile and no events, items with content and no events (cold start).
    cold_users: int = 0
    cold_items: int = 0
    with_ratings: bool = False
    # Next-best-action example: also a catalog of actions (per category a support article and a
    # cross-sell offer, items of kind article / offer) that buyers view after some purchases.
    actions: bool = False
    start_date: str = "2026-01-01"
    days: int = 180
    # Width of the items' `embedding` vectors (what an image encoder would emit; 0 = none).
    item_vector_dim: int = 16


@dataclass(frozen=True)
class IngestConfig:
    # Paths (file, directory or glob) of raw inputs; empty means <paths.raw>/events etc.
    events: str = ""
    users: str = ""
    items: str = ""
    # csv | parquet | json | sasrec (`user item...` text) | movielens (ratings.csv / ratings.dat) |
    # auto (from the file names and extensions: .txt is sasrec, ratings.dat/ratings.csv movielens)
    format: str = "auto"
    # Timestamp strings are parsed with this pattern; numbers are unix seconds.
    timestamp_format: str = "yyyy-MM-dd HH:mm:ss"
    event_types: list[str] = field(default_factory=lambda: list(EVENT_TYPES))
    # Plausible event times: later than ingest time + max_clock_skew_hours, or earlier than
    # min_timestamp, is quarantined (one far-future event would become the decay reference and
    # zero every other weight). Sequence-only formats (sasrec) carry no real time and are exempt.
    max_clock_skew_hours: float = 24.0
    min_timestamp: str = "1990-01-01"
    # Ratings outside [low, high] (and NaN or infinite ones) are quarantined.
    rating_range: list[float] = field(default_factory=lambda: [0.0, 10.0])
    # CSV: the files' character encoding, and whether quoted fields may hold line breaks (true
    # reads each file whole in one task; false splits large files across tasks).
    csv_encoding: str = "UTF-8"
    csv_multiline: bool = True
    # `ingest --stream`: the events folder is watched and each new file loaded once (csv, parquet
    # or json). A micro-batch every stream_trigger_seconds; the stream's checkpoint folder (empty:
    # <paths.root>/streams/ingest) records which files were loaded.
    stream_trigger_seconds: float = 5.0
    stream_checkpoint: str = ""


@dataclass(frozen=True)
class FeaturesConfig:
    event_weights: dict[str, float] = field(
        default_factory=lambda: dict(zip(EVENT_TYPES, (1.0, 3.0, 5.0, 2.0)))
    )
    half_life_days: float = 30.0
    # Event types that enter the behaviour sequence (consecutive repeats of one item are collapsed).
    sequence_event_types: list[str] = field(default_factory=lambda: list(EVENT_TYPES))
    # Steps of history the model attends over; 0 = from data (80th percentile of history lengths,
    # within [50, 200]).
    max_seq_len: int = 50
    # leave_last_out: last item test, second-to-last validation. time: events at or after
    # time_cutoff are held out; each user's first held-out item is the test target.
    split: str = "leave_last_out"
    time_cutoff: Optional[str] = None
    # Files of the training table; more files than Horovod ranks keeps shards balanced.
    train_files: int = 8
    # Item titles: tfidf = hashed term frequencies (Spark ML HashingTF, text_features buckets) with
    # the IDF fitted on the catalog and stored in gold/feature_stats; none = titles unused.
    text_encoder: str = "tfidf"
    text_features: int = 4096
    # Title terms found in fewer items than this get IDF 0 (Spark ML IDF minDocFreq): a term of one
    # item only would act as a second id embedding, useless (noise) for a new item.
    text_min_df: int = 2
    # Cold-start evaluation: this share of users (hashed user id) is left out of training entirely,
    # and this share of items never appears in training sequences. 0 = off (production).
    holdout_users: float = 0.0
    holdout_items: float = 0.0
    holdout_seed: int = 13
    # full: rebuild every user's rows. incremental: rebuild only the users with new events since the
    # previous run (Delta Change Data Feed of the events table) and MERGE them into the user-item
    # matrix, sequences, profiles and training examples; falls back to full, saying why, when the
    # settings, the users or items table changed, or the feed cannot be read for the range.
    mode: str = "full"


@dataclass(frozen=True)
class TrainConfig:
    # What starts the training ranks on the executors: horovod (horovod.spark.run, Gloo; not in
    # Databricks Runtime 16 ML and later) or torch_distributor (pyspark.ml.torch's TorchDistributor,
    # DistributedDataParallel over gloo on CPU, NCCL on GPU). Both run the same rank function.
    launcher: str = "horovod"
    # Ranks (one Spark task slot each; on a GPU cluster one GPU each).
    num_proc: int = 2
    epochs: int = 20
    # Training windows per rank and optimizer step, at most: see min_steps_per_epoch.
    batch_size: int = 128
    # With N > 0 the batch shrinks (to no fewer than 8 windows) so that an epoch has at least N
    # optimizer steps: on a small dataset a full batch leaves a handful of steps an epoch, and the
    # model learns per step, not per epoch (ml-latest-small: 4 steps an epoch at 128; docs/benchmarks.md).
    min_steps_per_epoch: int = 0
    # N > 0: every N batches a rank draws are pooled and re-cut into batches of windows of like
    # length (trainer.length_bucketed), so a step over short histories is short (the model drops
    # the columns no window of a batch uses). 0: batches as drawn. 16 halved Beauty's epochs at the
    # same quality (docs/benchmarks.md, "Batches of windows of like length"); with keep_freed_memory
    # a CPU rank then hands its free heap pages back every few steps, or its heap grows 1.5x.
    length_buckets: int = 0
    lr: float = 0.002
    # constant: lr throughout. linear: lr decays linearly from lr to 0 over the planned training,
    # i.e. `epochs`, or with a time budget the epochs that fit it (re-estimated after every epoch
    # from the mean epoch time) -- the budget-aware schedule of Li et al. (ICLR 2020).
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    # The sequence encoder's layers. transformer: pre-norm attention and a GELU feed-forward, each
    # added to the residual stream (SASRec). gated: LiGR layers (eSASRec, 2025): the same attention
    # and a SwiGLU feed-forward, each added through a sigmoid gate computed from the stream.
    block: str = "transformer"
    # A number in [0, 1), or "auto": from data statistics, the 80th percentile of training history
    # lengths (see auto_dropout): long, dense histories (MovieLens) get 0.1, short, sparse ones
    # (Amazon reviews) 0.4, measured best by validation NDCG on ml-1m and Beauty (docs/benchmarks.md).
    dropout: float | str = 0.2
    # Feature groups (each can be switched off, e.g. for an ablation): declared user attributes
    # (profile token), behaviour profile (gate), item content (category, brand, tags, price),
    # title text (TF-IDF), the items' upstream vectors (the items' `embedding` column: image or text
    # embeddings, multimodal fusion). With all off the model is a pure id-based SASRec.
    use_profile: bool = True
    # Off by default: the behaviour profile is computed over a user's whole training history, so
    # early positions of a training sequence see a profile of events still to come; with 1-3 events
    # that skew made cold users' lists worse than popularity on ml-1m (docs/benchmarks.md).
    use_behaviour: bool = False
    use_content: bool = True
    use_text: bool = True
    use_vectors: bool = True
    # Probability that an item's id embedding is dropped in a training step (content stands alone).
    item_id_dropout: float = 0.1
    # 0: full-catalog cross-entropy. N > 0: sampled cross-entropy against N uniform negatives per
    # step (cheaper per step for large catalogs; see docs/benchmarks.md for what it costs in quality).
    # "auto": from the data's shape (see auto_negatives): the full catalog while a step's logits fit
    # max_step_logits, else as many negatives as fit it.
    loss_negatives: int | str = "auto"
    # The most logits (batch x window length x items) an "auto" step computes: 2 x 10^8 is 2.4-3.2 GB
    # with their gradients, so two CPU ranks and the driver fit a 24 GiB machine. Every public
    # dataset measured here fits it whole (ml-1m's step: 0.87 x 10^8). Raise it on large GPUs.
    max_step_logits: int = 200_000_000
    # 0: the loss is taken at every position of a window. N > 0: at a uniform random sample of the
    # batch's positions, at most N per window on average. On a CPU the catalog-wide softmax at every
    # position is nearly all of a step's cost for long windows, and neighbouring positions of a window
    # teach much the same (docs/benchmarks.md, "Fewer supervised positions").
    loss_positions: int = 0
    # Adversarial training (APR-style): each step also takes the loss with every item vector moved
    # by this share of its own length in its worst direction. 0 = off (docs/benchmarks.md).
    adversarial_eps: float = 0.0
    # Label smoothing of the softmax: the target keeps 1 - eps of the loss's weight and every other
    # candidate item (the catalog, or the sampled ones) shares eps. 0 = off (docs/benchmarks.md).
    label_smoothing: float = 0.0
    # Validation, the kept epoch and the served model read an exponential moving average of the
    # weights over about this many epochs of optimizer steps instead of the last step's weights
    # (over the first ~9x that many epochs, over about the last ninth of the steps so far).
    # 0 = off (docs/benchmarks.md).
    weight_average_epochs: float = 0.0
    # Once the kept epoch, the blend and the calibration are chosen on the validation users, train
    # this many passes over those users' newest windows extended by their validation item, so the
    # served model has learned each user's latest step that model selection held out (evaluate's test
    # item stays unseen). Rank 0 runs them at the run's last rate, its weights averaged over each
    # pass. 0 = serve the kept epoch as chosen (docs/benchmarks.md). "auto": from data statistics
    # (see auto_final_pass_epochs): one pass where histories are short, none where they are longer.
    final_pass_epochs: int | str = 0
    # What the final pass's loss sees: "window", every position of those windows (the validation
    # item is the last target); "new", the validation item alone (the rest of each window was
    # trained on in every epoch).
    final_pass_targets: str = "window"
    # Each training position's target is drawn uniformly from the next N items of its window
    # (1: the next item, SASRec's objective). Where the order says little, the items further on are
    # as informative as the next one, and N > 1 lets the loss see the user's whole set.
    target_span: int = 1
    # Fit implicit ALS on the training histories (the evaluate.als_* grid) before training, and
    # serve the attention vectors blended with ALS factors folded in from each user's history where
    # the validation users rank better with the blend (recsys_spark.collaborative; docs/benchmarks.md,
    # "Weakly sequential data"). Needs validation users (valid_users > 0).
    collaborative: bool = False
    seed: int = 42
    # Torch intra-op threads per rank (ranks share the executor's cores).
    threads_per_rank: int = 1
    # A CPU rank asks glibc to keep freed memory for reuse: a step allocates and frees logits of
    # hundreds of MB, which glibc otherwise maps afresh each time for the kernel to zero-fill page by
    # page. Beauty's epochs ran 1.28x faster, and each rank's peak resident memory rose from 2.6 GB
    # to 3.3-4.2 GB (docs/benchmarks.md, "Memory the ranks keep").
    keep_freed_memory: bool = True
    # Early stopping: the ranks together rank up to valid_users validation users (training history
    # -> validation item, full ranking, history removed) every eval_every epochs and keep the best
    # weights; training stops after `patience` evaluations without improvement. valid_users 0
    # disables it. The cap bounds what the driver collects and each rank holds; below it every
    # validation user counts, because on 2,000 users a noise spike could end training early
    # (docs/benchmarks.md, "Model selection on (nearly) every validation user").
    valid_users: int = 20000
    eval_every: int = 1
    patience: int = 3
    # A run that peaked early stops sooner: after ceil(relative_patience x the best evaluation's
    # number) evaluations without a gain when that is fewer than `patience`, and never fewer than
    # lr_plateau_evals + 1 (one evaluation at the first cut rate). 0.5 and patience 5, replayed on
    # the validation curves of the 73 runs in docs/results, keeps every run's kept epoch and ends
    # ml-latest-small's (peak at epoch 6) 2 epochs sooner. 0 = always `patience`
    # (docs/benchmarks.md, "Patience relative to the peak").
    relative_patience: float = 0.0
    # ... but not during the run's start, when `patience` evaluations of a barely trained model are
    # noise (ml-latest-small: 4 steps an epoch, stopped after 36 steps below popularity;
    # docs/benchmarks.md). The start ends at the first validation NDCG@10 above the first
    # evaluation's 95% interval, or after this many optimizer steps at the latest.
    min_steps: int = 0
    # The learning rate is multiplied by lr_plateau_factor after every lr_plateau_evals evaluations
    # in a row without a gain (after the run's start, as early stopping), so a run that has stopped
    # improving at its rate goes on at a smaller one before patience ends it. 1 = off; conf/bench.yaml
    # uses 0.5 (docs/benchmarks.md, "Cutting the learning rate on validation plateaus").
    lr_plateau_factor: float = 1.0
    lr_plateau_evals: int = 2
    # Rank 0 prints where a long epoch is (steps done, running loss) at most this often; 0 = only
    # the per-epoch line.
    progress_every_s: float = 30.0
    # Wall-clock budget for the epoch loop in seconds (0 = none): training stops after the first
    # epoch that ends past it, keeping the best validated weights. An epoch still running when the
    # budget is spent is cut within 10 steps (trainer.BUDGET_CHECK_STEPS), then validated.
    time_budget_s: float = 0.0
    # nightly: retrain when the newest model has already served this many scoring nights
    # (1 = retrain every night; 7 = weekly, scoring with the same model in between).
    retrain_every: int = 1
    # auto: every epoch rank 0 saves a resume state (weights, optimizer, RNG, data position) and a
    # run that stopped part-way (a lost executor) is continued by the next train on the same data
    # and settings, ending with the weights an uninterrupted run would have; off: always start over.
    resume: str = "auto"


@dataclass(frozen=True)
class ScoreConfig:
    k: int = 10
    # YYYY-MM-DD; empty means today (UTC).
    run_date: str = ""
    # Users scored per torch batch on an executor.
    batch_users: int = 1024
    # Empty: the champion (the newest model promoted by evaluate, recsys_spark.promotion). A run id
    # pins that checkpoint under <paths.root>/models instead (an operator's choice, gate bypassed).
    model_run_id: str = ""
    # full: score every user. incremental: rescore only users with new events since the last
    # successful scoring run (Delta Change Data Feed of the events table) and carry the others
    # forward; falls back to full, saying why, when the model, rules or eligibility changed.
    mode: str = "full"
    # Business rules, applied before ranking. eligibility: a Delta table (a name under the tables
    # root, a catalog name or a path) with columns item_id, eligible (boolean); items it marks
    # false are never recommended, items it does not list are eligible. Empty = every item is eligible.
    eligibility: str = ""
    # At most this many items of one category per user's list (0 = no cap).
    max_per_category: int = 0
    # MMR diversity re-rank of the best 4*k candidates: lambda in (0, 1], 0 = off.
    mmr_lambda: float = 0.0
    # History items stored per recommendation as its explanation ("because you viewed X"); 0 = off.
    explain: int = 3
    # auto: CUDA when the executor has a GPU, else CPU. cpu | cuda force one.
    device: str = "auto"
    # Scores computed per block of users (MB), >= 32 users: small enough to stay in CPU cache
    # between the matmul and topk (8 MB measured best on 2 Xeon cores); a GPU uses >= 512 MB.
    block_mb: float = 8.0
    # Also bring gold/recommendations_latest (every user's newest list, a stable table to read) to
    # this run's lists: overwritten by a full run, the rescored users' rows replaced by an incremental one.
    write_latest: bool = True
    # What lists are ranked by: relevance (the model's score), expected_revenue (calibrated
    # probability x price) or expected_margin (x margin), from the items' price / margin columns.
    objective: str = "relevance"
    # Only items of these kinds (the items input's kind column; items without one are "product")
    # are recommended, e.g. [article, offer] to rank actions; empty = every item.
    item_kinds: list[str] = field(default_factory=list)
    # "New arrivals": at least this many items without interactions (new since training, or never
    # touched) in each list when eligible ones exist, chosen by the model's content path and placed
    # by their own scores. 0 = off (new items then compete with everything on score alone).
    new_item_slots: int = 0
    # Exploration: the last explore_slots of each model-made list show items drawn at random from
    # the explore_pool candidates ranked after the first k - explore_slots, so the logs hold
    # feedback on items the model is unsure of; each row's propensity is the chance the policy
    # showed that item (1 for the others). Draws are repeatable for a run_date. 0 = off.
    explore_slots: int = 0
    explore_pool: int = 50


@dataclass(frozen=True)
class RefreshConfig:
    # `refresh` without --once: a micro-batch of the events' change feed every this many seconds.
    trigger_seconds: float = 5.0
    # The stream's checkpoint folder; empty = <paths.root>/streams/refresh. A subfolder per events
    # version the nightly's features were built from, so a new nightly starts a new stream.
    checkpoint: str = ""


@dataclass(frozen=True)
class AudienceConfig:
    # Campaigns: a YAML or JSON file holding a list, or a Delta table (a name under the tables root,
    # a catalog name or a path). Each campaign: campaign_id; its items as one of items (item ids),
    # category or brand; size (the audience's users, 0 = no size) and/or min_probability.
    campaigns: str = ""
    # Users who purchased one of a campaign's items in the days before run_date are left out of it
    # (0 = nobody is left out for past purchases).
    exclude_purchased_days: int = 30
    # A Delta table (a name under the tables root, a catalog name or a path) with a user_id column:
    # users who opted out of marketing; they are in no audience. Empty = none.
    opt_out: str = ""
    # Frequency cap: a user is in at most this many of a day's audiences, kept in those where their
    # score (lift over the campaign's mean) is highest; 0 = no cap.
    max_per_user: int = 0
    # YYYY-MM-DD; empty means today (UTC). A rerun of a date replaces that date's audiences.
    run_date: str = ""


@dataclass(frozen=True)
class EvaluateConfig:
    ks: list[int] = field(default_factory=lambda: [10, 20])
    # Baselines ranked on the same users with the same protocol: popularity, als, item_knn.
    baselines: list[str] = field(default_factory=lambda: ["popularity"])
    # ALS (implicit) grid, chosen on the validation targets by NDCG@10.
    als_ranks: list[int] = field(default_factory=lambda: [64])
    als_reg_params: list[float] = field(default_factory=lambda: [0.01, 0.1])
    als_alphas: list[float] = field(default_factory=lambda: [1.0, 10.0])
    als_max_iter: int = 10
    knn_neighbors: int = 100
    # Promotion gate: a new model serves only when its test NDCG@10 is at least the champion's
    # (the first model: popularity's) x (1 - promote_tolerance), measured on the same users.
    promote_tolerance: float = 0.02


@dataclass(frozen=True)
class AbtestConfig:
    # Exposure/outcome log: a Delta table (a name under the tables root, a catalog name or a path)
    # with one row per exposed user: user_id, variant, exposed_at, clicks, conversions, revenue.
    log: str = "gold/ab_log"
    control: str = "A"
    alpha: float = 0.05
    power: float = 0.8
    # Planned share of users per variant in variant-name order; empty = equal shares.
    split: list[float] = field(default_factory=list)
    # Item-level exposure log (abtest-simulate writes it; ope reads it): one row per shown item,
    # user_id, variant, policy, rank, item_id, propensity, clicked, converted, revenue.
    exposures: str = "gold/ab_exposures"
    # abtest-simulate (synthetic shop only): one variant per policy, named A, B, C... in this order:
    # popularity, or the serving model ranked by an objective (relevance, expected_revenue,
    # expected_margin; see score.objective), exploring as score.explore_slots says. Then the
    # assignment seed and behaviour: a shown item is clicked with sim_click_hit when it is the
    # user's held-out next item, else with sim_click_base; a click converts with sim_convert.
    sim_variants: list[str] = field(default_factory=lambda: ["popularity", "relevance"])
    seed: int = 5
    sim_click_hit: float = 0.3
    sim_click_base: float = 0.005
    sim_convert: float = 0.2


@dataclass(frozen=True)
class OpeConfig:
    # Off-policy evaluation (`ope`): the item-level exposure log to learn from (a Delta table with
    # user_id, item_id, propensity, clicked, revenue; abtest-simulate writes one).
    log: str = "gold/ab_exposures"
    # Or a night the nightly scored (YYYY-MM-DD, or latest: the newest whose reward window has
    # closed; read instead of `log`): its lists in gold/recommendations with their propensities, each
    # shown item rewarded by the user's events on it in the `reward_days` days from the night (any
    # event: a click; a purchase: its price).
    night: str = ""
    reward_days: int = 1
    # Candidate policies, each estimated from the log: popularity, relevance, expected_revenue,
    # expected_margin (their top score.k for the logged users, as abtest-simulate would show them;
    # for a night, as that night's run would have with the same model, inputs and rules).
    policies: list[str] = field(default_factory=lambda: ["relevance"])
    # Two-sided confidence level of the intervals is 1 - alpha.
    alpha: float = 0.05


@dataclass(frozen=True)
class BanditConfig:
    # The feedback loop (`bandit-simulate`, recsys_spark.bandit): a LinUCB re-ranker of the serving
    # model's top `pool` candidates per user, learning from the reward of each shown item
    # (revenue or clicks). alpha scales the optimism bonus; prior is the ridge strength (in
    # exposures) pulling the reward model toward the model's own order before any feedback.
    pool: int = 30
    alpha: float = 1.0
    prior: float = 1.0
    reward: str = "revenue"
    # Simulated days on the synthetic shop's test users (abtest.sim_* behaviour, abtest.seed).
    days: int = 30
    # Serve with the re-ranker: the nightly `score` ranks each model-made list's `pool` candidates by
    # the learned bound, logs what it showed with its features to gold/bandit_exposures, and first
    # learns from every logged night whose reward window has closed: a shown item's reward is the
    # user's events on it (any event: a click; a purchase: its price as revenue) in the
    # `reward_days` days from its run_date.
    serve: bool = False
    reward_days: int = 1


@dataclass(frozen=True)
class TrackingConfig:
    # MLflow tracking of train and evaluate runs (recsys_spark.tracking).
    enabled: bool = True
    # Empty: a local file store at <paths.root>/mlruns. Or an http(s):// server, or "databricks".
    uri: str = ""
    experiment: str = "recsys-spark"
    # Model registry: empty = the tracking store; "databricks-uc" = Unity Catalog.
    registry_uri: str = ""
    # Every trained model is registered under this name; the alias "champion" marks the serving one.
    # On Unity Catalog: "<catalog>.<schema>.<model>".
    registered_model: str = "recsys-spark-attention"
    # true: a tracking failure fails the stage; false: it prints a warning (outputs are kept either way).
    required: bool = False


@dataclass(frozen=True)
class PrivacyConfig:
    # forget: history older than this is purged (VACUUM), including the change-data files that keep
    # deleted rows. 168 h is Delta's default and keeps a week of time travel and of readers pinned to
    # older versions; until then those versions still hold a forgotten user. 0 purges at once (jobs
    # pinned to an older version, such as evaluating a model trained before, then fail).
    vacuum_retention_hours: float = 168.0
    # Replace user ids at ingest by a keyed hash (recsys_spark.privacy). The key is read from the
    # environment variable key_env, or on Databricks from the secret "scope/key" in key_secret;
    # never write the key itself into a config file.
    pseudonymize: bool = False
    key_env: str = "RECSYS_PSEUDONYM_KEY"
    key_secret: str = ""
    # User attributes kept from the users input; other columns never reach silver/users.
    user_columns: list[str] = field(default_factory=lambda: list(USER_ATTRIBUTE_COLUMNS))


@dataclass(frozen=True)
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    audience: AudienceConfig = field(default_factory=AudienceConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    abtest: AbtestConfig = field(default_factory=AbtestConfig)
    ope: OpeConfig = field(default_factory=OpeConfig)
    bandit: BanditConfig = field(default_factory=BanditConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def __post_init__(self) -> None:
        _check_values(self)

    @property
    def tables_root(self) -> str:
        """Where the tables live (see tables.location): the catalog schema, or <root>/tables."""
        if self.paths.catalog:
            return self.paths.catalog.removeprefix(f"{SESSION_CATALOG}.")
        return os.path.join(self.paths.root, "tables")

    @property
    def models_dir(self) -> str:
        return self.local_dir("models")

    @property
    def reports_dir(self) -> str:
        return self.local_dir("reports")

    @property
    def staging_dir(self) -> str:
        """Copies of catalog tables that a reader outside Spark needs as files (training)."""
        return self.local_dir("staging")

    def local_dir(self, name: str) -> str:
        """A folder under paths.root that is written with plain file I/O (checkpoints, reports):
        a file: URI is used as its path; another URI is refused instead of becoming a local folder
        named after the scheme."""
        root = self.paths.root
        if root.startswith("file:"):
            root = "/" + root[len("file:"):].lstrip("/")
        elif is_uri(root):
            raise ConfigError(
                f"paths.root is {self.paths.root!r}: Delta tables can live there, but {name} are written as "
                f"files and need a filesystem path. On Databricks use a /dbfs/... or /Volumes/... path for "
                f"paths.root; elsewhere a shared mount (NFS, a FUSE mount of the bucket).")
        return os.path.join(root, name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_features(f: FeaturesConfig) -> None:
    if f.split not in ("leave_last_out", "time"):
        raise ConfigError(f"features.split: expected 'leave_last_out' or 'time', got {f.split!r}")
    if f.split == "time" and not f.time_cutoff:
        raise ConfigError("features.time_cutoff: required when features.split is 'time' (e.g. '2026-06-01')")
    if f.half_life_days <= 0:
        raise ConfigError(f"features.half_life_days: must be > 0, got {f.half_life_days}")
    if f.text_encoder not in ("tfidf", "none"):
        raise ConfigError(f"features.text_encoder: expected 'tfidf' or 'none', got {f.text_encoder!r}")
    if f.text_features < 16:
        raise ConfigError(f"features.text_features: must be >= 16 hash buckets, got {f.text_features}")
    for name in ("holdout_users", "holdout_items"):
        if not 0.0 <= getattr(f, name) < 1.0:
            raise ConfigError(f"features.{name}: must be in [0, 1) (a share; 0 = off), got {getattr(f, name)}")
    if f.max_seq_len != 0 and f.max_seq_len < 2:
        raise ConfigError(f"features.max_seq_len: must be 0 (from data) or >= 2, got {f.max_seq_len}")
    if not f.sequence_event_types:
        raise ConfigError("features.sequence_event_types: must name at least one event type")
    if any(w < 0 for w in f.event_weights.values()):
        raise ConfigError(f"features.event_weights: weights must be >= 0, got {f.event_weights}")
    _at_least("features.train_files", f.train_files, 1)
    if f.mode not in ("full", "incremental"):
        raise ConfigError(f"features.mode: expected 'full' or 'incremental', got {f.mode!r}")


def _check_finite(cfg: "Config") -> None:
    """No NaN or infinite number anywhere (YAML reads .nan and .inf as floats)."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            v = getattr(values, f.name)
            numbers = v.values() if isinstance(v, dict) else v if isinstance(v, list) else [v]
            if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
                raise ConfigError(f"{section.name}.{f.name}: must be a finite number, got {v}")


def _at_least(key: str, value, low) -> None:
    if value < low:
        raise ConfigError(f"{key}: must be >= {low}, got {value}")


def _check_after_selection(t: TrainConfig) -> None:
    """Settings of the steps that follow model selection (the blend, the final pass): both need
    validation users."""
    if t.collaborative and t.valid_users <= 0:
        raise ConfigError("train.collaborative: the blend with ALS is chosen on the validation users, but "
                          "train.valid_users is 0; set it above 0 (default 20000) or set train.collaborative: false")
    if t.final_pass_epochs != "auto" and (isinstance(t.final_pass_epochs, str) or t.final_pass_epochs < 0):
        raise ConfigError(f"train.final_pass_epochs: must be >= 0 (0 = off; passes over the validation users' "
                          f"newest windows after model selection) or 'auto' (from the training history "
                          f"lengths), got {t.final_pass_epochs!r}")
    if t.final_pass_targets not in FINAL_PASS_TARGETS:
        raise ConfigError(f"train.final_pass_targets: must be one of {', '.join(FINAL_PASS_TARGETS)}, "
                          f"got {t.final_pass_targets!r}")
    if t.final_pass_epochs and t.valid_users <= 0:
        raise ConfigError("train.final_pass_epochs: the final pass trains on the validation users' validation "
                          "items, but train.valid_users is 0; set it above 0 (default 20000) or set "
                          "train.final_pass_epochs: 0")


def _check_train(t: TrainConfig) -> None:
    for key in ("epochs", "batch_size", "d_model", "n_heads", "n_layers", "threads_per_rank", "eval_every"):
        _at_least(f"train.{key}", getattr(t, key), 1)
    if t.lr <= 0:
        raise ConfigError(f"train.lr: must be > 0, got {t.lr}")
    for key in ("weight_decay", "patience", "valid_users", "time_budget_s", "progress_every_s", "min_steps_per_epoch",
                "length_buckets"):
        _at_least(f"train.{key}", getattr(t, key), 0)
    if t.block not in BLOCKS:
        raise ConfigError(f"train.block: must be one of {', '.join(BLOCKS)}, got {t.block!r}")
    if not 0 < t.lr_plateau_factor <= 1:
        raise ConfigError(f"train.lr_plateau_factor: must be in (0, 1] (1 = the rate never drops on a plateau), "
                          f"got {t.lr_plateau_factor}")
    _at_least("train.lr_plateau_evals", t.lr_plateau_evals, 1)
    if t.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"train.lr_schedule: must be one of {', '.join(LR_SCHEDULES)}, got {t.lr_schedule!r}")
    if isinstance(t.dropout, str) and t.dropout != "auto":
        raise ConfigError(f"train.dropout: expected a number in [0, 1) or 'auto' (from data statistics), "
                          f"got {t.dropout!r}")
    if not isinstance(t.dropout, str) and not 0.0 <= t.dropout < 1.0:
        raise ConfigError(f"train.dropout: must be in [0, 1) or 'auto', got {t.dropout}")
    if not 0.0 <= t.item_id_dropout < 1.0:
        raise ConfigError(f"train.item_id_dropout: must be in [0, 1), got {t.item_id_dropout}")
    if not 0 <= t.relative_patience <= 1:
        raise ConfigError(f"train.relative_patience: must be in [0, 1] (0 = always train.patience; 0.5 = half the "
                          f"evaluations to the best one, at most train.patience), got {t.relative_patience}")
    if t.min_steps < 0:
        raise ConfigError(f"train.min_steps: must be >= 0 (0 = early stopping may end training at any epoch), "
                          f"got {t.min_steps}")
    if not 0 <= t.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing: must be in [0, 1) (0 = off; the share of the loss's weight spread "
                          f"over the items that are not the target), got {t.label_smoothing}")
    if not t.weight_average_epochs >= 0:
        raise ConfigError(f"train.weight_average_epochs: must be >= 0 (0 = off; the epochs of steps the averaged weights "
                          f"span), got {t.weight_average_epochs}")
    if not 0 <= t.adversarial_eps <= 1:
        raise ConfigError(f"train.adversarial_eps: must be between 0 (off) and 1 (a move as long as the item vector "
                          f"itself), got {t.adversarial_eps}")
    if t.target_span < 1:
        raise ConfigError(f"train.target_span: must be >= 1 (1 = the next item), got {t.target_span}")
    _check_after_selection(t)
    if t.loss_positions < 0:
        raise ConfigError(f"train.loss_positions: must be 0 (every position) or a number of positions per window, "
                          f"got {t.loss_positions}")
    if t.loss_negatives != "auto" and (isinstance(t.loss_negatives, str) or t.loss_negatives < 0):
        raise ConfigError(f"train.loss_negatives: must be 0 (full catalog), a number of sampled items or 'auto' "
                          f"(from the catalog's size and train.max_step_logits), got {t.loss_negatives!r}")
    if t.max_step_logits < 1:
        raise ConfigError(f"train.max_step_logits: must be >= 1 (logits a training step may compute), "
                          f"got {t.max_step_logits}")
    if t.num_proc < 1:
        raise ConfigError(f"train.num_proc: must be >= 1, got {t.num_proc}")
    if t.launcher not in LAUNCHERS:
        raise ConfigError(f"train.launcher: must be one of {', '.join(LAUNCHERS)}, got {t.launcher!r}")
    if t.resume not in RESUME_MODES:
        raise ConfigError(f"train.resume: must be one of {', '.join(RESUME_MODES)}, got {t.resume!r}")
    if t.d_model % t.n_heads:
        raise ConfigError(f"train.d_model ({t.d_model}) must be divisible by train.n_heads ({t.n_heads})")
    if t.retrain_every < 1:
        raise ConfigError(f"train.retrain_every: must be >= 1 (nights per model), got {t.retrain_every}")


def _check_score(sc: ScoreConfig) -> None:
    if sc.k < 1:
        raise ConfigError(f"score.k: must be >= 1, got {sc.k}")
    if sc.mode not in ("full", "incremental"):
        raise ConfigError(f"score.mode: expected 'full' or 'incremental', got {sc.mode!r}")
    if sc.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"score.device: expected auto|cpu|cuda, got {sc.device!r}")
    if not 0.0 <= sc.mmr_lambda <= 1.0:
        raise ConfigError(f"score.mmr_lambda: must be in [0, 1] (0 = off), got {sc.mmr_lambda}")
    if sc.max_per_category < 0 or sc.explain < 0 or sc.block_mb <= 0:
        raise ConfigError("score.max_per_category and score.explain must be >= 0 and score.block_mb > 0")
    if sc.objective not in OBJECTIVES:
        raise ConfigError(f"score.objective: must be one of {', '.join(OBJECTIVES)}, got {sc.objective!r}")
    if sc.new_item_slots < 0 or sc.new_item_slots > sc.k:
        raise ConfigError(f"score.new_item_slots: must be in [0, score.k={sc.k}], got {sc.new_item_slots}")
    if sc.explore_slots < 0 or sc.explore_slots > sc.k:
        raise ConfigError(f"score.explore_slots: must be in [0, score.k={sc.k}], got {sc.explore_slots}")
    if sc.explore_slots and sc.explore_pool <= sc.explore_slots:
        raise ConfigError(f"score.explore_pool: must be larger than score.explore_slots ({sc.explore_slots}) so "
                          f"the exploration slots have items to choose between, got {sc.explore_pool}")
    if sc.explore_slots and sc.new_item_slots:
        raise ConfigError("score.explore_slots and score.new_item_slots cannot both be on: new-item slots would "
                          "replace explored items and their propensities would be wrong; set one of them to 0")


def _check_ingest(i: IngestConfig) -> None:
    import codecs

    if i.format not in ("auto", "csv", "parquet", "json", "sasrec", "movielens"):
        raise ConfigError(f"ingest.format: expected auto|csv|parquet|json|sasrec|movielens, got {i.format!r}")
    if not i.event_types:
        raise ConfigError("ingest.event_types: must name at least one event type (rows of other types are quarantined)")
    if i.max_clock_skew_hours < 0:
        raise ConfigError(f"ingest.max_clock_skew_hours: must be >= 0, got {i.max_clock_skew_hours}")
    if i.stream_trigger_seconds <= 0:
        raise ConfigError(f"ingest.stream_trigger_seconds: must be > 0, got {i.stream_trigger_seconds}")
    try:
        datetime.fromisoformat(i.min_timestamp)
    except ValueError:
        raise ConfigError(f"ingest.min_timestamp: expected a date such as '1990-01-01', got {i.min_timestamp!r}") from None
    if len(i.rating_range) != 2 or i.rating_range[0] > i.rating_range[1]:
        raise ConfigError(f"ingest.rating_range: expected [low, high] with low <= high, got {i.rating_range}")
    try:
        codecs.lookup(i.csv_encoding)
    except LookupError:
        raise ConfigError(f"ingest.csv_encoding: unknown encoding {i.csv_encoding!r} (e.g. UTF-8, ISO-8859-1)") from None


def _check_catalog(catalog: str) -> None:
    if catalog and not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?", catalog):
        raise ConfigError(f"paths.catalog: expected '<catalog>.<schema>' or '<schema>' (letters, digits, '_'), "
                          f"got {catalog!r}; leave it empty to keep tables as folders under paths.root")


def _check_bandit(bc: BanditConfig, sc: ScoreConfig) -> None:
    k = sc.k
    if bc.pool <= k:
        raise ConfigError(f"bandit.pool: the candidates re-ranked into score.k = {k} items must be more than k, "
                          f"got {bc.pool}")
    if bc.reward not in ("revenue", "clicks"):
        raise ConfigError(f"bandit.reward: expected revenue|clicks, got {bc.reward!r}")
    if bc.alpha < 0 or bc.prior <= 0:
        raise ConfigError(f"bandit.alpha must be >= 0 and bandit.prior > 0, got {bc.alpha} and {bc.prior}")
    _at_least("bandit.days", bc.days, 1)
    _at_least("bandit.reward_days", bc.reward_days, 1)
    if bc.serve:
        # The re-ranker orders the pool itself and learns the value trade-off (its value feature);
        # slots filled by other rules, or lists carried from an earlier night, would not be its own.
        clashes = {"score.mode: full": sc.mode == "full", "score.objective: relevance": sc.objective == "relevance",
                   "score.explore_slots: 0": sc.explore_slots == 0, "score.new_item_slots: 0": sc.new_item_slots == 0}
        wrong = [need for need, ok in clashes.items() if not ok]
        if wrong:
            raise ConfigError(f"bandit.serve re-ranks every model-made list each night and learns the value of "
                              f"price itself, so it needs {', '.join(wrong)}; change those or set bandit.serve: false")


def _check_values(cfg: Config) -> None:
    """Checks that go beyond types: ranges and enumerations."""
    _check_finite(cfg)
    _check_catalog(cfg.paths.catalog)
    _check_ingest(cfg.ingest)
    _check_features(cfg.features)
    _check_train(cfg.train)
    _check_score(cfg.score)
    ev = cfg.evaluate
    if not (ev.als_ranks and ev.als_reg_params and ev.als_alphas) or min(ev.als_ranks) < 1 \
            or min(ev.als_reg_params) <= 0 or min(ev.als_alphas) < 0:
        raise ConfigError(f"evaluate.als_ranks, als_reg_params, als_alphas: each a non-empty list, ranks >= 1, "
                          f"regParams > 0 (a user's ALS vector is solved with it), alphas >= 0; got {ev.als_ranks}, "
                          f"{ev.als_reg_params}, {ev.als_alphas}")
    for key in ("exclude_purchased_days", "max_per_user"):
        _at_least(f"audience.{key}", getattr(cfg.audience, key), 0)
    if cfg.privacy.vacuum_retention_hours < 0:
        raise ConfigError(f"privacy.vacuum_retention_hours: must be >= 0, got {cfg.privacy.vacuum_retention_hours}")
    if cfg.spark.progress not in ("auto", "on", "off"):
        raise ConfigError(f"spark.progress: expected auto|on|off, got {cfg.spark.progress!r}")
    ab = cfg.abtest
    policies = ("popularity",) + OBJECTIVES
    if not ab.sim_variants or not set(ab.sim_variants) <= set(policies) or len(ab.sim_variants) > 26:
        raise ConfigError(f"abtest.sim_variants: one or more of {', '.join(policies)}, got {ab.sim_variants}")
    if not cfg.ope.policies or not set(cfg.ope.policies) <= set(policies):
        raise ConfigError(f"ope.policies: one or more of {', '.join(policies)}, got {cfg.ope.policies}")
    _check_bandit(cfg.bandit, cfg.score)
    if not cfg.refresh.trigger_seconds > 0:
        raise ConfigError(f"refresh.trigger_seconds: must be > 0, got {cfg.refresh.trigger_seconds}")
    if not 0 < cfg.ope.alpha < 1:
        raise ConfigError(f"ope.alpha: must be in (0, 1), got {cfg.ope.alpha}")
    _at_least("ope.reward_days", cfg.ope.reward_days, 1)
    if cfg.ope.night and cfg.ope.night != "latest":
        try:
            date.fromisoformat(cfg.ope.night)
        except ValueError:
            raise ConfigError(f"ope.night: expected a date such as '2026-07-01' or latest, got {cfg.ope.night!r}") from None
    if not (0 < ab.alpha < 1 and 0 < ab.power < 1):
        raise ConfigError(f"abtest.alpha and abtest.power must be in (0, 1), got {ab.alpha} and {ab.power}")
    if not cfg.evaluate.ks or min(cfg.evaluate.ks) < 1:
        raise ConfigError(f"evaluate.ks: cut-offs must be >= 1, got {cfg.evaluate.ks}")
    unknown = sorted(set(cfg.evaluate.baselines) - {"popularity", "als", "item_knn"})
    if unknown:
        raise ConfigError(f"evaluate.baselines: unknown baseline(s) {unknown} (use popularity, als, item_knn)")
    if not 0 <= cfg.evaluate.promote_tolerance < 1:
        raise ConfigError(f"evaluate.promote_tolerance: a share of the champion's NDCG@10 in [0, 1), "
                          f"got {cfg.evaluate.promote_tolerance}")
    for fmt in cfg.generate.formats:
        if fmt not in ("csv", "parquet", "json"):
            raise ConfigError(f"generate.formats: unknown format {fmt!r} (use csv, parquet, json)")


# ----------------------------------------------------------------------------------------------
# Loading and type checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return value checked against the annotation tp, or raise ConfigError naming key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner[:-1]:  # e.g. float | str: a number if it is one, else the string
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        return _coerce(value, inner[-1], key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {_type_name(args[0])}, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, args[0], f"{key} key"): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        if isinstance(value, bool):  # YAML reads on/off (and yes/no) as booleans: `resume: off`
            return "on" if value else "off"
        return str(value)
    raise ConfigError(f"{key}: unsupported config type {tp}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key(s): {', '.join(where + u for u in unknown)}; "
            f"valid keys{' in ' + prefix if prefix else ''}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'train.epochs=3' -> ('train.epochs', 3). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    import yaml  # only to read config text: the torch-only modules import this module without it

    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return key.strip(), value


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def absolute(p: str) -> str:
        if not p or is_uri(p):
            return p
        return str((base / p).resolve()) if not os.path.isabs(p) else p

    paths = dataclasses.replace(cfg.paths, root=absolute(cfg.paths.root), raw=absolute(cfg.paths.raw))
    ingest = dataclasses.replace(
        cfg.ingest,
        events=absolute(cfg.ingest.events) if cfg.ingest.events else os.path.join(paths.raw, "events"),
        users=absolute(cfg.ingest.users) if cfg.ingest.users else "",
        items=absolute(cfg.ingest.items) if cfg.ingest.items else "",
    )
    return dataclasses.replace(cfg, paths=paths, ingest=ingest)


def packaged_configs() -> dict[str, Path]:
    """{name: file} of the default configs that come with the package (recsys_spark/conf/*.yaml)."""
    folder = Path(__file__).resolve().parent / "conf"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def locate(path: str | os.PathLike) -> Path:
    """A config file: the path when it exists, else a packaged config by name (`--config databricks`)."""
    p = Path(path)
    if p.is_file():
        return p
    packaged = packaged_configs()
    if p.stem in packaged and str(p) in (p.stem, p.name, f"conf/{p.name}"):
        return packaged[p.stem]
    raise ConfigError(f"config file not found: {p} (pass a YAML file, or the name of a packaged config: "
                      f"{', '.join(sorted(packaged)) or 'none installed'})")


def load(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when path is None) and apply dotted overrides.

    Raises ConfigError for a missing file, unknown key, wrong type or out-of-range value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = locate(path)
        import yaml

        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level")
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    cfg = _build(Config, data, "")
    return _resolve_paths(cfg, Path.cwd())


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from Config.to_dict() output (e.g. stored in a checkpoint)."""
    return _build(Config, data, "")
