#!/usr/bin/env bash
# GPU verification (issue 19), for a machine with an NVIDIA GPU, nvcc, cmake, ninja and a Python with
# numpy, pybind11 and pytest (torch with CUDA is optional: the torch comparison is skipped without it).
#   1. builds annforge with -DANNFORGE_CUDA=ON into build/gpu/pkg (the source tree stays untouched),
#   2. runs the tests marked `cuda` (every GPU result compared with the CPU result),
#   3. runs bench/bench_gpu.py on 1M x 384 (exact search, IVF-PQ, k-means; GPU vs torch vs CPU).
# Budget: under 8 minutes on one H200 + 16 cores. Usage: tools/verify_gpu.sh [extra bench_gpu.py args]
# Environment: PYTHON (default python3), JOBS (default nproc), CUDA_ARCH (default: this GPU's, e.g. 90-real).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
PKG="$ROOT/build/gpu/pkg"
STAMP=$(date -u +%Y-%m-%d)
RESULTS="$ROOT/bench/results/gpu_${STAMP}.txt"
start=$(date +%s)
elapsed() { echo "[verify_gpu] $(( $(date +%s) - start )) s: $*"; }

command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[ -x "$NVCC" ] || { echo "[verify_gpu] nvcc not found (set NVCC=/path/to/nvcc)"; exit 1; }
if [ -z "${CUDA_ARCH:-}" ]; then
  # Only this GPU's architecture: a third of the compile time of the shipped set (80;90;90-PTX).
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
  CUDA_ARCH=${cap:+${cap}-real}
  CUDA_ARCH=${CUDA_ARCH:-"80-real;90-real;90-virtual"}
fi
"$PY" -c "import numpy, pybind11, pytest" || { echo "[verify_gpu] $PY lacks numpy / pybind11 / pytest"; exit 1; }

# --- 1. build ---------------------------------------------------------------------------------------
rm -rf "$PKG" && mkdir -p "$PKG"
cp -r python/annforge "$PKG/"
find "$PKG" \( -name '_core*.so' -o -name '_cuda*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DANNFORGE_CUDA=ON \
  -DANNFORGE_CUDA_ARCHITECTURES="$CUDA_ARCH" -DCMAKE_CUDA_COMPILER="$NVCC" \
  -DANNFORGE_DEV_OUTPUT_DIR="$PKG/annforge" \
  -Dpybind11_DIR="$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DPython_EXECUTABLE="$(command -v "$PY")" > build-gpu.log 2>&1 \
  && ninja -C build/gpu -j"$JOBS" >> build-gpu.log 2>&1 \
  || { tail -40 build-gpu.log; echo "[verify_gpu] build failed"; exit 1; }
elapsed "built (archs $CUDA_ARCH)"
PYTHONPATH="$PKG" "$PY" -c "import annforge as af; i = af.build_info(); print(i['cuda'], i['cuda_architectures'], af.gpu_available())"
PYTHONPATH="$PKG" "$PY" -c "import annforge as af, sys; sys.exit(0 if af.gpu_available() else 1)" \
  || { echo "[verify_gpu] the CUDA module finds no GPU"; exit 1; }

# --- 2. the cuda tests -------------------------------------------------------------------------------
rc=0
PYTHONPATH="$PKG" timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_gpu.py || rc=$?
elapsed "cuda tests (exit $rc)"
# CPU-side GPU tests too (error paths are skipped where a GPU exists).
PYTHONPATH="$PKG" timeout 120 "$PY" -m pytest -q -p no:cacheprovider -m "not cuda" tests/test_gpu.py tests/test_flat.py || rc=$?

# --- 3. benchmark ------------------------------------------------------------------------------------
mkdir -p "$(dirname "$RESULTS")"
PYTHONPATH="$PKG" timeout 330 "$PY" bench/bench_gpu.py --n 1000000 --dim 384 --queries 10000 --repeats 2 \
  --out "$RESULTS" "$@" || rc=$?
elapsed "benchmark written to $RESULTS"
exit $rc
