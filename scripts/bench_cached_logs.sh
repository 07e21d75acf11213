#!/usr/bin/env bash
# Delta's cached logs in a session that makes many lakehouses: scripts/bench_cached_logs.sh --out RESULT.json [--lakes 5]
# See benchmarks/cached_logs.py for the method.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.cached_logs "$@"
