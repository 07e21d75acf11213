"""Faults a nightly meets, each injected for real and measured: what the system did, rows lost.

    python -m benchmarks.faults --out RESULT.json [--work DIR] [--set key=value ...]

Builds the synthetic shop with the nightly code (generate, ingest, features, a short train, score),
then, each on the lakehouse as the previous fault left it:
- killed score write: a score process SIGKILLed (with its JVM) when its first data file appears;
- killed features run: a features process SIGKILLed right after it committed the new sequences;
- two concurrent nightlies: ingest, features and score twice at once (threads, one session) over
  new events;
- planted checkpoint: a model.pt whose pickle would run a shell command, made the newest model;
- forget + vacuum: three users forgotten with privacy.vacuum_retention_hours=0, then the raw files
  (which still hold them) ingested again and the features rebuilt;
- lost rank: training rank 1 exits in the middle of epoch 2 of 3 (TorchDistributor), then `train`
  runs again as the next nightly would; compared with an uninterrupted seeded run.
`--only NAME[,NAME]` runs only those scenarios (after building the shop).
tests/test_faults.py runs the same functions and asserts their figures.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import functions as F

from benchmarks import harness
from recsys_spark import config as config_mod
from recsys_spark import features, forget, ingest, schema, score, tables

# The shop (small enough for minutes on 2 cores; the faults do not depend on its size).
SHOP = ["generate.users=600", "generate.items=120", "generate.events=30000", "generate.corrupt_fraction=0.002",
        "features.max_seq_len=20", "features.train_files=4", "train.epochs=2", "train.batch_size=64",
        "train.d_model=32", "score.run_date=2026-07-01", "spark.shuffle_partitions=2"]

_KILL_WHEN = textwrap.dedent("""
    import os, signal, sys, threading, time
    from recsys_spark import cli, config, session

    stage, watched, trigger = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = config.load(None, sys.argv[4:])

    def files():
        return {os.path.join(d, f) for d, _, fs in os.walk(watched) for f in fs}

    before = files()

    def watch():
        while True:
            new = files() - before
            # data: a parquet file outside the log (written, not committed); commit: a new log entry.
            if any(p.endswith(".parquet") and "_delta_log" not in p for p in new) if trigger == "data" else \\
               any(p.endswith(".json") and "_delta_log" in p for p in new):
                os.killpg(0, signal.SIGKILL)  # this process, its JVM and its Python workers
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()
    spark = session.build_spark(cfg.spark)
    cli.run_stage(spark, cfg, stage)
    print("finished before it could be killed")
