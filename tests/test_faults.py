"""Faults a nightly meets: a features run killed halfway, a score process killed while it writes.
Each test states the fault, what the system must do, and that no row is lost."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from pyspark.sql import functions as F

from recsys_spark import features, schema, score, tables


def _version(spark, cfg, name):
    return tables.version(spark, tables.path(cfg.tables_dir, name))


def test_score_never_reads_a_features_run_that_died_halfway(spark, shop_copy, monkeypatch):
    cfg = shop_copy
    complete = tables.pinned_versions(spark, cfg.tables_dir, (schema.SEQUENCES, schema.USER_PROFILE))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("features killed after sequences and profiles were rewritten")

    monkeypatch.setattr(features, "_training_examples", killed)
    with pytest.raises(KeyboardInterrupt):
        features.run(spark, cfg)
    assert _version(spark, cfg, schema.SEQUENCES) > complete[schema.SEQUENCES]  # the dead run wrote these
    assert tables.pinned_versions(spark, cfg.tables_dir, (schema.SEQUENCES, schema.USER_PROFILE)) == complete
    score.run(spark, cfg)
    last = tables.read(spark, tables.path(cfg.tables_dir, schema.SCORE_RUNS)).orderBy(F.desc("finished_at")).first()
    assert (last.sequences_version, last.user_profile_version) == (complete[schema.SEQUENCES],
                                                                   complete[schema.USER_PROFILE])


KILL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys, threading, time
    from recsys_spark import config, score, session, tables

    cfg = config.load(None, sys.argv[2:])
    target = sys.argv[1]
    before = {os.path.join(d, f) for d, _, fs in os.walk(target) for f in fs}

    def kill_on_first_data_file():
        # Delta writes data files into the table folder, then commits the log: the first new
        # parquet file means the write is under way and not committed yet.
        while True:
            now = {os.path.join(d, f) for d, _, fs in os.walk(target) for f in fs}
            if any(p.endswith(".parquet") and "_delta_log" not in p for p in now - before):
                os.killpg(0, signal.SIGKILL)  # this process, its JVM and its Python workers
            time.sleep(0.005)

    threading.Thread(target=kill_on_first_data_file, daemon=True).start()
    score.run(session.build_spark(cfg.spark), cfg)
    print("score finished before it could be killed")
""")


def test_a_score_process_killed_while_writing_leaves_the_previous_list(spark, shop_copy, tmp_path):
    cfg = shop_copy
    loc = tables.path(cfg.tables_dir, schema.RECOMMENDATIONS)
    version_before = tables.version(spark, loc)
    before = tables.read(spark, loc).where(F.col("run_date") == cfg.score.run_date)
    rows_before = sorted(map(tuple, before.select("user_id", "rank", "item_id").collect()))
    script = tmp_path / "kill_score.py"
    script.write_text(KILL_DURING_WRITE)
    overrides = [f"paths.root={cfg.paths.root}", f"paths.raw={cfg.paths.raw}", "spark.shuffle_partitions=2",
                 f"score.run_date={cfg.score.run_date}", f"score.k={cfg.score.k}", "score.mode=full"]
    proc = subprocess.run([sys.executable, str(script), loc, *overrides], capture_output=True, text=True,
                          start_new_session=True, timeout=600, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert tables.version(spark, loc) == version_before
    after = tables.read(spark, loc).where(F.col("run_date") == cfg.score.run_date)
    assert sorted(map(tuple, after.select("user_id", "rank", "item_id").collect())) == rows_before
    # The half-written files are not part of any version, and the next run replaces the partition.
    score.run(spark, cfg)
    assert tables.version(spark, loc) == version_before + 1
    again = tables.read(spark, loc).where(F.col("run_date") == cfg.score.run_date)
    assert again.count() == len(rows_before)
