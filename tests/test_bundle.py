"""The Databricks Asset Bundle, checked offline: its jobs against the bundle's job schema (the
typed resources of the databricks-bundles package, which reject unknown fields and wrong types),
every task's entry point and parameters against our CLI, and the task graph against the nightly."""
import glob
import os
import re
import tomllib

import pytest
import yaml

from recsys_spark import cli
from recsys_spark.config import packaged_configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE_KEYS = {"bundle", "include", "artifacts", "variables", "targets", "resources", "workspace", "sync",
               "permissions", "run_as", "presets", "experimental", "scripts"}


def _bundle() -> tuple[dict, dict]:
    """(databricks.yml, {job key: job}) with the included resource files merged."""
    with open(os.path.join(REPO, "databricks.yml")) as fh:
        root = yaml.safe_load(fh)
    jobs = {}
    for pattern in root.get("include", []):
        for path in sorted(glob.glob(os.path.join(REPO, pattern))):
            with open(path) as fh:
                jobs.update(yaml.safe_load(fh)["resources"]["jobs"])
    return root, jobs


def _resolve(value: str, variables: dict) -> str:
    return re.sub(r"\$\{var\.([a-z_]+)\}", lambda m: str(variables[m.group(1)]), value)


def test_the_bundle_matches_the_job_schema_and_declares_its_targets():
    from databricks.bundles.jobs import Job

    root, jobs = _bundle()
    assert set(root) <= BUNDLE_KEYS, set(root) - BUNDLE_KEYS
    assert root["targets"]["dev"]["mode"] == "development" and root["targets"]["prod"]["mode"] == "production"
    variables = {name: v["default"] for name, v in root["variables"].items()}
    used = {m for job in jobs.values() for m in re.findall(r"\$\{var\.([a-z_]+)\}", yaml.safe_dump(job))}
    assert used <= set(variables), used - set(variables)
    assert "recsys_nightly" in jobs
    for job in jobs.values():
        Job.from_dict(job)  # raises on a field the schema does not have, or a value of the wrong type
    with pytest.raises(ValueError, match="Unexpected field"):
        Job.from_dict({**jobs["recsys_nightly"], "tasks": [{"task_key": "x", "python_wheel_taks": {}}]})
    nightly = jobs["recsys_nightly"]
    assert nightly["schedule"]["quartz_cron_expression"] and nightly["email_notifications"]["on_failure"]
    for task in nightly["tasks"]:
        assert task["max_retries"] >= 1 and task["timeout_seconds"] > 0, task["task_key"]
    # The refresh stream is a continuous job (restarted when it stops, e.g. after each nightly).
    assert jobs["recsys_refresh"]["continuous"]["pause_status"] in ("PAUSED", "UNPAUSED")
    # So is the ingest stream that feeds it.
    assert jobs["recsys_ingest_stream"]["continuous"]["pause_status"] in ("PAUSED", "UNPAUSED")
    assert jobs["recsys_ingest_stream"]["tasks"][0]["python_wheel_task"]["parameters"][:2] == ["ingest", "--stream"]
    gpu = {c["job_cluster_key"]: c["new_cluster"] for c in nightly["job_clusters"]}
    train = next(t for t in nightly["tasks"] if t["task_key"] == "train")
    assert "gpu" in _resolve(gpu[train["job_cluster_key"]]["spark_version"], variables)


def test_every_task_runs_our_entry_point_with_parameters_our_cli_accepts():
    root, jobs = _bundle()
    variables = {name: v["default"] for name, v in root["variables"].items()}
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    assert "databricks" in packaged_configs()
    for task in [t for job in jobs.values() for t in job["tasks"]]:
        wheel = task["python_wheel_task"]
        assert wheel["package_name"] == "recsys_spark" and wheel["entry_point"] in project["scripts"]
        assert task["libraries"] == [{"whl": "../dist/*.whl"}]
        params = [_resolve(p, variables) for p in wheel["parameters"]]
        stage, cfg, _ = cli.parse_args(params)
        assert stage == task["task_key"]
        assert cfg.paths.root == variables["lake"] and cfg.spark.delta_packages is False
        assert cfg.train.launcher == "torch_distributor" and cfg.tracking.uri == "databricks"


def test_the_task_graph_is_the_nightly_order():
    _, jobs = _bundle()
    tasks = jobs["recsys_nightly"]["tasks"]
    after = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in tasks}
    order, done = [], set()
    while len(order) < len(after):  # topological order, ties by declaration order
        ready = [k for k in after if k not in done and set(after[k]) <= done]
        assert ready, f"cycle among {set(after) - done}"
        order.append(ready[0])
        done.add(ready[0])
    assert order[:len(cli.NIGHTLY)] == cli.NIGHTLY
    assert after["score"] == ["evaluate"] and after["evaluate"] == ["train"]
    assert set(order[len(cli.NIGHTLY):]) == {"audience", "report"}
