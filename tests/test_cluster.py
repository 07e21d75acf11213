"""The nightly job submitted with spark-submit to a real standalone Spark cluster on this machine,
with the project shipped as its wheel (`--py-files`) to a Python that has only the dependencies.

One master and two workers (one core each) are started with the scripts that ship with pyspark
(bin/spark-class), so nothing can lean on local mode: the two training ranks (TorchDistributor,
the launcher for Databricks Runtime 16 ML and later; Horovod is tested on local Spark) run as a
barrier stage in two executors, and every Delta table is read and written by executors in other JVMs.
"""
import contextlib
import os
import pathlib
import re
import shutil
import subprocess
from typing import Callable

import pytest
import yaml

from benchmarks import harness
from conftest import bare_python
from recsys_spark import schema
from recsys_spark.generate import generate
from recsys_spark.config import GenerateConfig
from recsys_spark.session import delta_package

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_JIT = "-XX:TieredStopAtLevel=1"


class SubmittedNightly:
    """The nightly submitted to a standalone cluster, running while other tests run: this test is
    slow for JVM start-ups and the cluster's own JVMs, not for the tests' session, so the session
    starts it first (tests/conftest.py, `cluster_nightly`) and this module's test waits for it."""

    def __init__(self, wheel: Callable[[], str], folder: pathlib.Path):
        """wheel: builds the project's wheel. A failure to start is raised by `result`, in this
        module's test, not in every test of the session."""
        self.folder, self.root = folder, folder / "lake"
        self._result, self._error, self._proc = None, None, None
        self._running = contextlib.ExitStack()
        try:
            with self._running:
                self.cluster = self._running.enter_context(harness.standalone_cluster(str(folder / "cluster-logs")))
                self.logs = pathlib.Path(self.cluster["logs"])
                self._proc = self._submit(wheel())
                self._running = self._running.pop_all()  # started: the cluster stays up until the job ends
        except Exception as e:
            self._error = e

    def _submit(self, wheel: str) -> subprocess.Popen:
        # The driver and executors run a Python with the dependencies but without this project; the
        # project's code reaches them only as the wheel shipped with the job (a wheel is a zip archive;
        # pyspark puts py-files ending in .zip on the workers' sys.path, not .whl).
        self.python = python = bare_python(self.folder / "env")
        shipped = self.folder / "recsys_spark.zip"
        shutil.copy(wheel, shipped)
        root = self.root
        conf = {
            "spark": {"master": "", "shuffle_partitions": 2},  # two one-core executors
            "paths": {"root": str(root), "raw": str(root / "raw")},
            "generate": {"users": 400, "items": 80, "events": 16000},
            "features": {"max_seq_len": 20, "train_files": 4},
            "train": {"num_proc": 2, "epochs": 4, "batch_size": 64, "d_model": 32, "launcher": "torch_distributor"},
            "score": {"k": 10, "run_date": "2026-07-01"},
        }
        cfg_file = self.folder / "cluster.yaml"
        cfg_file.write_text(yaml.safe_dump(conf))
        generate(GenerateConfig(users=400, items=80, events=16000), str(root / "raw"))
        submit = os.path.join(self.cluster["spark_home"], "bin", "spark-submit")
        cmd = [submit, "--master", self.cluster["url"], "--packages", delta_package(),
               "--conf", "spark.executor.cores=1", "--conf", "spark.executor.memory=1g",
               "--conf", "spark.cores.max=2", "--conf", "spark.task.cpus=1",
               "--conf", "spark.ui.enabled=false", "--conf", f"spark.pyspark.python={python}",
               # These JVMs live two minutes: the optimising JIT costs more CPU than it saves in them
               # (the test took 105-107 s with the quick compiler alone, 123-126 s without this).
               "--conf", f"spark.driver.extraJavaOptions={QUICK_JIT}",
               "--conf", f"spark.executor.extraJavaOptions={QUICK_JIT}",
               "--py-files", str(shipped),
               # TorchDistributor's torchrun processes import through PYTHONPATH, relative to the
               # executor's working directory, where Spark puts the shipped file.
               "--conf", f"spark.executorEnv.PYTHONPATH={shipped.name}",
               os.path.join(REPO, "jobs", "nightly.py"), "--config", str(cfg_file)]
        env = {**self.cluster["env"], "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python}
        self._log = self.logs / "submit.log"
        with open(self._log, "w") as out:  # the child keeps its own copy of the handle
            return subprocess.Popen(cmd, env=env, cwd=str(self.folder), stdout=out, stderr=subprocess.STDOUT,
                                    text=True)

    def result(self, timeout: float = 1200) -> tuple[int, str]:
        """(spark-submit's exit code, its output), once it has ended; the cluster is stopped then."""
        if self._error is not None:
            raise self._error
        if self._result is None:
            try:
                rc = self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                rc = self._proc.wait()
            finally:
                self._running.close()
            self._result = (rc, self._log.read_text())
        return self._result

    def stop(self) -> None:
        """End the job if it still runs (its test was not reached) and stop the cluster."""
        if self._result is None and self._proc is not None:
            self._proc.kill()
            self.result()


def test_nightly_on_a_standalone_cluster_via_spark_submit(cluster_nightly, tmp_path):
    returncode, log = cluster_nightly.result()
    python, root = cluster_nightly.python, cluster_nightly.root
    assert subprocess.run([python, "-c", "import recsys_spark"], cwd=str(tmp_path), capture_output=True).returncode != 0
    assert returncode == 0, log[-5000:]
    # (spark-submit's Python runner sends the job's stderr, where it logs, to its stdout)
    assert "nightly stage wall times" in log
    assert "2 torch_distributor ranks on CPUs" in log
    # The job really ran on the cluster's executors, not in local mode.
    apps = list(cluster_nightly.logs.glob("worker*/app-*/*"))
    assert len({p.parent.parent.name for p in apps}) == 2, "both workers must have run executors"
    m = re.search(r"attention\s+([0-9.]+)\s+([0-9.]+)", log)
    p = re.search(r"popularity\s+([0-9.]+)\s+([0-9.]+)", log)
    assert m and p and float(m.group(2)) > float(p.group(2))
    assert (root / "tables" / schema.RECOMMENDATIONS / "run_date=2026-07-01").is_dir()
    # The model was registered from the shipped archive and promoted before it scored.
    assert "MLflow tracking" not in log and re.search(r"promotion: candidate \S+ ndcg@10 .*: promoted", log)
