#!/usr/bin/env bash
# Off-policy evaluation benchmark: scripts/bench_ope.sh --out RESULT.json [--users N] [--repeats R]
# On a generated shop, logs with an exploring relevance policy under R seeds and estimates three
# candidate policies (DM, IPS, SNIPS, DR) against the simulator's true values: coverage, bias, sd.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.ope "$@"
