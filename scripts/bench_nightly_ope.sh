#!/usr/bin/env bash
# Off-policy evaluation of nightly runs: scripts/bench_nightly_ope.sh --out RESULT.json [--users N] [--repeats R]
# Scores R exploring nights on a generated shop, simulates feedback on what each showed, loads it
# with ingest and estimates the relevance policy with `ope` (ope.night) against its true value.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.nightly_ope "$@"
