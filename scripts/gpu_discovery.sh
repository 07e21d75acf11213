#!/usr/bin/env bash
# Spark GPU discovery script (spark.executor.resource.gpu.discoveryScript, and on a standalone
# cluster spark.worker.resource.gpu.discoveryScript): prints the GPUs this host has, as Spark expects:
#   {"name": "gpu", "addresses": ["0", "1", ...]}
# Copy it to the same path on every worker (conf/cluster-gpu.yaml points at it).
set -euo pipefail
ids=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e 's/ //g' | paste -sd, - | sed -e 's/,/","/g')
echo "{\"name\": \"gpu\", \"addresses\": [\"${ids}\"]}"
