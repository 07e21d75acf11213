#!/usr/bin/env bash
# Refresh latency: scripts/bench_refresh.sh --out RESULT.json [--feed files|table] [--users N]
#                                            [--rate EVENTS_PER_S] [--seconds S]
# Runs the nightly on a generated shop, starts the refresh stream (and, with --feed files, the
# default, ingest --stream over a folder the feeder drops parquet files into) and feeds views at a
# steady rate; prints the new-events -> updated-lists latency (p50, p95, max) from the Delta logs.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.refresh "$@"
