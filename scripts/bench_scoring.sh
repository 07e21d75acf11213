#!/usr/bin/env bash
# Scoring benchmark: scripts/bench_scoring.sh --out RESULT.json [--sizes 10000x10000,...] [--k 100]
# users/s of the product's top-K scoring (attention encoder + blocked top-K, and the kernel alone)
# against Spark ALS recommendForAllUsers on the same factors, same session; see
# benchmarks/scoring.py for the method.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.scoring "$@"
