#!/usr/bin/env bash
# Bring this machine to a working state: Java check, a Python venv with the pinned stack, the
# Horovod wheel (built once, cached), and this checkout installed in editable mode.
#
# Everything is cached under $RECSYS_SPARK_CACHE (default ~/.cache/recsys-spark), so the second run
# takes seconds. Prints the venv's python path on the last line of stdout.
#
# Env: RECSYS_SPARK_CACHE  cache directory (venv, wheels)
#      PYTHON             interpreter to build the venv from (default python3.11, else python3)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${RECSYS_SPARK_CACHE:-$HOME/.cache/recsys-spark}
venv=$cache/venv
log() { echo "[setup] $*" >&2; }

if ! command -v java >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing a Java runtime for Spark (apt-get)"
    apt-get update -qq >&2 && apt-get install -y -qq openjdk-17-jre-headless >&2
  else
    log "error: Spark needs Java 8/11/17 on PATH (e.g. apt-get install openjdk-17-jre-headless)"; exit 1
  fi
fi
if ! command -v cmake >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing cmake and g++ for the Horovod build (apt-get)"
    apt-get update -qq >&2 && apt-get install -y -qq cmake g++ make >&2
  fi
fi

if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Chromium to check the HTML report renders (apt-get)"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2 \
      || log "warning: could not install chromium; the report rendering test will fail"
  fi
fi

py=${PYTHON:-$(command -v python3.11 || command -v python3)}
mkdir -p "$cache"
if [ ! -x "$venv/bin/python" ]; then
  log "creating virtualenv $venv"
  "$py" -m venv "$venv"
fi
vpy=$venv/bin/python

# Reinstall dependencies only when pyproject.toml or this script changed.
# HOROVOD_GPU=1 installs the NCCL build of Horovod instead (see scripts/build_horovod.sh).
stamp=$( (cat "$repo/pyproject.toml" "$repo/constraints.txt" "$repo/scripts/setup.sh" "$repo/scripts/build_horovod.sh"; \
  echo "gpu=${HOROVOD_GPU:-0}") \
  | sha256sum | cut -c1-16)
if [ "$(cat "$venv/.recsys-stamp" 2>/dev/null)" != "$stamp" ]; then
  log "installing the pinned stack into $venv (first run: a few minutes; torch is large)"
  "$vpy" -m pip install -q --upgrade pip wheel "setuptools>=64,<70" >&2
  # pyproject.toml holds ranges (for the wheel); constraints.txt the exact set tested here.
  "$vpy" -m pip install -q -c "$repo/constraints.txt" -e "$repo[local,test,bench]" >&2
  horovod_wheel=$("$repo/scripts/build_horovod.sh" "$vpy" "$cache/wheels" | tail -1)
  "$vpy" -m pip install -q --force-reinstall --no-deps "$horovod_wheel" >&2
  "$vpy" -c "import horovod.torch as hvd, horovod.spark, petastorm, delta, torch; assert hvd.gloo_built()" >&2
  echo "$stamp" > "$venv/.recsys-stamp"
else
  # Point the editable install at this checkout (another clone may have claimed the venv).
  # (quietly: setuptools warns about editable installs on every run; shown when it fails)
  out=$("$vpy" -m pip install -q --no-deps --no-build-isolation -e "$repo" 2>&1) || { echo "$out" >&2; exit 1; }
fi
echo "$vpy"
