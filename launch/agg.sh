#!/usr/bin/env bash
# Bring the whole system up on this machine: nats-server (installed and started if needed), the
# default model, a release build, one worker and the frontend on port 8000. Ctrl-C or SIGTERM
# stops everything it started. `launch/agg.sh -h` lists the options.
#   WORKER=engine (default: dynamo-worker, the real engine) | mocker; MODEL=<gguf, HF dir or name>
#   WORKER_ARGS / FRONTEND_ARGS: extra flags (e.g. WORKER_ARGS="--threads 2 --page-size 16").
#   DYN_HTTP_PORT=8000, DYN_SYSTEM_PORT=8081 for the worker's /metrics (sglang: families on:
#   the engine runs with --enable-metrics) and /health.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/lib.sh

USAGE="usage: launch/agg.sh [--enable-otel] [-h]
  Starts one worker (metrics on :8081, DYN_SYSTEM_PORT) and the frontend (API on :8000,
  DYN_HTTP_PORT), plus nats-server when none answers at NATS_SERVER.
  --enable-otel  DYN_LOGGING_JSONL=true, OTEL_EXPORT_ENABLED=1, runtime spans to
                 OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (default http://localhost:4317) as
                 dynamo-frontend and dynamo-worker, and the engine's own spans (service
                 sglang) with --enable-trace.
  -h, --help     this text.
  WORKER=engine|mocker; MODEL=<gguf, HF dir or name>; WORKER_ARGS, FRONTEND_ARGS: extra
  flags; DYN_BIN_DIR=<dir>: run the binaries built there instead of building release ones."
launch_options "$USAGE" "$@"

MODEL="${MODEL:-SmolLM2-135M-Instruct}"
WORKER="${WORKER:-engine}"
launch_prepare

case "$WORKER" in
  engine) DYN_SYSTEM_PORT="${DYN_SYSTEM_PORT:-8081}" OTEL_SERVICE_NAME=dynamo-worker "$BIN/dynamo-worker" \
            --model "$MODEL" --enable-metrics ${TRACE_ARGS[@]+"${TRACE_ARGS[@]}"} ${WORKER_ARGS:-} &;;
  mocker) DYN_SYSTEM_PORT="${DYN_SYSTEM_PORT:-8081}" OTEL_SERVICE_NAME=dynamo-worker "$BIN/dynamo-mocker" \
            --model "$MODEL" ${WORKER_ARGS:-} &;;
  *) log "unknown WORKER=$WORKER (engine | mocker)"; exit 2;;
esac
pids+=($!)
OTEL_SERVICE_NAME=dynamo-frontend "$BIN/dynamo-frontend" --http-port "${DYN_HTTP_PORT:-8000}" ${FRONTEND_ARGS:-} &
pids+=($!)
log "frontend on http://127.0.0.1:${DYN_HTTP_PORT:-8000} (try docs/quickstart.md); Ctrl-C to stop"
wait -n "${pids[@]}"
