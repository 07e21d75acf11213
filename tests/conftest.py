"""Shared fixtures: one real local Spark session with Delta (built by session.build_spark)."""
from __future__ import annotations

import os

import pytest

from recsys_spark import config as config_mod


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from recsys_spark.session import build_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    cfg = config_mod.SparkConfig(
        master="local[2]", app_name="recsys-spark-tests", shuffle_partitions=2, log_level="ERROR",
        conf={"spark.ui.enabled": "false", "spark.sql.warehouse.dir": str(warehouse),
              "spark.driver.memory": "2g", "spark.default.parallelism": "2"},
    )
    session = build_spark(cfg)
    yield session
    session.stop()


def make_config(root, **sections) -> config_mod.Config:
    """A Config rooted at a temp folder, with small training settings, plus section overrides."""
    overrides = [f"paths.root={root}", f"paths.raw={os.path.join(str(root), 'raw')}",
                 "spark.shuffle_partitions=2"]
    for section, values in sections.items():
        for key, value in values.items():
            overrides.append(f"{section}.{key}={value!r}" if isinstance(value, str) else f"{section}.{key}={value}")
    return config_mod.load(None, overrides)
