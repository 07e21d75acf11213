#!/usr/bin/env bash
# What a launch of the ranks costs apart from training, under Horovod and TorchDistributor:
#   scripts/bench_launch_overhead.sh --out RESULT.json [--repeats 5] [--ranks 2]
# See benchmarks/launch_overhead.py for the method.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.launch_overhead "$@"
