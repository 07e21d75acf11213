#!/usr/bin/env bash
# Build the Horovod 0.28.1 wheel (PyTorch + Gloo, no MPI/TF/MXNet) once and cache it.
#
# The PyPI sdist is patched before building:
# - Horovod 0.28.1 as released sets C++14 in its CMake files, while torch >= 2.1 headers need C++17.
# - Its Spark task keeps a command alive for at least 3 s "after command started" (so that the
#   driver can connect to ask for the exit code), but starts that clock when the command has ended:
#   every launch waited 3 s more after its ranks had returned. The clock starts with the command.
# PyPI's cmake 4.x rejects gloo's cmake_minimum_required, so the system cmake (Debian's 3.25) must
# be on PATH.
#
# Usage: scripts/build_horovod.sh PYTHON WHEEL_DIR
#   PYTHON     interpreter of the environment that already has torch installed
#   WHEEL_DIR  cache directory; the wheel is built against that torch's C++ ABI, so it is cached
#              under WHEEL_DIR/torch-<version>-patches<N>/ (N: the revision of the patches below);
#              if a horovod-0.28.1 wheel is already there, nothing is built. Prints the wheel's path
#              on the last line of stdout.
#
# GPU mode, HOROVOD_GPU=1: gradients are reduced with NCCL on the GPUs (HOROVOD_GPU_OPERATIONS=NCCL),
# for Horovod ranks on GPU executors (train.launcher: horovod on conf/cluster-gpu.yaml). Needs the
# CUDA toolkit (nvcc; HOROVOD_CUDA_HOME, default /usr/local/cuda) on the building host; NCCL comes
# from torch's nvidia-nccl-cu12 package unless HOROVOD_NCCL_HOME is set. Cached apart from the CPU
# wheel (torch-<version>-patches<N>-nccl/). Not built by CI (no GPU, no CUDA toolkit there).
set -euo pipefail
py=${1:?usage: build_horovod.sh PYTHON WHEEL_DIR}
torch_version=$("$py" -c "import torch; print(torch.__version__.split('+')[0])")
gpu=${HOROVOD_GPU:-0}
patches=2  # raise it when the patches below change, so that no wheel built without them is reused
wheel_dir=${2:?usage: build_horovod.sh PYTHON WHEEL_DIR}/torch-$torch_version-patches$patches$([ "$gpu" = 1 ] && echo -nccl || true)
version=0.28.1
mkdir -p "$wheel_dir"
if ls "$wheel_dir"/horovod-"$version"-*.whl >/dev/null 2>&1; then
  echo "horovod $version wheel for torch $torch_version already cached in $wheel_dir" >&2
  ls "$wheel_dir"/horovod-"$version"-*.whl | head -1
  exit 0
fi
if ! command -v cmake >/dev/null || ! cmake --version | head -1 | grep -qE ' 3\.'; then
  echo "error: Horovod's build needs cmake 3.x on PATH (found: $(cmake --version 2>/dev/null | head -1 || echo none))." >&2
  echo "       On Debian/Ubuntu: apt-get install -y cmake g++ make" >&2
  exit 1
fi
gpu_flags=()
if [ "$gpu" = 1 ]; then
  cuda_home=${HOROVOD_CUDA_HOME:-/usr/local/cuda}
  [ -x "$cuda_home/bin/nvcc" ] || { echo "error: HOROVOD_GPU=1 needs the CUDA toolkit: no nvcc under $cuda_home (set HOROVOD_CUDA_HOME)" >&2; exit 1; }
  nccl_home=${HOROVOD_NCCL_HOME:-$("$py" -c "import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))")}
  gpu_flags=(HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME="$cuda_home" HOROVOD_NCCL_HOME="$nccl_home" HOROVOD_NCCL_LINK=SHARED)
  echo "GPU build: NCCL from $nccl_home, CUDA from $cuda_home" >&2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip download --no-deps --no-binary :all: -d "$work" "horovod==$version" >&2
tar -xzf "$work"/horovod-"$version".tar.gz -C "$work"
src="$work/horovod-$version"
sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" || { echo "error: C++17 patch did not apply" >&2; exit 1; }
"$py" - "$src/horovod/spark/task/task_service.py" <<'PATCH'
import sys
path = sys.argv[1]
text = open(path).read()
run = """        super(SparkTaskService, self)._run_command(command, env, event,
                                                   stdout, stderr, index,
                                                   prefix_output_with_timestamp)
"""
clock = """
        if self._minimum_command_lifetime_s is not None:
            self._minimum_command_lifetime = timeout.Timeout(self._minimum_command_lifetime_s,
                                                             message='Just measuring runtime')
"""
if text.count(run + clock) != 1:
    sys.exit("error: the command-lifetime patch did not apply to " + path)
open(path, "w").write(text.replace(run + clock, clock.lstrip("\n") + "\n" + run))
PATCH
echo "building horovod $version wheel against torch $torch_version (about 5 minutes on 2 cores)..." >&2
env "${gpu_flags[@]}" HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
  "$py" -m pip wheel --no-deps --no-build-isolation -w "$work/out" "$src" >&2
cp "$work"/out/horovod-*.whl "$wheel_dir"/
echo "cached $(ls "$wheel_dir"/horovod-*.whl)" >&2
ls "$wheel_dir"/horovod-"$version"-*.whl | head -1
