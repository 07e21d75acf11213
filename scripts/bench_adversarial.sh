#!/usr/bin/env bash
# Adversarial training on the synthetic shop: scripts/bench_adversarial.sh --out RESULT.json
#   [--config conf/local.yaml] [--eps 0.2] [--fake-share 0.01] [--set key=value ...]
# Clean and attacked (fake users pushing one item) lakehouses, each trained with and without
# train.adversarial_eps; prints NDCG@10, NDCG@10 under perturbed item vectors and the pushed item's
# exposure.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.adversarial "$@"
