"""MLflow tracking of train and evaluate runs.

Every train run logs its parameters (training and model config), per-epoch loss / validation
NDCG@10 / seconds, the source Delta table versions and the checkpoint directory as an artifact;
every evaluate run logs each model's metrics (`<model>.<metric>_at_<k>`), beyond-accuracy metrics and
fairness gaps, tagged with the model run id so the two can be joined. The store is
`tracking.uri`, by default a local file store at <paths.root>/mlruns
(`mlflow ui --backend-store-uri <paths.root>/mlruns` shows it); set a server URI or `databricks` to
log there instead.

Tracking never destroys a run's output: the Delta tables and the checkpoint are written first. A
tracking failure stops the stage with the reason only when `tracking.required` is true; otherwise it
prints a warning naming the store and the error.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

from recsys_spark.config import Config


def tracking_uri(cfg: Config) -> str:
    return cfg.tracking.uri or "file:" + cfg.local_dir("mlruns")


def _mlflow(cfg: Config):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    mlflow.set_experiment(cfg.tracking.experiment)
    return mlflow


def _guard(cfg: Config, what: str, fn) -> Optional[str]:
    if not cfg.tracking.enabled:
        return None
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reported below, or re-raised when required
        if cfg.tracking.required:
            raise RuntimeError(f"MLflow tracking of the {what} run failed ({tracking_uri(cfg)}): {exc}") from exc
        print(f"warning: MLflow tracking of the {what} run failed ({tracking_uri(cfg)}): {exc}; "
              f"the run's tables and checkpoint are written, only its tracking record is missing",
              file=sys.stderr, flush=True)
        return None


def _flat(prefix: str, d: dict) -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(key + ".", v))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v)
    return out


def log_train(cfg: Config, checkpoint: str) -> Optional[str]:
    """Log a finished training run from its checkpoint directory; returns the MLflow run id."""

    def go() -> str:
        mlflow = _mlflow(cfg)
        with open(os.path.join(checkpoint, "manifest.json")) as fh:
            m = json.load(fh)
        with mlflow.start_run(run_name=m["run_id"], tags={"stage": "train", "model_run_id": m["run_id"]}) as run:
            mlflow.log_params({**_flat("train.", m["train_config"]), **_flat("model.", m["model_config"])})
            for h in m["history"]:
                mlflow.log_metrics({key.replace("@", "_at_"): float(h[key]) for key in ("loss", "seconds", "valid_ndcg@10", "lr")
                                    if h.get(key) is not None}, step=int(h["epoch"]))
            mlflow.log_metric("best_epoch", m["best_epoch"])
            mlflow.log_dict(m["data_versions"], "data_versions.json")
            mlflow.log_artifacts(checkpoint, artifact_path="checkpoint")
            return run.info.run_id

    return _guard(cfg, "train", go)


def log_evaluate(cfg: Config, result: dict) -> Optional[str]:
    """Log an evaluation (evaluate.run's result); returns the MLflow run id."""

    def go() -> str:
        mlflow = _mlflow(cfg)
        tags = {"stage": "evaluate", "model_run_id": result["model_run_id"], "eval_id": result["eval_id"]}
        with mlflow.start_run(run_name=result["eval_id"], tags=tags) as run:
            mlflow.log_params({"ks": json.dumps(cfg.evaluate.ks), "baselines": json.dumps(cfg.evaluate.baselines),
                               "n_users": result["n_users"]})
            metrics = {}
            for model, m in result["metrics"].items():
                metrics.update({f"{model}.{key.replace('@', '_at_')}": float(v) for key, v in m.items() if key != "n_users"})
            for model, by_k in result.get("beyond", {}).items():
                for k, b in by_k.items():
                    metrics.update({f"{model}.{key}_at_{k}": float(v) for key, v in b.items()})
            for model, (_, gaps, _) in result.get("slices", {}).items():
                for kind, g in gaps.items():
                    metrics[f"{model}.ndcg_gap.{kind}"] = float(g["gap"])
            for model, c in result.get("calibration", {}).items():
                metrics.update({f"{model}.calibration.{key}": float(c[key])
                                for key in ("log_loss", "brier", "ece", "auc", "temperature")})
            mlflow.log_metrics(metrics)
            return run.info.run_id

    return _guard(cfg, "evaluate", go)
