#!/usr/bin/env bash
# Incremental vs full scoring: scripts/bench_incremental.sh --out RESULT.json [--users N --changed 0.01]
# See benchmarks/incremental.py for the method.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.incremental "$@"