""")


def _overrides(cfg: config_mod.Config) -> list[str]:
    return harness.lakehouse(cfg.paths.root) + SHOP


def kill_stage_when(cfg: config_mod.Config, stage: str, watched: str, trigger: str) -> int:
    """Run `stage` in a new process group and SIGKILL the group when `watched` (a table folder) gets
    its first new data file (trigger 'data') or log entry ('commit'); the process's return code."""
    script = os.path.join(cfg.paths.root, "kill_when.py")
    with open(script, "w") as fh:
        fh.write(_KILL_WHEN)
    proc = subprocess.run([sys.executable, script, stage, watched, trigger, *_overrides(cfg)], capture_output=True,
                          text=True, start_new_session=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    if proc.returncode != -signal.SIGKILL:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
    return proc.returncode


def _list_rows(spark, loc: str, run_date: str) -> list:
    return sorted(map(tuple, tables.read(spark, loc).where(F.col("run_date") == run_date)
                      .select("user_id", "rank", "item_id").collect()))


def killed_score_write(spark, cfg: config_mod.Config) -> dict:
    loc = tables.location(cfg.tables_root, schema.RECOMMENDATIONS)
    before, version = _list_rows(spark, loc, cfg.score.run_date), tables.version(spark, loc)
    rc = kill_stage_when(cfg, "score", loc, "data")
    after, version_after = _list_rows(spark, loc, cfg.score.run_date), tables.version(spark, loc)
    score.run(spark, cfg)
    return {"fault": "score process SIGKILLed while writing its list", "killed": rc == -signal.SIGKILL,
            "version_before": version, "version_after_kill": version_after,
            "rows_before": len(before), "rows_after_kill": len(after),
            "rows_lost": len(set(before) - set(after)), "list_unchanged": before == after,
            "next_run_rows": len(_list_rows(spark, loc, cfg.score.run_date))}


def killed_features_run(spark, cfg: config_mod.Config) -> dict:
    root = cfg.tables_root
    names = (schema.SEQUENCES, schema.USER_PROFILE, schema.TRAIN_EXAMPLES)
    complete = tables.pinned_versions(spark, root, names)
    rc = kill_stage_when(cfg, "features", tables.location(root, schema.SEQUENCES), "commit")
    latest = {n: tables.version(spark, tables.location(root, n)) for n in names}
    pinned = tables.pinned_versions(spark, root, names)
    score.run(spark, cfg)
    run = tables.read(spark, tables.location(root, schema.SCORE_RUNS)).orderBy(F.desc("finished_at")).first()
    return {"fault": "features process SIGKILLed after committing new sequences", "killed": rc == -signal.SIGKILL,
            "complete_set": complete, "latest_versions_after_kill": latest, "pinned_after_kill": pinned,
            "score_read_complete_set": (run.sequences_version, run.user_profile_version)
            == (complete[schema.SEQUENCES], complete[schema.USER_PROFILE]),
            "rows_lost": 0 if pinned == complete else None}


def _new_events(n_users: int = 50) -> pd.DataFrame:
    users = [f"fault_user_{i}" for i in range(n_users)]
    return pd.DataFrame({"event_id": [f"fault_{i}" for i in range(4 * n_users)],
                         "user_id": [users[i % n_users] for i in range(4 * n_users)],
                         "item_id": [f"i{i % 100:06d}" for i in range(4 * n_users)],
                         "event_type": "view",
                         "timestamp": [f"2026-07-01 0{i % 10}:{i % 60:02d}:00" for i in range(4 * n_users)]})


def concurrent_nightlies(spark, cfg: config_mod.Config) -> dict:
    root = cfg.tables_root
    new = _new_events()
    new_file = os.path.join(cfg.paths.root, "fault-new", "events.csv")
    os.makedirs(os.path.dirname(new_file), exist_ok=True)
    new.to_csv(new_file, index=False)
    ingest_cfg = config_mod.load(None, _overrides(cfg) + [f"ingest.events={new_file}"])
    events_before = tables.read(spark, tables.location(root, schema.EVENTS)).count()

    def nightly(_):
        ingest.run(spark, ingest_cfg)
        features.run(spark, cfg)
        score.run(spark, cfg)

    t0 = time.time()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(nightly, range(2)))
    events = tables.read(spark, tables.location(root, schema.EVENTS))
    index = tables.read(spark, tables.location(root, schema.USER_INDEX))
    recs = tables.read(spark, tables.location(root, schema.RECOMMENDATIONS)).where(F.col("run_date") == cfg.score.run_date)
    stored_new = events.where(F.col("event_id").startswith("fault_")).select("event_id").distinct().count()
    return {"fault": "two nightlies (ingest, features, score) at once over the same new events",
            "seconds": round(time.time() - t0, 1), "new_events": len(new),
            "events_added": events.count() - events_before,
            "duplicate_events": events.count() - events.select("event_id").distinct().count(),
            "duplicate_index_numbers": index.count() - index.select("user_idx").distinct().count(),
            "ids_numbered_twice": index.count() - index.select("user_id").distinct().count(),
            "users_with_two_lists": recs.groupBy("user_id", "rank").count().where("count > 1").count(),
            "rows_lost": len(new) - stored_new}


