"""The only place a SparkSession is built. Delta Lake is always on."""
from __future__ import annotations

import importlib.metadata
import os
import sys

from pyspark.sql import SparkSession

from recsys_spark.config import SparkConfig


def delta_package() -> str:
    """The Maven coordinate of the Delta jars matching the installed delta-spark (as delta's own
    configure_spark_with_delta_pip builds it; Spark 3.5 is built for Scala 2.12)."""
    return f"io.delta:delta-spark_2.12:{importlib.metadata.version('delta-spark')}"


def jars_packages(user_packages: str) -> str:
    """spark.jars.packages: the user's own packages, plus Delta's unless they name a Delta jar."""
    mine = [p.strip() for p in user_packages.split(",") if p.strip()]
    if not any(p.startswith("io.delta:delta-spark_") for p in mine):
        mine.append(delta_package())
    return ",".join(mine)


def _show_progress(cfg: SparkConfig) -> bool:
    if cfg.progress != "auto":
        return cfg.progress == "on"
    return cfg.master.startswith("local") and sys.stderr.isatty()


def build_spark(cfg: SparkConfig) -> SparkSession:
    """Return a SparkSession with Delta Lake enabled.

    Under spark-submit or on Databricks the master and packages given there win; this function only
    adds what is missing. In local mode executors run this interpreter, so the package resolves.
    """
    # Python workers must run the same interpreter (and so the same torch/petastorm) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(cfg.app_name)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "true" if _show_progress(cfg) else "false")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # pandas/pyarrow write nanosecond timestamps that Spark 3.5 cannot read; read them as longs
        # and let ingest convert them.
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")
    )
    # Under spark-submit the JVM is already up (PYSPARK_GATEWAY_PORT is set) with the master and
    # packages given on its command line; setting them again would be ignored or, worse, override.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if cfg.master and not submitted:
        builder = builder.master(cfg.master)
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    if cfg.delta_packages and not submitted:
        builder = builder.config("spark.jars.packages", jars_packages(cfg.conf.get("spark.jars.packages", "")))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    return spark
