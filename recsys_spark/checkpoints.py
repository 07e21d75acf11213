"""Checkpoints: one folder per training run, `<models_dir>/<run_id>/{model.pt, manifest.json}`.

`model.pt` holds the weights (item features and scaling statistics are buffers of the model, so a
checkpoint scores a catalog on its own), the manifest and the full config; `manifest.json` is the
same manifest for people and tools (run id, creation time, model and training config, the Delta
versions trained on, per-epoch history, the epoch kept) plus the sha256 of model.pt.

Safety: a folder is written under a temporary name and renamed, so a reader never sees half a
checkpoint, and `latest` skips temporary folders and folders whose manifest cannot be read.
`load` unpickles with `weights_only=True` (tensors and plain containers only: a planted pickle cannot
run code; torch >= 2.6, whose weights-only loader is not affected by CVE-2025-32434) and refuses a
model.pt whose sha256 differs from the manifest's. Pure torch: never imports pyspark.

A run in progress also keeps a resume state, `<models_dir>/<run_id>.resume/{state.pt, state.json}`:
rank 0 replaces it after every epoch (weights, optimizer, every rank's RNG, the epoch reached and
the early-stopping record; state.json says what it was trained on, to match a rerun against) and
removes it once the checkpoint is written. It is never a model: `latest` skips it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import shutil
import uuid
from datetime import datetime, timezone

import torch

from recsys_spark.model import AttentionRecommender, ModelConfig, item_features_of, statistics_of

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
TEMPORARY_MARK = ".tmp-"  # in the name of a folder still being written
RESUME_MARK = ".resume"  # the end of the name of a run's resume-state folder
RESUME_STATE, RESUME_META = "state.pt", "state.json"


class CheckpointError(ValueError):
    """A checkpoint folder that must not be served: unreadable, incomplete or altered."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(models_dir: str, run_id: str, model: AttentionRecommender, manifest: dict, full_config: dict) -> str:
    """Write the checkpoint folder of run_id atomically; returns its path. manifest: model_config,
    train_config, data_versions, history, best_epoch (run_id and created_at are added here)."""
    final = os.path.join(models_dir, run_id)
    tmp = final + TEMPORARY_MARK + uuid.uuid4().hex[:6]
    os.makedirs(tmp)
    manifest = {"run_id": run_id, "created_at": datetime.now(timezone.utc).isoformat(), **manifest}
    torch.save({"state_dict": model.state_dict(), **manifest, "config": full_config}, os.path.join(tmp, MODEL_FILE))
    with open(os.path.join(tmp, MANIFEST_FILE), "w") as fh:
        json.dump({**manifest, "weights_sha256": _sha256(os.path.join(tmp, MODEL_FILE))}, fh, indent=2)
    os.rename(tmp, final)
    return final


def load(path: str) -> tuple[AttentionRecommender, dict]:
    """(model in eval mode, checkpoint dict) from a checkpoint folder alone. Raises CheckpointError
    when model.pt does not match the manifest's sha256 or holds anything but weights and plain data."""
    weights = os.path.join(path, MODEL_FILE)
    expected = manifest(path).get("weights_sha256") if os.path.isfile(os.path.join(path, MANIFEST_FILE)) else None
    if expected is not None and _sha256(weights) != expected:
        raise CheckpointError(f"{weights} does not match the sha256 in its manifest.json (altered or partly "
                              f"written): not loading it. Retrain, or pin another model with score.model_run_id.")
    try:
        ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # what weights-only unpickling raises for anything else
        raise CheckpointError(f"{weights} holds more than weights and plain data, so it is not loaded "
                              f"(weights-only unpickling refused it: {str(exc).splitlines()[0]}). Retrain, or pin "
                              f"another model with score.model_run_id.") from None
    state = ckpt["state_dict"]
    model = AttentionRecommender(ModelConfig(**ckpt["model_config"]), item_features_of(state), statistics_of(state))
    model.load_state_dict(state)
    model.eval()
    return model, ckpt


@functools.lru_cache(maxsize=2)
def cached_model(path: str) -> AttentionRecommender:
    """The model of a checkpoint, loaded once per Python process (executors score many partitions)."""
    return load(path)[0]


