#!/usr/bin/env bash
# Quality benchmark: scripts/bench_quality.sh DATASET_FILE --out RESULT.json [--set key=value ...]
# Runs ingest, features, train and evaluate (the nightly code) on the dataset with the attention
# model and the popularity, ALS and item-kNN baselines; prints a table and writes RESULT.json.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.quality "$@"