@dataclass
class LosesRank:
    """A training batch source whose rank `rank` dies (the process exits, as when its executor is
    lost) when it asks for batch number `after` (counted from 0). Travels by value to the ranks:
    register this module with cloudpickle.register_pickle_by_value."""
    inner: object
    rank: int
    after: int

    def open(self, rank: int, size: int, batch_size: int, seed: int):
        for i, batch in enumerate(self.inner.open(rank, size, batch_size, seed)):
            if rank == self.rank and i == self.after:
                os._exit(3)
            yield batch


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def planted_checkpoint(cfg: config_mod.Config) -> dict:
    import torch

    from recsys_spark import checkpoints

    newest = checkpoints.latest(cfg.models_dir)
    folder = os.path.join(cfg.models_dir, "attn-99999999T999999-planted")
    os.makedirs(folder)
    marker = os.path.join(cfg.paths.root, "planted-code-ran")
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, os.path.join(folder, "model.pt"))
    with open(os.path.join(folder, "manifest.json"), "w") as fh:
        json.dump({"run_id": "attn-99999999T999999-planted", "created_at": "2099-01-01T00:00:00"}, fh)
    chosen = checkpoints.latest(cfg.models_dir)
    try:
        checkpoints.load(chosen)
        outcome = "loaded"
    except checkpoints.CheckpointError as exc:
        outcome = "refused: " + str(exc).replace(cfg.paths.root, "<paths.root>")[:160]
    finally:
        import shutil

        shutil.rmtree(folder)
    return {"fault": "a checkpoint whose pickle runs a shell command, planted as the newest model",
            "chosen_as_newest": os.path.basename(chosen), "previous_newest": os.path.basename(newest),
            "load": outcome, "code_ran": os.path.exists(marker), "rows_lost": 0}


def physical_rows_of(spark, root: str, user_ids: list, user_idxs: list) -> dict:
    """{parquet file: rows naming the users} for every parquet file on disk under the tables folder:
    current files, files of versions not yet vacuumed, change-data files. A file that cannot be read
    (half written by a killed process, in no version) counts as -1: it may hold them."""
    hits = {}
    for loc in tables.delta_tables(spark, root).values():
        folder = tables.delta_table(spark, loc).detail().first().location.replace("file:", "")
        for f in glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True):
            try:
                df = spark.read.parquet(f)
                df.schema  # noqa: B018 - reading the footer is the check
            except Exception:  # noqa: BLE001 - any unreadable file is reported, not skipped
                hits[f] = -1
                continue
            cond = F.lit(False)
            if "user_id" in df.columns:
                cond = cond | F.col("user_id").isin(user_ids)
            if "user_idx" in df.columns and "user_id" not in df.columns:
                cond = cond | F.col("user_idx").isin(user_idxs)
            if "raw" in df.columns:
                cond = cond | F.col("raw").rlike("|".join(f'"{u}"' for u in user_ids))
            n = df.where(cond).count()
            if n:
                hits[f] = n
    return hits


