#!/usr/bin/env bash
# Build dynamo-worker with the `cuda` feature and check the CUDA kernels without a GPU.
#
# The feature needs no CUDA toolkit to build: cudarc opens the driver (libcuda.so.1) and NVRTC
# at run time, and the kernels (crates/engine/src/executor/device/kernels.cu) are CUDA C that
# NVRTC compiles when the executor starts. This script also checks, here, what a GPU would
# otherwise find out first:
#   1. the release worker builds with the feature;
#   2. its dynamic section names no CUDA library (ldd; the device image provides the driver,
#      NVRTC comes from pip's nvidia-cuda-nvrtc);
#   3. the kernels compile with the pinned NVRTC 13.0 for compute_90 and assemble for sm_90
#      with ptxas 13.0 (registers and spills printed), the CUDA version the lent H100/H200
#      machines' driver (580, CUDA 13.0) accepts.
# The pinned wheels go into $DYN_HOME/cuda-13.0 (a virtual environment; ~130 MB download).
# Then it stages what a GPU machine without a Rust toolchain needs in gpu-carry/ (ignored by
# git; the device tool carries it): the stripped binaries (worker and engine check with the
# feature, frontend, dynamo-trace) and nats-server. The model (98 MB) does not fit the 64 MiB a
# device call carries: see docs/gpu.md.
#   launch/build-cuda.sh [--no-build]    (env: CUDA_ARCH=90)
#   launch/build-cuda.sh --check BINARY  (checks 2 and 3 on a worker built elsewhere, no
#                                         staging; tests/run.sh runs this on the suite's worker)
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/lib.sh
CUDA_PIN="13.0.88"
ARCH="${CUDA_ARCH:-90}"
VENV="$DYN_HOME/cuda-13.0"
build=1 stage=1
BIN="$CARGO_TARGET_DIR/release/dynamo-worker"
case "${1:-}" in
  --no-build) build=0 ;;
  --check) build=0 stage=0 BIN="${2:?--check takes the worker binary}" ;;
esac

if [ "$build" = 1 ]; then
  log "building dynamo-worker --features cuda (release)"
  cargo build --release --locked -p dynamo-worker -p dynamo-engine-check --features \
    dynamo-worker/cuda,dynamo-engine-check/cuda
  cargo build --release --locked -p dynamo-frontend -p dynamo-trace-bin
fi
[ -x "$BIN" ] || { log "$BIN is missing (run without --no-build)"; exit 1; }
linked=$(ldd "$BIN" | grep -Ei 'cuda|nvrtc|cublas' || true)
if [ -n "$linked" ]; then
  log "FAIL: the worker links CUDA libraries it should open at run time:"; echo "$linked"; exit 1
fi
log "ok: $BIN links no CUDA library ($(ldd "$BIN" | wc -l) shared objects, none from CUDA)"

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with nvidia-cuda-nvrtc and nvidia-cuda-nvcc $CUDA_PIN"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q "nvidia-cuda-nvrtc==$CUDA_PIN" "nvidia-cuda-nvcc==$CUDA_PIN"
CU="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
export LD_LIBRARY_PATH="$CU/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
OUTDIR=$(mktemp -d)
trap 'rm -rf "$OUTDIR"' EXIT
"$VENV/bin/python" tests/gpu/compile_kernels.py crates/engine/src/executor/device/kernels.cu \
  "compute_$ARCH" "$OUTDIR/kernels.ptx"
"$CU/bin/ptxas" -arch="sm_$ARCH" -v "$OUTDIR/kernels.ptx" -o "$OUTDIR/kernels.cubin" 2>&1 |
  grep -E "Compiling entry|registers|spill" | sed 's/^ptxas info *: //'
log "ok: every kernel compiles with NVRTC $CUDA_PIN and assembles for sm_$ARCH"
[ "$stage" = 1 ] || exit 0
ensure_nats
mkdir -p gpu-carry/bin
for b in dynamo-worker dynamo-engine-check dynamo-frontend dynamo-trace; do
  cp "$CARGO_TARGET_DIR/release/$b" gpu-carry/bin/ && strip gpu-carry/bin/$b
done
cp "$(command -v nats-server)" gpu-carry/bin/
log "staged gpu-carry/ ($(du -sh gpu-carry | cut -f1)); on the GPU machine: tests/gpu/run.sh (docs/gpu.md)"
