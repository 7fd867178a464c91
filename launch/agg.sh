#!/usr/bin/env bash
# Bring the whole system up on this machine: nats-server (installed and started if needed), the
# default model, a release build, one worker and the frontend on port 8000. Ctrl-C stops it all.
#   WORKER=engine (default: dynamo-worker, the real engine) | mocker; MODEL=<gguf, HF dir or name>
#   WORKER_ARGS / FRONTEND_ARGS: extra flags (e.g. WORKER_ARGS="--threads 2 --page-size 16").
#   DYN_HTTP_PORT=8000, DYN_SYSTEM_PORT=8081 for the worker's /metrics (sglang: families on:
#   the engine runs with --enable-metrics) and /health.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/lib.sh

MODEL="${MODEL:-SmolLM2-135M-Instruct}"
WORKER="${WORKER:-engine}"
launch_prepare

case "$WORKER" in
  engine) DYN_SYSTEM_PORT="${DYN_SYSTEM_PORT:-8081}" "$BIN/dynamo-worker" --model "$MODEL" --enable-metrics ${WORKER_ARGS:-} &;;
  mocker) DYN_SYSTEM_PORT="${DYN_SYSTEM_PORT:-8081}" "$BIN/dynamo-mocker" --model "$MODEL" ${WORKER_ARGS:-} &;;
  *) log "unknown WORKER=$WORKER (engine | mocker)"; exit 2;;
esac
pids+=($!)
"$BIN/dynamo-frontend" --http-port "${DYN_HTTP_PORT:-8000}" ${FRONTEND_ARGS:-} &
pids+=($!)
log "frontend on http://127.0.0.1:${DYN_HTTP_PORT:-8000} (try docs/quickstart.md); Ctrl-C to stop"
wait -n "${pids[@]}"
