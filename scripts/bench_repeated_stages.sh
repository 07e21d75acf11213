#!/usr/bin/env bash
# A stage run again in one Spark session: scripts/bench_repeated_stages.sh --out RESULT.json [--stage features]
# See benchmarks/repeated_stages.py for the method.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.repeated_stages "$@"
