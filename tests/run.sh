#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs a current nats-server, the default
# model, Debian's prometheus (with promtool), a compose tool (Debian's docker-compose) and the
# openai Python client when missing, then format check, clippy (warnings fail), build, every test,
# and the CUDA kernels' compile check (launch/build-cuda.sh --check).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/lib.sh

ensure_nats
ensure_model
ensure_prometheus
ensure_docker_compose
ensure_openssl
ensure_openai_client
log "nats-server: $(command -v nats-server) ($(nats-server --version))"

# The suite's worker binary carries the test-only fault injection (a panicking engine) and the
# CUDA executor (type-checked, linted and its no-driver refusal tested; no GPU here); the
# same features everywhere, so no step rebuilds the binaries without it.
features=(--features dynamo-worker/fault-injection,dynamo-worker/cuda)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings
cargo build --workspace --bins --locked "${features[@]}"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "${features[@]}"
else
  cargo test --workspace --locked --no-fail-fast "${features[@]}"
fi
cargo test --workspace --doc --locked "${features[@]}"
# The CUDA kernels without a GPU: the suite's worker links no CUDA library, and every kernel
# compiles with the pinned NVRTC 13.0 and assembles for sm_90 (pip wheels, ~130 MB once).
# DYN_SKIP_CUDA_CHECK=1 skips it.
if [ -z "${DYN_SKIP_CUDA_CHECK:-}" ]; then
  launch/build-cuda.sh --check "$CARGO_TARGET_DIR/debug/dynamo-worker"
fi
