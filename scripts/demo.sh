#!/usr/bin/env bash
# One command for a fresh machine: set up, generate a synthetic shop, run the nightly pipeline
# (ingest, features, train, evaluate - which promotes the model - and score) on local Spark + local Delta, show the result, and read
# the audiences of the campaigns in conf/campaigns.yaml (one shown with reasons), read out a
# simulated A/B test (popularity vs the attention model) on the same shop; then write the HTML
# report (data/local/reports/latest.html).
# Extra arguments are config overrides, e.g. scripts/demo.sh --set generate.events=1000000
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup.sh)
"$py" -m recsys_spark generate --config conf/local.yaml "$@"
"$py" -m recsys_spark nightly --config conf/local.yaml "$@"
"$py" -m recsys_spark show --config conf/local.yaml "$@"
"$py" -m recsys_spark audience --config conf/local.yaml "$@"
"$py" -m recsys_spark show --campaign coffee-week --config conf/local.yaml "$@"
"$py" -m recsys_spark abtest-simulate --config conf/local.yaml "$@"
"$py" -m recsys_spark abtest --config conf/local.yaml "$@"
"$py" -m recsys_spark report --config conf/local.yaml "$@"
