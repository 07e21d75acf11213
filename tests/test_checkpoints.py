"""Checkpoints: a folder rebuilds the model on its own, is written atomically, the newest wins, and
checkpoints written before the model had named parts still load."""
import json
import os

import pytest
import torch

from recsys_spark import checkpoints
from recsys_spark.checkpoints import load as load_checkpoint
from recsys_spark.model import _FLAT_NAMES
from test_model import _content_model


def test_checkpoint_round_trip_keeps_features_and_scaling(tmp_path):
    # Scoring rebuilds the model from the checkpoint alone: item features and the scaling
    # statistics (profile and item numbers, title IDF) must come back exactly, so a user or an
    # item is transformed at scoring as it was in training.
    m, feats, stats = _content_model()
    m.eval()
    (tmp_path / "run").mkdir()
    torch.save({"state_dict": m.state_dict(), "model_config": m.cfg.to_dict()}, tmp_path / "run" / "model.pt")
    loaded, _ = load_checkpoint(str(tmp_path / "run"))
    for name, value in stats.items():
        part = loaded.behaviour if name.startswith("profile") else loaded.items
        assert torch.equal(getattr(part, f"stat_{name}"), value.float())
    seq, pc, pn = torch.tensor([[0, 3, 5, 7]]), torch.tensor([[2, 1]]), torch.tensor([[1.5, 0.0, 9.0]])
    assert torch.allclose(loaded.item_vectors(), m.item_vectors())
    assert torch.allclose(loaded.user_vectors(seq, pc, pn), m.user_vectors(seq, pc, pn))
    # The stored statistics are applied: a model with identity statistics fed pre-standardised
    # numbers gives the same user vector.
    ident, _, _ = _content_model()
    ident.load_state_dict({**m.state_dict(), "behaviour.stat_profile_num_mean": torch.zeros(3),
                           "behaviour.stat_profile_num_std": torch.ones(3)})
    ident.eval()
    z = (pn - stats["profile_num_mean"]) / stats["profile_num_std"]
    assert torch.allclose(ident.user_vectors(seq, pc, z), m.user_vectors(seq, pc, pn), atol=1e-6)


def _save(models, run_id, created_at):
    m, _, _ = _content_model()
    path = checkpoints.save(str(models), run_id, m, {"model_config": m.cfg.to_dict(), "history": []}, {})
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    manifest["created_at"] = created_at
    json.dump(manifest, open(os.path.join(path, "manifest.json"), "w"))
    return m


def test_latest_is_the_newest_complete_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the 'train' stage first"):
        checkpoints.latest(str(tmp_path / "models"))
    _save(tmp_path / "models", "attn-a", "2026-01-02T00:00:00")
    _save(tmp_path / "models", "attn-b", "2026-01-01T00:00:00")
    (tmp_path / "models" / "attn-c.tmp-123456").mkdir()  # a save that never finished
    assert os.path.basename(checkpoints.latest(str(tmp_path / "models"))) == "attn-a"
    assert os.path.basename(checkpoints.latest(str(tmp_path / "models"), "attn-b")) == "attn-b"
    with pytest.raises(FileNotFoundError, match="no checkpoint attn-z"):
        checkpoints.latest(str(tmp_path / "models"), "attn-z")


def test_a_state_dict_with_the_flat_parameter_names_loads(tmp_path):
    m, _, _ = _content_model()
    m.eval()
    flat = {}
    for key, value in m.state_dict().items():
        for old, new in _FLAT_NAMES.items():
            if key.startswith(new):
                key = old + key[len(new):]
                break
        flat[key] = value
    assert "item_emb.weight" in flat and "pos_emb.weight" in flat
    (tmp_path / "run").mkdir()
    torch.save({"state_dict": flat, "model_config": m.cfg.to_dict()}, tmp_path / "run" / "model.pt")
    loaded, _ = load_checkpoint(str(tmp_path / "run"))
    seq, pc, pn = torch.tensor([[0, 3, 5, 7]]), torch.tensor([[2, 1]]), torch.tensor([[1.5, 0.0, 9.0]])
    assert torch.equal(loaded.user_vectors(seq, pc, pn), m.user_vectors(seq, pc, pn))
