#!/usr/bin/env bash
# One command for a fresh machine: set up, then run the whole test suite (real Spark, Delta,
# Petastorm, Horovod and a standalone Spark cluster). Extra arguments go to pytest.
# pytest's exit code 5 (no tests collected) is turned into a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh) || exit 1
"$py" -m pytest "$@"
rc=$?
if [ "$rc" = 5 ]; then echo "error: no tests were collected" >&2; exit 1; fi
exit "$rc"
