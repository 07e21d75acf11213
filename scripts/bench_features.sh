#!/usr/bin/env bash
# Feature groups and cold start: scripts/bench_features.sh DATASET_FILE --out RESULT.json
#   [--variants all,no_profile,no_behaviour,no_content,no_text,no_vectors,id_only] [--set key=value ...]
# DATASET_FILE `shop` generates the synthetic shop of --config's generate section (e.g. conf/local.yaml).
# Ingests the dataset with its side files (users.dat/movies.dat for ml-1m, item attributes for
# Beauty), holds out 10% of users and items, trains one model per variant (feature groups off) with
# the nightly code, and prints warm and cold-start metrics against popularity.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
exec "$py" -m benchmarks.features "$@"
