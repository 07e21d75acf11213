#!/usr/bin/env bash
# Injected faults and what they cost: scripts/bench_faults.sh --out RESULT.json [--work DIR]
# See benchmarks/faults.py for the faults.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.faults "$@"
