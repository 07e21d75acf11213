#!/usr/bin/env bash
# Audience speed: scripts/bench_audience_speed.sh --out RESULT.json [--users 100000,300000] [--campaigns 100,1000]
# Runs the audience stage on generated shops of the given sizes; prints seconds and user x campaign
# probabilities per second (medians of --repeats runs).
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.audience_speed "$@"
