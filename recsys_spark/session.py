"""The only place a SparkSession is built. Delta Lake is always on."""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import sys
from typing import Optional

from pyspark.sql import SparkSession

from recsys_spark.config import SparkConfig

logger = logging.getLogger(__name__)

QUIET_LOG4J = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.properties")


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


def _jars_cache(packages: str) -> str:
    """Where the jar files that `packages` resolved to are remembered (one line per jar)."""
    cache = os.environ.get("RECSYS_SPARK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "recsys-spark")
    return os.path.join(cache, "spark-jars", hashlib.sha256(packages.encode()).hexdigest()[:16] + ".txt")


def resolved_jars(packages: str) -> list[str]:
    """The jar files of an earlier resolution of `packages`, when every one is still there."""
    try:
        with open(_jars_cache(packages)) as fh:
            jars = [line.strip() for line in fh if line.strip()]
    except OSError:
        return []
    return jars if jars and all(os.path.isfile(j.removeprefix("file:")) for j in jars) else []


def _remember_jars(spark: SparkSession, packages: str) -> None:
    """After Spark resolved `packages` (spark-submit lists the files in spark.jars), note the files."""
    jars = [j for j in spark.sparkContext.getConf().get("spark.jars", "").split(",") if j]
    if not jars or not all(os.path.isfile(j.removeprefix("file:")) for j in jars):
        return
    path = _jars_cache(packages)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write("\n".join(jars) + "\n")
    os.replace(tmp, path)


def _show_progress(cfg: SparkConfig) -> bool:
    if cfg.progress != "auto":
        return cfg.progress == "on"
    return cfg.master.startswith("local") and sys.stderr.isatty()


def local_metastore(folder: str) -> dict[str, str]:
    """Spark settings for a metastore kept in a folder (an embedded Derby database and the managed
    tables' warehouse), so catalog tables outlive the process that wrote them."""
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": os.path.join(folder, "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={os.path.join(folder, 'metastore_db')};create=true",
    }


def driver_java_options(configured: str, derby_home: Optional[str], quiet: bool) -> str:
    """The driver JVM's options: the local metastore's Derby home (its derby.log there, not in the
    working directory) and the quiet log4j settings, then the configured options, which win where
    both set the same flag (a configured log4j file replaces the quiet one)."""
    options = []
    if derby_home:
        options.append(f"-Dderby.system.home={derby_home}")
    if quiet and "log4j2.configurationFile" not in configured:
        options.append(f"-Dlog4j2.configurationFile=file:{QUIET_LOG4J}")
    return " ".join(options + [configured]).strip()


def build_spark(cfg: SparkConfig, metastore: str = "") -> SparkSession:
    """Return a SparkSession with Delta Lake enabled.

    Under spark-submit or on Databricks the master and packages given there win; this function only
    adds what is missing. In local mode executors run this interpreter, so the package resolves.
    metastore: a folder for a local metastore (see local_metastore), used when Spark runs locally
    and the settings name no catalog of their own; a cluster's or Databricks' catalog wins.
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
    settings = dict(cfg.conf)
    derby_home = None
    if metastore and not submitted and cfg.master.startswith("local") and "spark.sql.catalogImplementation" not in settings:
        settings = {**local_metastore(metastore), **settings}
        derby_home = metastore
    options = driver_java_options(settings.get("spark.driver.extraJavaOptions", ""), derby_home,
                                  cfg.quiet and not submitted)
    if options:
        settings["spark.driver.extraJavaOptions"] = options
    for key, value in settings.items():
        builder = builder.config(key, value)
    packages = jars_packages(cfg.conf.get("spark.jars.packages", "")) if cfg.delta_packages and not submitted else ""
    jars = resolved_jars(packages) if packages and cfg.quiet else []
    if jars:  # resolved before: the same files, without Ivy resolving (and reporting) them again
        builder = builder.config("spark.jars", ",".join(filter(None, [cfg.conf.get("spark.jars", "")] + jars)))
    elif packages:
        builder = builder.config("spark.jars.packages", packages)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    if metastore and spark.sparkContext.getConf().get("spark.sql.catalogImplementation", "in-memory") == "in-memory":
        logger.warning("paths.catalog is set but this Spark session keeps its catalog in memory: the catalog "
                       "tables are forgotten when the job ends. Give the job a metastore "
                       "(spark.sql.catalogImplementation=hive and the cluster's metastore settings).")
    if packages and not jars:
        _remember_jars(spark, packages)
    return spark
