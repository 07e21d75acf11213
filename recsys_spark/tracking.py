"""MLflow tracking of train and evaluate runs.

Every train run logs its parameters (training and model config), per-epoch loss / validation
NDCG@10 / seconds, the source Delta table versions, and the model: an MLflow pyfunc with a signature
(recsys_spark.mlflow_model; the checkpoint is its artifact), registered under
`tracking.registered_model` with the tag model_run_id. The promotion gate (recsys_spark.promotion)
points the registry alias `champion` at the version that serves;
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

import contextlib
import io
import json
import logging
import os
import tempfile
from typing import Optional

from recsys_spark.config import Config

logger = logging.getLogger(__name__)


CHAMPION_ALIAS = "champion"


def tracking_uri(cfg: Config) -> str:
    return cfg.tracking.uri or "file:" + cfg.local_dir("mlruns")


def _mlflow(cfg: Config):
    import mlflow

    # MLflow sets its own logger to INFO when imported; follow the process's level instead.
    logging.getLogger("mlflow").setLevel(logging.getLogger().getEffectiveLevel())
    mlflow.set_tracking_uri(tracking_uri(cfg))
    if cfg.tracking.registry_uri:
        mlflow.set_registry_uri(cfg.tracking.registry_uri)
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
        logger.warning(f"MLflow tracking of the {what} run failed ({tracking_uri(cfg)}): {exc}; "
              f"the run's tables and checkpoint are written, only its tracking record is missing")
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
            logged = _log_model(mlflow, checkpoint)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its prints
            version = mlflow.register_model(logged.model_uri, cfg.tracking.registered_model,
                                            tags={"model_run_id": m["run_id"]})
        logger.info(f"registered {m['run_id']} as version {version.version} of model {cfg.tracking.registered_model} "
                    f"({tracking_uri(cfg)})")
        return run.info.run_id

    return _guard(cfg, "train", go)


def _log_model(mlflow, checkpoint: str):
    """Log the checkpoint as a pyfunc model (models from code, with the package as its code)."""
    import numpy
    import pandas
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec(Array("long"), "history")]),
                               outputs=Schema([ColSpec(Array("long"), "items"), ColSpec(Array("float"), "scores")]),
                               params=ParamSchema([ParamSpec("k", "long", 10)]))
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}",
                    f"pandas=={pandas.__version__}", f"mlflow=={mlflow.__version__}"]
    with _package_folder() as package:
        return mlflow.pyfunc.log_model("model", python_model=os.path.join(package, "mlflow_model.py"),
                                       artifacts={"checkpoint": checkpoint}, signature=signature,
                                       code_paths=[package], pip_requirements=requirements)


@contextlib.contextmanager
def _package_folder():
    """A folder holding this package's files: its own, or a temporary copy when it is imported from
    an archive (a wheel shipped with spark-submit --py-files), since MLflow copies files by path."""
    import importlib.resources

    import recsys_spark

    folder = os.path.dirname(recsys_spark.__file__)
    if os.path.isdir(folder):
        yield folder
        return
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "recsys_spark")
        os.makedirs(copy)
        for entry in importlib.resources.files(recsys_spark).iterdir():
            if entry.is_file() and entry.name.endswith(".py"):
                with open(os.path.join(copy, entry.name), "wb") as fh:
                    fh.write(entry.read_bytes())
        yield copy


def set_champion(cfg: Config, model_run_id: str) -> None:
    """Point the registry alias `champion` at the registered version of model_run_id."""

    def go() -> None:
        mlflow = _mlflow(cfg)
        client = mlflow.MlflowClient()
        name = cfg.tracking.registered_model
        versions = [v for v in client.search_model_versions(f"name='{name}'")
                    if v.tags.get("model_run_id") == model_run_id]
        if not versions:
            raise LookupError(f"model {model_run_id} is not registered under {name!r} (was tracking off when it "
                              f"was trained?)")
        client.set_registered_model_alias(name, CHAMPION_ALIAS, versions[0].version)

    _guard(cfg, "promotion", go)


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
            for baseline, p in result.get("paired", {}).items():
                metrics[f"attention_minus_{baseline}.ndcg_at_10"] = p["ndcg@10_diff"]
                if p["halfwidth"] is not None:
                    metrics[f"attention_minus_{baseline}.ndcg_at_10_halfwidth"] = p["halfwidth"]
            mlflow.log_metrics(metrics)
            return run.info.run_id

    return _guard(cfg, "evaluate", go)
