#!/usr/bin/env bash
# Marketing benchmark: scripts/bench_marketing.sh DATASET_FILE --out RESULT.json [--set key=value ...]
# Trains on the dataset (the nightly code), then measures audience quality (each test item a
# campaign; the attention model's calibrated probability against heaviest users, item-kNN and ALS
# user factors) and calibration (against calibrated popularity); prints tables, writes RESULT.json.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.marketing "$@"
