"""Which model serves: the promotion gate between training and scoring.

A trained model is a candidate until an evaluation promotes it. `evaluate` measures the candidate
(the newest checkpoint) and the current champion on the same test users with full ranking, and
promotes the candidate only when its NDCG@10 is not below the champion's by more than
`evaluate.promote_tolerance` (a share of the champion's figure). The first model is held to the
popularity baseline the same way. Every decision is a row of gold/model_promotions, and the champion
is the candidate of the newest promoting row; the MLflow registry's `champion` alias follows it when
tracking is on (recsys_spark.tracking).

`score`, `audience` and `abtest` serve the champion, or `score.model_run_id` when an operator pins
one. A model that failed the gate, or was never evaluated, never reaches the recommendations.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import checkpoints, schema, tables
from recsys_spark.config import Config
from recsys_spark.table_schemas import MODEL_PROMOTIONS_SCHEMA
from recsys_spark.tracking import set_champion

GATE_METRIC = "ndcg@10"


class NoChampionError(FileNotFoundError):
    """No model has passed the promotion gate yet, and none is pinned."""


@dataclass(frozen=True)
class Decision:
    candidate: str  # run id of the model evaluated
    candidate_value: float
    reference: str  # "champion" or "popularity"
    reference_run: str  # the champion's run id; empty for popularity
    reference_value: float
    tolerance: float
    promoted: bool
    # The candidate's figure minus the reference's over the same test users, with its 95% interval
    # (evaluate.paired_difference): whether the gap the gate saw is more than noise.
    paired: Optional[dict] = None

    @property
    def reason(self) -> str:
        floor = self.reference_value * (1.0 - self.tolerance)
        against = f"the champion {self.reference_run}" if self.reference == "champion" else "popularity"
        verdict = "promoted" if self.promoted else "not promoted: the champion keeps serving" \
            if self.reference == "champion" else "not promoted: no model serves until one passes"
        paired = (f"; paired over {self.paired['users']} users {self.paired['ndcg@10_diff']:+.4f} "
                  f"± {self.paired['halfwidth'] or 0:.4f}" if self.paired else "")
        return (f"candidate {self.candidate} {GATE_METRIC} {self.candidate_value:.4f} vs {against} "
                f"{self.reference_value:.4f} (floor {floor:.4f} at evaluate.promote_tolerance "
                f"{self.tolerance:g}{paired}): {verdict}")


def _decisions(spark: SparkSession, cfg: Config):
    loc = tables.location(cfg.tables_root, schema.MODEL_PROMOTIONS)
    return tables.read(spark, loc) if tables.exists(spark, loc) else None


def champion_run_id(spark: SparkSession, cfg: Config) -> Optional[str]:
    """Run id of the serving champion: the candidate of the newest promoting decision."""
    decisions = _decisions(spark, cfg)
    row = None if decisions is None else (decisions.where(F.col("promoted")).orderBy(F.col("decided_at").desc())
                                          .select("candidate_run_id").first())
    return row.candidate_run_id if row else None


def judged(spark: SparkSession, cfg: Config, run_id: str) -> bool:
    """Whether an evaluation has decided on run_id already."""
    decisions = _decisions(spark, cfg)
    return decisions is not None and decisions.where(F.col("candidate_run_id") == run_id).limit(1).count() > 0


def checkpoint_of(cfg: Config, run_id: Optional[str]) -> Optional[str]:
    """The checkpoint folder of run_id under models_dir, or None when there is none (or no run id)."""
    path = os.path.join(cfg.models_dir, run_id or "")
    return path if run_id and os.path.isfile(os.path.join(path, checkpoints.MANIFEST_FILE)) else None


def evaluated_checkpoint(spark: SparkSession, cfg: Config) -> str:
    """The model an evaluation measures: score.model_run_id when pinned; else the newest checkpoint
    while no evaluation has judged it (a candidate); else the champion (a night without training
    monitors the serving model; a rejected candidate is not judged again on other data)."""
    newest = checkpoints.latest(cfg.models_dir, cfg.score.model_run_id)
    if cfg.score.model_run_id or not judged(spark, cfg, os.path.basename(newest)):
        return newest
    return checkpoint_of(cfg, champion_run_id(spark, cfg)) or newest


def serving_checkpoint(spark: SparkSession, cfg: Config) -> str:
    """The checkpoint folder that serves: score.model_run_id when pinned, else the champion."""
    if cfg.score.model_run_id:
        return checkpoints.latest(cfg.models_dir, cfg.score.model_run_id)
    champion = champion_run_id(spark, cfg)
    if champion is None:
        raise NoChampionError(
            f"no model has passed the promotion gate yet ({tables.location(cfg.tables_root, schema.MODEL_PROMOTIONS)}): "
            f"run 'evaluate' after 'train' (the nightly does), or pin a model with score.model_run_id")
    path = checkpoint_of(cfg, champion)
    if path is None:
        raise NoChampionError(f"the champion model {champion} has no checkpoint under {cfg.models_dir} any more; "
                              f"restore it, or pin another model with score.model_run_id")
    return path


def decide(candidate: str, candidate_value: float, reference: str, reference_run: str, reference_value: float,
           tolerance: float, paired: Optional[dict] = None) -> Decision:
    """The gate: promoted when candidate >= reference x (1 - tolerance). A NaN figure never passes."""
    passes = candidate_value == candidate_value and candidate_value >= reference_value * (1.0 - tolerance)
    return Decision(candidate, float(candidate_value), reference, reference_run, float(reference_value),
                    float(tolerance), bool(passes), paired)


def record(spark: SparkSession, cfg: Config, decision: Decision, eval_id: str) -> None:
    """Append the decision to gold/model_promotions (the champion moves only through this row),
    then point the MLflow registry's champion alias at a promoted candidate."""
    row = (eval_id, decision.candidate, decision.reference, decision.reference_run or None, GATE_METRIC,
           decision.candidate_value, decision.reference_value, decision.tolerance, decision.promoted,
           decision.reason, datetime.now(timezone.utc).replace(tzinfo=None))
    tables.append(spark.createDataFrame([row], MODEL_PROMOTIONS_SCHEMA),
                  tables.location(cfg.tables_root, schema.MODEL_PROMOTIONS))
    if decision.promoted:
        set_champion(cfg, decision.candidate)
