"""What every benchmark shares: its command-line arguments, its config, a Spark session for the
run, a lakehouse folder, memory sampling, model variants and the result file. Imports neither
pyspark nor psutil at module level: the GPU benchmark runs where there is neither."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterator, Optional

from recsys_spark import config as config_mod


class MemoryMonitor:
    """Samples the RSS of this process tree (the Spark JVM, Python workers, Horovod ranks);
    `peaks[name]` is the max seen while `measuring(name)`."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.current: Optional[str] = None
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _rss_mb(self) -> float:
        import psutil

        me = psutil.Process()
        total = 0
        for p in [me] + me.children(recursive=True):
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total / 2 ** 20

    def _loop(self) -> None:
        while not self._stop.is_set():
            name = self.current
            if name is not None:
                self.peaks[name] = max(self.peaks.get(name, 0.0), self._rss_mb())
            time.sleep(self.interval)

    @contextlib.contextmanager
    def measuring(self, name: str) -> Iterator[None]:
        self.current = name
        self.peaks[name] = max(self.peaks.get(name, 0.0), self._rss_mb())
        try:
            yield
        finally:
            self.current = None

    def close(self) -> None:
        self._stop.set()


def parser(doc: str, dataset: bool = True, config: Optional[str] = "conf/bench.yaml") -> argparse.ArgumentParser:
    """Arguments every benchmark takes: [DATASET] --out, --config, --set (repeatable), --work."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if dataset:
        p.add_argument("dataset", help="events file or folder (csv/parquet/json, SASRec text, MovieLens ratings)")
    p.add_argument("--out", required=True, help="where to write RESULT.json")
    p.add_argument("--config", default=config, help=f"config file (default: {config or 'the built-in defaults'})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--work", default=None, help="lakehouse folder (default: a temporary one, removed after)")
    return p


def lakehouse(work: Optional[str], dataset: Optional[str] = None) -> list[str]:
    """Config overrides that root the run in `work` and read events from `dataset`."""
    out = [f"paths.root={work}", f"paths.raw={os.path.join(work, 'raw')}"]
    return out + ([f"ingest.events={os.path.abspath(dataset)}"] if dataset else [])


def shop_overrides(users: int, items: int, events_per_user: int) -> list[str]:
    """Config overrides for a generated shop of that size, without the demo's cold users and
    items and malformed rows (a benchmark measures the path it names, not ingest's quarantine)."""
    return [f"generate.users={users}", f"generate.items={items}", f"generate.events={events_per_user * users}",
            "generate.cold_users=0", "generate.cold_items=0", "generate.corrupt_fraction=0"]


def side_overrides(dataset: str, work: str) -> tuple[list[str], dict]:
    """Overrides that ingest the user/item side files found next to a dataset file
    (benchmarks.datasets), and those files by name."""
    if not os.path.isfile(dataset):
        return [], {}
    from benchmarks.datasets import side_files

    side = side_files(dataset, os.path.join(work, "side"))
    return [f"ingest.{name}={path}" for name, path in side.items()], side


def load_config(path: Optional[str], overrides: list[str]) -> Optional[config_mod.Config]:
    """The config, or None after printing the config error."""
    try:
        return config_mod.load(path, overrides)
    except config_mod.ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return None


@contextlib.contextmanager
def work_dir(work: Optional[str], prefix: str) -> Iterator[str]:
    """`work`, or a temporary folder removed afterwards."""
    path = work or tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        if work is None:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def spark_session(cfg: config_mod.Config) -> Iterator:
    """A Spark session for a benchmark, with the stages' logs on the console as in a job. A session
    already running in this process (a test's) is used and left running."""
    from pyspark.sql import SparkSession

    from recsys_spark.cli import configure_logging
    from recsys_spark.session import build_spark

    configure_logging()
    running = SparkSession.getActiveSession()
    spark = running or build_spark(cfg.spark)
    try:
        yield spark
    finally:
        if running is None:
            spark.stop()


def run_stages(spark, cfg: config_mod.Config, stages=("ingest", "features", "train"), label: str = ""):
    """Run the stages in order with the product's CLI, printing each one's wall time; return the
    last one's result (train's: the run id the benchmark then pins)."""
    import time

    from recsys_spark import cli

    out = None
    for stage in stages:
        t0 = time.time()
        out = cli.run_stage(spark, cfg, stage)
        print(f"{label}{stage} {time.time() - t0:.0f}s", flush=True)
    return out


@contextlib.contextmanager
def trained_shop(args, prefix: str, items: int, settings: list[str]) -> Iterator[tuple]:
    """A generated shop of args.users users and `items` items (20 events per user) through ingest,
    features and train (the nightly code), for the benchmarks that then play on it: yields (spark,
    work folder, config, overrides); the overrides (the shop's, `settings`, then the command line's)
    pin the trained model for score, and the config is theirs. Exits with 2 on a config error."""
    from recsys_spark.generate import generate

    with work_dir(args.work, prefix) as work:
        overrides = lakehouse(work) + shop_overrides(args.users, items, 20) + ["tracking.enabled=false"] + settings
        cfg = load_config(args.config, overrides + args.overrides)
        if cfg is None:
            raise SystemExit(2)
        generate(cfg.generate, cfg.paths.raw)
        with spark_session(cfg) as spark:
            trained = run_stages(spark, cfg)
            base = overrides + args.overrides + [f"score.model_run_id={trained['run_id']}"]
            yield spark, work, load_config(args.config, base), base


def forget_every_cached_log(jvm) -> None:
    """Drop every cached Delta log of the session's JVM (`jvm`: a SparkContext's or session's _jvm)."""
    jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()


def forget_cached_logs(spark, folder: str) -> int:
    """Drop Delta's cached logs (each a table's latest snapshot, with its plans and a persisted file
    list, kept for an hour after last use) of the tables under `folder`; how many tables. A session
    that makes many lakehouses (the test suite, benchmarks/cached_logs.py) calls it for the ones it
    is done with."""
    jvm = spark._jvm
    tables = 0
    for parent, dirs, _ in os.walk(folder):
        if "_delta_log" in dirs:
            jvm.org.apache.spark.sql.delta.DeltaLog.invalidateCache(spark._jsparkSession, jvm.org.apache.hadoop.fs.Path(parent))
            tables += 1
            dirs[:] = []
    return tables


def parse_variant(spec: str, named: dict) -> tuple[str, dict]:
    """A model variant: 'name' (one of `named`) or 'label:key=value,key=value' (ModelConfig / train
    fields); values are read as JSON (0.2, 128, false)."""
    if ":" not in spec:
        if spec not in named:
            raise SystemExit(f"unknown variant {spec!r}: use one of {', '.join(named)} or label:key=value,...")
        return spec, dict(named[spec])
    label, body = spec.split(":", 1)
    out = {}
    for kv in filter(None, body.split(",")):
        k, _, v = kv.partition("=")
        out[k.strip()] = json.loads(v)
    return label, out


def split_variants(specs: str) -> list[str]:
    """A comma-separated list of variants; a `key=value` after a `label:key=value` belongs to it
    (`all,b:use_text=false,seed=43` is two variants)."""
    out: list[str] = []
    for part in (p.strip() for p in specs.split(",")):
        if part and "=" in part and ":" not in part and out and ":" in out[-1]:
            out[-1] += "," + part
        elif part:
            out.append(part)
    return out


def table_files(spark, location: str) -> dict:
    """A Delta table's active files, its rows, and the rows deleted (by deletion vectors) but still
    inside those files."""
    from recsys_spark import tables

    snapshot = tables.read(spark, location)
    files = snapshot.inputFiles()
    rows = snapshot.count()
    return {"files": len(files), "rows": rows, "deleted_rows_in_files": spark.read.parquet(*files).count() - rows}


def write_result(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    print(f"wrote {path}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(path: str, pattern: str, count: int, timeout: float, procs: list) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a cluster process exited early; see {path}")
        if os.path.exists(path) and len(re.findall(pattern, open(path).read())) >= count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{pattern!r} did not appear {count}x in {path} within {timeout}s")


@contextlib.contextmanager
def standalone_cluster(logs: str, workers: int = 2, cores: int = 1, memory: str = "3g") -> Iterator[dict]:
    """A standalone Spark cluster on this machine (one master, `workers` workers), started with the
    scripts that ship with pyspark; yields {"url", "spark_home", "env", "logs"} and stops it after.
    Its executors are descendants of this process, so MemoryMonitor counts them."""
    from pyspark.find_spark_home import _find_spark_home

    spark_home = _find_spark_home()
    os.makedirs(logs, exist_ok=True)
    port = free_port()
    env = dict(os.environ, SPARK_HOME=spark_home, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               SPARK_NO_DAEMONIZE="1")
    cls = os.path.join(spark_home, "bin", "spark-class")
    master_log = os.path.join(logs, "master.log")
    procs = [subprocess.Popen([cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                               "--webui-port", str(free_port())],
                              env=env, stdout=open(master_log, "w"), stderr=subprocess.STDOUT)]
    url = f"spark://127.0.0.1:{port}"
    try:
        _wait_for(master_log, r"I have been elected leader", 1, 60, procs)
        for i in range(workers):
            work = os.path.join(logs, f"worker{i}")
            os.makedirs(work, exist_ok=True)
            procs.append(subprocess.Popen(
                [cls, "org.apache.spark.deploy.worker.Worker", url, "--cores", str(cores), "--memory", memory,
                 "--webui-port", str(free_port()), "--work-dir", work],
                env=env, stdout=open(os.path.join(logs, f"worker{i}.log"), "w"), stderr=subprocess.STDOUT))
        _wait_for(master_log, r"Registering worker", workers, 90, procs)
        yield {"url": url, "spark_home": spark_home, "env": env, "logs": logs}
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
