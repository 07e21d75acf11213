"""Shared fixtures: one real local Spark session with Delta and a local metastore (built by
session.build_spark), and one synthetic shop that has been through the nightly pipeline, which tests
read but never write: a test that writes gets its own copy of the lakehouse (`shop_copy`)."""
from __future__ import annotations

import os
import shutil

import pytest

from benchmarks import harness
from recsys_spark import config as config_mod


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from recsys_spark.session import build_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    cfg = config_mod.SparkConfig(
        master="local[2]", app_name="recsys-spark-tests", shuffle_partitions=2, log_level="ERROR",
        conf={"spark.ui.enabled": "false", "spark.sql.warehouse.dir": str(warehouse),
              "spark.driver.memory": "3g", "spark.default.parallelism": "2",
              # The suite runs the same stages' queries again and again in one JVM; Spark's default
              # cache of 100 compiled query classes evicts them, and compiling them again costs about
              # a quarter of a repeated features run (benchmarks/repeated_stages.py).
              "spark.sql.codegen.cache.maxEntries": "4000",
              # The throughput collector: G1's concurrent marking took about a sixth of a core while
              # stages ran; test_features and test_score took 286 and 295 s with this, 323 and 301 s
              # without it (alternated, 2026-12-05).
              "spark.driver.extraJavaOptions": "-XX:+UseParallelGC"},
    )
    # A local metastore, as the CLI builds one when paths.catalog is set (tests/test_catalog.py).
    session = build_spark(cfg, metastore=str(tmp_path_factory.mktemp("metastore")))
    yield session
    session.stop()


# Delta keeps every table's log and latest snapshot (its plans and cached file list) in the JVM for an
# hour after the last use. One run touches the same ~20 tables, but the suite makes hundreds of
# lakes: without these two fixtures the tests' JVM heap filled (2 GB of 3 after half the suite), the
# collector's concurrent marking took a quarter of the JVM's CPU, and a 32 MB sort page could not be
# allocated ("Unable to acquire ... memory, got 0").
@pytest.fixture(autouse=True)
def _forget_the_tests_tables(request):
    """After a test that made tables under its tmp_path, drop their cached logs."""
    yield
    made = request.node.funcargs  # the test's fixture values (tmp_path's own teardown ran already)
    if "spark" in made and "tmp_path" in made:
        harness.forget_cached_logs(made["spark"], str(made["tmp_path"]))


@pytest.fixture(autouse=True, scope="module")
def _forget_the_modules_tables(request):
    """After a module, drop every cached log: its module fixtures' tables and its catalog tables. The
    shop's are read again from their logs by the next module that reads it."""
    yield
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context  # the tests' session, if a test of the module started it
    if sc is not None:
        harness.forget_every_cached_log(sc._jvm)


def make_config(root, **sections) -> config_mod.Config:
    """A Config rooted at a temp folder, with small training settings, plus section overrides."""
    overrides = [f"paths.root={root}", f"paths.raw={os.path.join(str(root), 'raw')}",
                 "spark.shuffle_partitions=2"]
    for section, values in sections.items():
        for key, value in values.items():
            overrides.append(f"{section}.{key}={value!r}" if isinstance(value, str) else f"{section}.{key}={value}")
    return config_mod.load(None, overrides)


# The shop every end-to-end test starts from: 600 users and 120 items with events, 6 new sign-ups and
# 4 new items without events, a few malformed rows.
SHOP = dict(
    generate={"users": 600, "items": 120, "events": 30000, "corrupt_fraction": 0.002, "cold_users": 6, "cold_items": 4},
    features={"max_seq_len": 20, "train_files": 4},
    train={"epochs": 8, "batch_size": 64, "d_model": 32, "lr": 0.005},
    score={"k": 10, "run_date": "2026-07-01"},
)


@pytest.fixture(scope="session")
def shop(spark, tmp_path_factory):
    """(config, nightly stage timings) of the shop after one nightly run. Read only."""
    from recsys_spark import cli
    from recsys_spark.generate import generate

    cfg = make_config(tmp_path_factory.mktemp("shop"), **SHOP)
    generate(cfg.generate, cfg.paths.raw)
    timings = cli.run_stage(spark, cfg, "nightly")
    return cfg, timings


@pytest.fixture
def shop_copy(shop, tmp_path):
    """The shop's config rooted in a private copy of its lakehouse, for a test that writes."""
    cfg, _ = shop
    root = tmp_path / "shop"
    shutil.copytree(cfg.paths.root, root)
    return make_config(root, **SHOP)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> str:
    """The project's wheel, built the way a release is (`python -m build --wheel`)."""
    import glob
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), REPO],
                   check=True, capture_output=True, text=True)
    (path,) = glob.glob(str(out / "recsys_spark-*.whl"))
    return path


@pytest.fixture(scope="session", autouse=True)
def cluster_nightly(request, tmp_path_factory):
    """The nightly of tests/test_cluster.py, submitted to its standalone cluster when the session
    starts (if that test was collected) so that it runs in its own JVMs beside the other tests;
    the test waits for it. None when the test was not collected."""
    if not any(item.get_closest_marker("cluster") for item in request.session.items):
        yield None
        return
    from test_cluster import SubmittedNightly

    job = SubmittedNightly(lambda: request.getfixturevalue("wheel"), tmp_path_factory.mktemp("cluster"))
    yield job
    job.stop()


def bare_python(folder) -> str:
    """A Python environment with this project's dependencies but not the project itself: a venv
    whose site-packages lists the test environment's site-packages as a plain path (a line of a .pth
    file), so that environment's own .pth files, among them the editable install of this checkout,
    are not run. What a cluster image with the dependencies looks like. Returns its python."""
    import sysconfig
    import venv

    venv.EnvBuilder(with_pip=False, symlinks=True).create(str(folder))
    python = os.path.join(str(folder), "bin", "python")
    import subprocess

    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "recsys-dependencies.pth"), "w") as fh:
        fh.write(sysconfig.get_paths()["purelib"] + "\n")
    return python
