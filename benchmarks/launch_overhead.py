"""What starting and ending the ranks costs, apart from any training: the floor under every `train`
run and under the tests that launch ranks.

    python -m benchmarks.launch_overhead --out RESULT.json [--repeats 5] [--ranks 2] [--hold 0]
        [--set key=value ...]

Launches a rank function that only joins the process group, gathers the rank numbers and returns
(after waiting --hold seconds: Horovod keeps a rank's command alive for at least 3 s, so a hold
tells that minimum from the fixed cost of ending a launch), with the product's `train.launch`,
under each launcher in turn (alternating which goes first), on one warm Spark session (the first
launch of each launcher is dropped as warm-up). Per launch: the
wall time, and its three parts as the rank-0 function sees them: from the call until the function
starts (Spark job, rank processes, imports), the function itself (imports of the rank code, joining,
gathering), and from its return until the driver has the result (rank processes and Spark tasks
ending). Prints the medians per launcher.
"""
from __future__ import annotations

import statistics
import sys
import time

from benchmarks import harness
from recsys_spark.config import LAUNCHERS


def joined_ranks(launcher: str, hold_s: float) -> dict:
    """Rank function: the rank numbers rank 0 gathered, and when the function started and returned."""
    started = time.time()
    from recsys_spark import ranks as ranks_mod

    ranks = ranks_mod.connect(launcher)
    numbers, rank = ranks.gather(ranks.rank), ranks.rank
    ranks.close()
    time.sleep(hold_s)
    return {"rank": rank, "ranks": numbers, "started": started, "returned": time.time()}


def launch_once(launcher: str, n_ranks: int, hold_s: float) -> dict:
    from recsys_spark import train

    t0 = time.time()
    out = train.launch(launcher, n_ranks, joined_ranks, launcher, hold_s)
    done = time.time()
    if out["ranks"] != list(range(n_ranks)):
        raise RuntimeError(f"{launcher}: rank 0 gathered {out['ranks']}, expected ranks 0..{n_ranks - 1}")
    return {"launcher": launcher, "wall_s": round(done - t0, 2), "until_started_s": round(out["started"] - t0, 2),
            "in_function_s": round(out["returned"] - out["started"], 2),
            "after_return_s": round(done - out["returned"], 2)}


def medians(runs: list[dict]) -> dict:
    keys = ("wall_s", "until_started_s", "in_function_s", "after_return_s")
    return {launcher: {k: round(statistics.median(r[k] for r in runs if r["launcher"] == launcher), 2) for k in keys}
            for launcher in LAUNCHERS}


def main(argv: list[str] | None = None) -> int:
    import cloudpickle
    from pyspark import cloudpickle as spark_cloudpickle

    p = harness.parser(__doc__, dataset=False, config=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--hold", type=float, default=0.0, help="seconds the rank function waits before it returns")
    args = p.parse_args(argv)
    # The rank function travels by value: this module is not importable where the ranks start.
    for pickler in (cloudpickle, spark_cloudpickle):
        pickler.register_pickle_by_value(sys.modules[__name__])
    with harness.work_dir(args.work, "bench-launch-overhead-") as work:
        cfg = harness.load_config(args.config, harness.lakehouse(work) + ["spark.master=local[2]",
                                                                          f"train.num_proc={args.ranks}"] + args.overrides)
        if cfg is None:
            return 2
        with harness.spark_session(cfg) as spark:
            from recsys_spark import train
            from recsys_spark.config import ConfigError

            try:
                train.check_slots(spark, cfg)
            except ConfigError as e:
                print(f"--ranks {args.ranks}: {e}", file=sys.stderr)
                return 2
            for launcher in LAUNCHERS:
                launch_once(launcher, args.ranks, args.hold)  # warm-up: first imports, first Spark jobs
            runs = []
            for i in range(args.repeats):
                for launcher in (LAUNCHERS if i % 2 == 0 else LAUNCHERS[::-1]):
                    runs.append({"repeat": i, **launch_once(launcher, args.ranks, args.hold)})
                    print(runs[-1], flush=True)
    result = {"benchmark": "launch_overhead", "ranks": args.ranks, "hold_s": args.hold, "repeats": args.repeats, "runs": runs,
              "medians": medians(runs)}
    for launcher, m in result["medians"].items():
        print(f"{launcher:>17}: {m['wall_s']:.2f}s per launch (until the function starts {m['until_started_s']:.2f}s, "
              f"in it {m['in_function_s']:.2f}s, after it returns {m['after_return_s']:.2f}s)")
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
