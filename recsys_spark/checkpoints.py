"""Checkpoints: one folder per training run, `<models_dir>/<run_id>/{model.pt, manifest.json}`.

`model.pt` holds the weights (item features and scaling statistics are buffers of the model, so a
checkpoint scores a catalog on its own), the manifest and the full config; `manifest.json` is the
same manifest for people and tools (run id, creation time, model and training config, the Delta
versions trained on, per-epoch history, the epoch kept). A folder is written under a temporary name
and renamed, so a reader never sees half a checkpoint. Pure torch: never imports pyspark.
"""
from __future__ import annotations

import functools
import json
import os
import uuid
from datetime import datetime, timezone

import torch

from recsys_spark.model import AttentionRecommender, ModelConfig, item_features_of, statistics_of

MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"


def save(models_dir: str, run_id: str, model: AttentionRecommender, manifest: dict, full_config: dict) -> str:
    """Write the checkpoint folder of run_id atomically; returns its path. manifest: model_config,
    train_config, data_versions, history, best_epoch (run_id and created_at are added here)."""
    final = os.path.join(models_dir, run_id)
    tmp = final + ".tmp-" + uuid.uuid4().hex[:6]
    os.makedirs(tmp)
    manifest = {"run_id": run_id, "created_at": datetime.now(timezone.utc).isoformat(), **manifest}
    torch.save({"state_dict": model.state_dict(), **manifest, "config": full_config}, os.path.join(tmp, MODEL_FILE))
    with open(os.path.join(tmp, MANIFEST_FILE), "w") as fh:
        json.dump(manifest, fh, indent=2)
    os.rename(tmp, final)
    return final


def load(path: str) -> tuple[AttentionRecommender, dict]:
    """(model in eval mode, checkpoint dict) from a checkpoint folder alone."""
    ckpt = torch.load(os.path.join(path, MODEL_FILE), map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    model = AttentionRecommender(ModelConfig(**ckpt["model_config"]), item_features_of(state), statistics_of(state))
    model.load_state_dict(state)
    model.eval()
    return model, ckpt


@functools.lru_cache(maxsize=2)
def cached_model(path: str) -> AttentionRecommender:
    """The model of a checkpoint, loaded once per Python process (executors score many partitions)."""
    return load(path)[0]


def manifest(path: str) -> dict:
    with open(os.path.join(path, MANIFEST_FILE)) as fh:
        return json.load(fh)


def latest(models_dir: str, run_id: str = "") -> str:
    """The checkpoint folder of run_id, or the newest complete one under models_dir."""
    if run_id:
        path = os.path.join(models_dir, run_id)
        if not os.path.isfile(os.path.join(path, MANIFEST_FILE)):
            raise FileNotFoundError(f"no checkpoint {run_id} under {models_dir} (score.model_run_id)")
        return path
    runs = []
    if os.path.isdir(models_dir):
        for name in os.listdir(models_dir):
            if os.path.isfile(os.path.join(models_dir, name, MANIFEST_FILE)):
                runs.append((manifest(os.path.join(models_dir, name))["created_at"], name))
    if not runs:
        raise FileNotFoundError(f"no trained model under {models_dir}; run the 'train' stage first")
    return os.path.join(models_dir, max(runs)[1])
