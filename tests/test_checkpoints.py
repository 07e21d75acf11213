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
    m, _, _ = _content_model(vectors=False)  # the flat layout predates item vectors
    m.eval()
    flat = {}
    for key, value in m.state_dict().items():
        if "_vec" in key:  # nor did it hold the item-vector tables
            continue
        for old, new in _FLAT_NAMES.items():
            if key.startswith(new):
                key = old + key[len(new):]
                break
        flat[key] = value
    assert "item_emb.weight" in flat and "pos_emb.weight" in flat
    # Every key is a name of the flat layout, so a name the mapping misses fails the strict load below.
    legacy = ("item_emb.", "unk_id", "pos_emb.", "cat_emb.", "brand_emb.", "tag_emb.", "item_num_proj.", "text_emb.",
              "encoder.", "norm.", "attr_emb.", "profile_type", "num_proj.", "gate.", "feat_", "stat_")
    assert all(k.startswith(legacy) for k in flat), [k for k in flat if not k.startswith(legacy)]
    (tmp_path / "run").mkdir()
    torch.save({"state_dict": flat, "model_config": m.cfg.to_dict()}, tmp_path / "run" / "model.pt")
    loaded, _ = load_checkpoint(str(tmp_path / "run"))
    seq, pc, pn = torch.tensor([[0, 3, 5, 7]]), torch.tensor([[2, 1]]), torch.tensor([[1.5, 0.0, 9.0]])
    assert torch.equal(loaded.user_vectors(seq, pc, pn), m.user_vectors(seq, pc, pn))


class _RunsCode:
    """A pickle payload that runs a command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_checkpoint_cannot_run_code(tmp_path):
    m, _, _ = _content_model()
    path = tmp_path / "models" / "attn-evil"
    path.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": m.state_dict(), "model_config": m.cfg.to_dict(), "payload": _RunsCode(marker)},
               path / "model.pt")
    (path / "manifest.json").write_text(json.dumps({"run_id": "attn-evil", "created_at": "2026-01-01T00:00:00"}))
    with pytest.raises(checkpoints.CheckpointError, match="more than weights and plain data"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_weights_that_differ_from_the_manifest_are_refused(tmp_path):
    m = _save(tmp_path / "models", "attn-a", "2026-01-02T00:00:00")
    path = tmp_path / "models" / "attn-a"
    assert len(json.load(open(path / "manifest.json"))["weights_sha256"]) == 64
    load_checkpoint(str(path))  # intact: loads
    other = {"state_dict": {k: v + 1 if v.is_floating_point() else v for k, v in m.state_dict().items()},
             "model_config": m.cfg.to_dict()}
    torch.save(other, path / "model.pt")
    with pytest.raises(checkpoints.CheckpointError, match="does not match the sha256"):
        load_checkpoint(str(path))


def test_temporary_and_unreadable_folders_are_skipped(tmp_path, caplog):
    models = tmp_path / "models"
    _save(models, "attn-a", "2026-01-01T00:00:00")
    late = models / "attn-b.tmp-1a2b3c"  # a save interrupted before its rename, newest of all
    late.mkdir()
    (late / "manifest.json").write_text('{"run_id": "attn-b", "created_at": "2026-12-')
    broken = models / "attn-c"  # truncated by hand or by a full disk
    broken.mkdir()
    (broken / "manifest.json").write_text('{"run_id": "attn-c", "crea')
    (broken / "model.pt").write_bytes(b"")
    weightless = models / "attn-d"  # a manifest whose weights were deleted
    weightless.mkdir()
    (weightless / "manifest.json").write_text('{"run_id": "attn-d", "created_at": "2026-12-31T00:00:00"}')
    assert os.path.basename(checkpoints.latest(str(models))) == "attn-a"
    assert "skipping checkpoint folder" in caplog.text


def test_a_resume_state_is_found_by_what_it_was_trained_on_and_is_never_a_model(tmp_path):
    models = str(tmp_path / "models")
    data_a = {"data_versions": {"train": 3}, "ranks": 2}
    checkpoints.save_resume(models, "attn-x", {"epoch": 2, "weights": torch.ones(3)}, data_a)
    assert checkpoints.find_resumable(models, data_a) == ("attn-x", 2)
    # Another feature set (or other settings) cannot continue it: not found, and loading it says why.
    data_b = {"data_versions": {"train": 4}, "ranks": 2}
    assert checkpoints.find_resumable(models, data_b) is None
    with pytest.raises(checkpoints.CheckpointError, match="other data_versions"):
        checkpoints.load_resume(models, "attn-x", data_b)
    assert torch.equal(checkpoints.load_resume(models, "attn-x", data_a)["weights"], torch.ones(3))
    with pytest.raises(FileNotFoundError, match="no trained model"):
        checkpoints.latest(models)
    checkpoints.drop_resume(models, "attn-x")
    assert checkpoints.find_resumable(models, data_a) is None and checkpoints.load_resume(models, "attn-x", data_a) is None


def test_resume_states_of_other_data_are_dropped_and_the_matching_one_kept(tmp_path):
    models = str(tmp_path / "models")
    checkpoints.save_resume(models, "attn-old", {"epoch": 4}, {"data_versions": {"train": 1}})
    checkpoints.save_resume(models, "attn-now", {"epoch": 1}, {"data_versions": {"train": 2}})
    assert checkpoints.drop_stale_resumes(models, {"data_versions": {"train": 2}}) == ["attn-old"]
    assert sorted(os.listdir(models)) == ["attn-now" + checkpoints.RESUME_MARK]