def forget_and_vacuum(spark, cfg: config_mod.Config) -> dict:
    root = cfg.tables_root
    cfg = config_mod.load(None, _overrides(cfg) + ["privacy.vacuum_retention_hours=0"])
    ids = [r.user_id for r in tables.read(spark, tables.location(root, schema.RECOMMENDATIONS))
           .select("user_id").distinct().orderBy("user_id").collect() if r.user_id.startswith("u")]
    users = ids[:2] + [ids[len(ids) // 2]]  # the report shows the first users of the shop
    index = {r.user_id: r.user_idx for r in tables.read(spark, tables.location(root, schema.USER_INDEX)).collect()}
    idxs = [index[u] for u in users]
    before = physical_rows_of(spark, root, users, idxs)
    path = os.path.join(cfg.paths.root, "forget.txt")
    with open(path, "w") as fh:
        fh.write("\n".join(users) + "\n")
    t0 = time.time()
    result = forget.run(spark, cfg, path)
    seconds = time.time() - t0
    left = physical_rows_of(spark, root, users, idxs)
    reports = [p for p in glob.glob(os.path.join(cfg.paths.root, "reports", "*.html"))
               if any(u in open(p).read() for u in users)]
    again = ingest.run(spark, cfg)
    features.run(spark, cfg)
    pinned = tables.pinned_versions(spark, root, (schema.TRAIN_EXAMPLES,))[schema.TRAIN_EXAMPLES]
    snapshot = spark.read.parquet(*tables.active_files(spark, tables.location(root, schema.TRAIN_EXAMPLES), pinned))
    return {"fault": "forget 3 users, vacuum retention 0, then re-ingest the raw files that still hold them",
            "seconds": round(seconds, 1), "rows_removed": result.rows_removed,
            "files_naming_them_before": len(before), "files_naming_them_after": len(left),
            "reports_deleted": result.reports_removed, "reports_naming_them_after": len(reports),
            "reingest_rows_skipped": again.suppressed_rows, "reingest_rows_inserted": again.inserted_rows,
            "next_training_snapshot_rows_of_them": snapshot.where(F.col("user_idx").isin(idxs)).count()}


def lost_rank(spark, cfg: config_mod.Config) -> dict:
    import dataclasses

    import cloudpickle
    from pyspark import cloudpickle as spark_cloudpickle

    from recsys_spark import checkpoints, train
    from recsys_spark.trainer import worker

    for pickler in (cloudpickle, spark_cloudpickle):  # LosesRank travels to the ranks by value
        pickler.register_pickle_by_value(sys.modules[__name__])
    tc = dataclasses.replace(cfg.train, launcher="torch_distributor", epochs=3, patience=100, valid_users=200)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(tc, resume="off"))
    t0 = time.time()
    full = train.run(spark, cfg)
    full_s = time.time() - t0
    cfg = dataclasses.replace(cfg, train=tc)
    job = train.prepare(spark, cfg)
    job.batches = LosesRank(job.batches, rank=1, after=job.steps_per_epoch + job.steps_per_epoch // 2)
    t0 = time.time()
    try:
        train.launch(tc.launcher, tc.num_proc, worker, job)
        failed = "no"
    except Exception as exc:  # what the job sees when an executor is lost
        failed = type(exc).__name__
    failed_s = time.time() - t0
    saved = checkpoints.find_resumable(cfg.models_dir, job.fingerprint(tc.num_proc))
    t0 = time.time()
    resumed = train.run(spark, cfg)
    return {"steps_per_epoch": job.steps_per_epoch, "killed_at_step": job.steps_per_epoch * 3 // 2,
            "failed_run": failed, "resume_state_after_failure": saved, "resumed_run_id": resumed["run_id"],
            "epochs_trained_by_rerun": len(resumed["history"]) - saved[1] if saved else None,
            "same_weights_as_uninterrupted": resumed["result"]["checksums"] == full["result"]["checksums"],
            "same_losses": [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]],
            "uninterrupted_s": round(full_s, 1), "failed_s": round(failed_s, 1),
            "rerun_s": round(time.time() - t0, 1)}


def build_shop(spark, cfg: config_mod.Config) -> None:
    from recsys_spark import cli, report
    from recsys_spark.generate import generate

    generate(cfg.generate, cfg.paths.raw)
    for stage in ("ingest", "features", "train", "evaluate", "score"):
        cli.run_stage(spark, cfg, stage)
    report.run(spark, cfg)


def main(argv=None) -> int:
    p = harness.parser(__doc__, dataset=False, config=None)
    p.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    args = p.parse_args(argv)
    with harness.work_dir(args.work, "recsys-faults-") as work:
        cfg = harness.load_config(args.config, harness.lakehouse(work) + SHOP + args.overrides)
        if cfg is None:
            return 2
        with harness.spark_session(cfg) as spark:
            t0 = time.time()
            build_shop(spark, cfg)
            results = {"shop_seconds": round(time.time() - t0, 1)}
            for name, fn in (("killed_score_write", lambda: killed_score_write(spark, cfg)),
                             ("killed_features_run", lambda: killed_features_run(spark, cfg)),
                             ("concurrent_nightlies", lambda: concurrent_nightlies(spark, cfg)),
                             ("planted_checkpoint", lambda: planted_checkpoint(cfg)),
                             ("forget_and_vacuum", lambda: forget_and_vacuum(spark, cfg)),
                             ("lost_rank", lambda: lost_rank(spark, cfg))):
                if args.only and name not in args.only.split(","):
                    continue
                results[name] = fn()
                print(f"{name}: {json.dumps(results[name], default=str)}", flush=True)
        harness.write_result(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
