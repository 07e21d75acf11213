"""The wheel: what it holds, what it asks pip for, and that its entry point runs a stage with a
packaged config in an environment that has the dependencies but not this checkout."""
import email
import os
import subprocess
import zipfile

import pytest

from conftest import bare_python

pytestmark = pytest.mark.slow


def test_the_wheel_holds_the_package_and_default_configs_and_leaves_the_runtime_alone(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = email.message_from_string(zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "recsys_spark/cli.py" in names and "recsys_spark/mlflow_model.py" in names
    assert {"recsys_spark/conf/local.yaml", "recsys_spark/conf/databricks.yaml", "recsys_spark/conf/campaigns.yaml"} <= set(names)
    assert not [n for n in names if n.startswith(("benchmarks/", "tests/")) or n.endswith("bench.yaml")]
    assert "recsys-spark = recsys_spark.cli:entry" in entry_points
    requires = meta.get_all("Requires-Dist")
    # What a Databricks ML runtime brings itself (Spark with Delta, torch) comes only with the extra.
    for runtime in ("pyspark", "delta-spark", "torch"):
        (line,) = [r for r in requires if r.startswith(runtime)]
        assert 'extra == "local"' in line, line
    core = [r for r in requires if "extra ==" not in r]
    assert core and all(any(op in r for op in (">", "<", "~=")) and "==" not in r for r in core), core


def test_the_installed_entry_point_runs_with_a_packaged_config(wheel, tmp_path):
    python = bare_python(tmp_path / "env")
    probe = [python, "-c", "import recsys_spark; print(recsys_spark.__file__)"]
    # (run outside the checkout: `python -c` puts the working directory on sys.path)
    assert subprocess.run(probe, cwd=str(tmp_path), capture_output=True).returncode != 0
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", wheel], check=True)
    installed = subprocess.run(probe, cwd=str(tmp_path), capture_output=True, text=True, check=True).stdout
    assert installed.startswith(str(tmp_path / "env"))
    script = str(tmp_path / "env" / "bin" / "recsys-spark")
    raw = tmp_path / "raw"
    run = subprocess.run([script, "generate", "--config", "databricks", "--set", f"paths.raw={raw}",
                          "--set", "generate.users=40", "--set", "generate.items=20", "--set", "generate.events=400"],
                         cwd=str(tmp_path), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "INFO    recsys_spark.cli: generated" in run.stderr and os.listdir(raw / "events")
    bad = subprocess.run([script, "score", "--config", "nowhere"], cwd=str(tmp_path), capture_output=True, text=True)
    assert bad.returncode == 2 and "packaged config" in bad.stderr and "databricks" in bad.stderr
