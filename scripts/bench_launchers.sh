#!/usr/bin/env bash
# Horovod and TorchDistributor side by side (2 CPU ranks by conf/bench.yaml), same data, same time:
#   scripts/bench_launchers.sh DATASET_FILE --out RESULT.json [--seconds 240] [--repeats 2] [--set key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.launchers "$@"
