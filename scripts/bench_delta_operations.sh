#!/usr/bin/env bash
# What one Delta operation costs: scripts/bench_delta_operations.sh --out RESULT.json [--rows 100,100000]
# See benchmarks/delta_operations.py for the method.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.delta_operations "$@"