def calibration(ckpt: dict) -> dict:
    """The checkpoint's calibration (recsys_spark.calibration): method, temperature, new_share and
    isotonic knots; temperature 1, every next item new and no isotonic map when it was not fitted."""
    return {"method": "none", "temperature": 1.0, "new_share": 1.0, **(ckpt.get("calibration") or {})}


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
    for name in sorted(os.listdir(models_dir)) if os.path.isdir(models_dir) else []:
        folder = os.path.join(models_dir, name)
        complete = all(os.path.isfile(os.path.join(folder, f)) for f in (MANIFEST_FILE, MODEL_FILE))
        if TEMPORARY_MARK in name or name.endswith(RESUME_MARK) or not complete:
            continue
        try:
            runs.append((manifest(folder)["created_at"], name))
        except (ValueError, KeyError, OSError) as exc:
            logger.warning(f"skipping checkpoint folder {folder}: unreadable manifest.json ({exc})")
    if not runs:
        raise FileNotFoundError(f"no trained model under {models_dir}; run the 'train' stage first")
    return os.path.join(models_dir, max(runs)[1])


def _resume_folder(models_dir: str, run_id: str) -> str:
    return os.path.join(models_dir, run_id + RESUME_MARK)


def save_resume(models_dir: str, run_id: str, state: dict, fingerprint: dict) -> None:
    """Replace run_id's resume state (each file written under a temporary name, then renamed)."""
    folder = _resume_folder(models_dir, run_id)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, RESUME_STATE + TEMPORARY_MARK + uuid.uuid4().hex[:6])
    torch.save(state, tmp)
    os.replace(tmp, os.path.join(folder, RESUME_STATE))
    meta = {"run_id": run_id, "epoch": state["epoch"], "saved_at": datetime.now(timezone.utc).isoformat(),
            "fingerprint": fingerprint}
    with open(tmp, "w") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(folder, RESUME_META))


def load_resume(models_dir: str, run_id: str, fingerprint: dict):
    """run_id's resume state, or None when it has none. Raises CheckpointError when the state was
    saved by a run on other data or settings (it cannot continue this one)."""
    folder = _resume_folder(models_dir, run_id)
    if not os.path.isfile(os.path.join(folder, RESUME_STATE)) or not os.path.isfile(os.path.join(folder, RESUME_META)):
        return None
    with open(os.path.join(folder, RESUME_META)) as fh:
        saved = json.load(fh)["fingerprint"]
    if saved != fingerprint:
        differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        raise CheckpointError(f"{folder} was saved by a run with other {', '.join(differ)}: it cannot continue this "
                              f"run. Delete the folder, or set train.resume: off.")
    return torch.load(os.path.join(folder, RESUME_STATE), map_location="cpu", weights_only=True)


def _resume_states(models_dir: str) -> list[tuple[str, dict]]:
    """(folder, state.json) of every resume state under models_dir."""
    out = []
    for name in sorted(os.listdir(models_dir)) if os.path.isdir(models_dir) else []:
        meta = os.path.join(models_dir, name, RESUME_META)
        if not name.endswith(RESUME_MARK) or not os.path.isfile(meta):
            continue
        try:
            with open(meta) as fh:
                out.append((os.path.join(models_dir, name), json.load(fh)))
        except (ValueError, OSError) as exc:
            logger.warning(f"skipping resume state {meta}: unreadable ({exc})")
    return out


def find_resumable(models_dir: str, fingerprint: dict) -> tuple[str, int] | None:
    """(run_id, epochs done) of the newest resume state saved with this fingerprint, or None."""
    found = [(saved["saved_at"], saved["run_id"], int(saved["epoch"])) for folder, saved in _resume_states(models_dir)
             if saved.get("fingerprint") == fingerprint and os.path.isfile(os.path.join(folder, RESUME_STATE))]
    return max(found)[1:] if found else None


def drop_stale_resumes(models_dir: str, fingerprint: dict) -> list[str]:
    """Remove the resume states saved on other data or settings (no run can continue them any more:
    the data moved on); returns the run ids removed."""
    stale = [(folder, saved["run_id"]) for folder, saved in _resume_states(models_dir)
             if saved.get("fingerprint") != fingerprint]
    for folder, _ in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return [run_id for _, run_id in stale]


def drop_resume(models_dir: str, run_id: str) -> None:
    shutil.rmtree(_resume_folder(models_dir, run_id), ignore_errors=True)
