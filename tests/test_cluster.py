"""The nightly job submitted with spark-submit to a real standalone Spark cluster on this machine.

One master and two workers (one core each) are started with the scripts that ship with pyspark
(bin/spark-class), so nothing can lean on local mode: the two training ranks (TorchDistributor,
the launcher for Databricks Runtime 16 ML and later; Horovod is tested on local Spark) run as a
barrier stage in two executors, and every Delta table is read and written by executors in other JVMs.
"""
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import yaml

from recsys_spark import schema
from recsys_spark.generate import generate
from recsys_spark.config import GenerateConfig
from recsys_spark.session import delta_package

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(path, pattern, count, timeout, procs):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a cluster process exited early; see {path}")
        if os.path.exists(path) and len(re.findall(pattern, open(path).read())) >= count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{pattern!r} did not appear {count}x in {path} within {timeout}s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from pyspark.find_spark_home import _find_spark_home

    spark_home = _find_spark_home()
    logs = tmp_path_factory.mktemp("cluster-logs")
    port = _free_port()
    env = dict(os.environ, SPARK_HOME=spark_home, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               SPARK_NO_DAEMONIZE="1")
    cls = os.path.join(spark_home, "bin", "spark-class")
    procs = []
    master_log = str(logs / "master.log")
    procs.append(subprocess.Popen([cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                   "--port", str(port), "--webui-port", str(_free_port())],
                                  env=env, stdout=open(master_log, "w"), stderr=subprocess.STDOUT))
    url = f"spark://127.0.0.1:{port}"
    try:
        _wait_for(master_log, r"I have been elected leader", 1, 60, procs)
        for i in range(2):
            work = logs / f"worker{i}"
            work.mkdir()
            procs.append(subprocess.Popen(
                [cls, "org.apache.spark.deploy.worker.Worker", url, "--cores", "1", "--memory", "3g",
                 "--webui-port", str(_free_port()), "--work-dir", str(work)],
                env=env, stdout=open(logs / f"worker{i}.log", "w"), stderr=subprocess.STDOUT))
        _wait_for(master_log, r"Registering worker", 2, 90, procs)
        yield {"url": url, "spark_home": spark_home, "env": env, "logs": logs}
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_nightly_on_a_standalone_cluster_via_spark_submit(cluster, tmp_path):
    root = tmp_path / "lake"
    conf = {
        "spark": {"master": "", "shuffle_partitions": 4},
        "paths": {"root": str(root), "raw": str(root / "raw")},
        "generate": {"users": 400, "items": 80, "events": 16000},
        "features": {"max_seq_len": 20, "train_files": 4},
        "train": {"num_proc": 2, "epochs": 4, "batch_size": 64, "d_model": 32, "launcher": "torch_distributor"},
        "score": {"k": 10, "run_date": "2026-07-01"},
    }
    cfg_file = tmp_path / "cluster.yaml"
    cfg_file.write_text(yaml.safe_dump(conf))
    generate(GenerateConfig(users=400, items=80, events=16000), str(root / "raw"))
    submit = os.path.join(cluster["spark_home"], "bin", "spark-submit")
    cmd = [submit, "--master", cluster["url"], "--packages", delta_package(),
           "--conf", "spark.executor.cores=1", "--conf", "spark.executor.memory=1g",
           "--conf", "spark.cores.max=2", "--conf", "spark.task.cpus=1",
           "--conf", "spark.ui.enabled=false",
           os.path.join(REPO, "jobs", "nightly.py"), "--config", str(cfg_file)]
    out = subprocess.run(cmd, env=cluster["env"], cwd=str(tmp_path), capture_output=True, text=True, timeout=1200)
    log = out.stdout + out.stderr
    (cluster["logs"] / "submit.log").write_text(log)
    assert out.returncode == 0, log[-5000:]
    assert "nightly stage wall times" in out.stdout
    assert "2 torch_distributor ranks on CPUs" in out.stdout
    # The job really ran on the cluster's executors, not in local mode.
    apps = list((cluster["logs"]).glob("worker*/app-*/*"))
    assert len({p.parent.parent.name for p in apps}) == 2, "both workers must have run executors"
    m = re.search(r"attention\s+([0-9.]+)\s+([0-9.]+)", out.stdout)
    p = re.search(r"popularity\s+([0-9.]+)\s+([0-9.]+)", out.stdout)
    assert m and p and float(m.group(2)) > float(p.group(2))
    assert (root / "tables" / schema.RECOMMENDATIONS / "run_date=2026-07-01").is_dir()
