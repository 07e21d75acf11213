#!/usr/bin/env bash
# The nightly at growing shop sizes, per stage wall time and peak memory:
#   scripts/bench_scale.sh --out RESULT.json [--events 1000000,10000000] [--cluster] [--set key=value ...]
# --cluster starts a standalone cluster here (two workers of one core, as tests/test_cluster.py).
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.scale "$@"
