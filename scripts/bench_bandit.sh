#!/usr/bin/env bash
# Feedback loop benchmark: scripts/bench_bandit.sh --out RESULT.json [--users N] [--days D] [--repeats R] [--plot F.png]
# On a generated shop, R seeded runs of bandit-simulate: a LinUCB re-ranker learning nightly from
# its rewards against the greedy model and uniform exploration (revenue and clicks per user).
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.bandit "$@"
