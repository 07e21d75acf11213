#!/usr/bin/env bash
# Refresh latency: scripts/bench_refresh.sh --out RESULT.json [--users N] [--rate EVENTS_PER_S] [--seconds S]
# Runs the nightly on a generated shop, starts the refresh stream and feeds it views at a steady
# rate; prints the events-commit -> updated-lists latency (p50, p95, max) from the Delta logs.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.refresh "$@"
