"""MLflow tracking: a broken store never loses a run's output, and fails it only when required."""
import pytest

from conftest import make_config
from recsys_spark.tracking import log_evaluate

RESULT = {"eval_id": "eval-x", "model_run_id": "attn-x", "n_users": 3,
          "metrics": {"attention": {"ndcg@10": 0.5, "n_users": 3}}}


def test_evaluation_is_logged_to_a_local_file_store(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = make_config(tmp_path)
    run_id = log_evaluate(cfg, RESULT)
    run = MlflowClient(f"file:{tmp_path}/mlruns").get_run(run_id)
    assert run.data.metrics["attention.ndcg_at_10"] == 0.5
    assert run.data.tags["model_run_id"] == "attn-x" and run.data.tags["stage"] == "evaluate"


def test_a_broken_tracking_store_warns_or_fails_as_configured(tmp_path, caplog):
    cfg = make_config(tmp_path, tracking={"uri": "bogus-scheme://nowhere"})
    assert log_evaluate(cfg, RESULT) is None
    assert "MLflow tracking of the evaluate run failed (bogus-scheme://nowhere)" in caplog.text
    strict = make_config(tmp_path, tracking={"uri": "bogus-scheme://nowhere", "required": True})
    with pytest.raises(RuntimeError, match="bogus-scheme://nowhere"):
        log_evaluate(strict, RESULT)
    assert log_evaluate(make_config(tmp_path, tracking={"enabled": False}), RESULT) is None
