#!/usr/bin/env bash
# Frontend with the KV-aware router plus two workers on this machine: nats-server (installed
# and started if needed), the default model, a release build, workers on system ports 8081 and
# 8082 (each with --enable-metrics), frontend on port 8000 in --router-mode kv. Ctrl-C or
# SIGTERM stops everything it started. `launch/agg_router.sh -h` lists the options.
#   WORKER=engine (default: dynamo-worker, one thread each) | mocker; MODEL=<gguf, HF dir or name>
#   WORKERS=2: how many workers; WORKER_ARGS / FRONTEND_ARGS: extra flags, e.g.
#   FRONTEND_ARGS="--kv-overlap-score-weight 2 --router-temperature 0.5" or "--no-kv-events".
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/lib.sh

USAGE="usage: launch/agg_router.sh [--enable-otel] [-h]
  Starts \$WORKERS workers (default 2; metrics on :8081, :8082, ...) and the frontend in
  --router-mode kv (API on :8000, DYN_HTTP_PORT), plus nats-server when none answers at
  NATS_SERVER.
  --enable-otel  DYN_LOGGING_JSONL=true, OTEL_EXPORT_ENABLED=1, runtime spans to
                 OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (default http://localhost:4317) as
                 dynamo-frontend and dynamo-worker-<n>, and the engines' own spans (service
                 sglang) with --enable-trace.
  -h, --help     this text.
  WORKER=engine|mocker; MODEL=<gguf, HF dir or name>; WORKER_ARGS, FRONTEND_ARGS: extra
  flags; DYN_BIN_DIR=<dir>: run the binaries built there instead of building release ones."
launch_options "$USAGE" "$@"

MODEL="${MODEL:-SmolLM2-135M-Instruct}"
WORKER="${WORKER:-engine}"
WORKERS="${WORKERS:-2}"
launch_prepare

for i in $(seq 1 "$WORKERS"); do
  port=$((8080 + i))
  case "$WORKER" in
    engine) DYN_SYSTEM_PORT=$port OTEL_SERVICE_NAME="dynamo-worker-$i" "$BIN/dynamo-worker" \
              --model "$MODEL" --threads 1 --enable-metrics ${TRACE_ARGS[@]+"${TRACE_ARGS[@]}"} ${WORKER_ARGS:-} &;;
    mocker) DYN_SYSTEM_PORT=$port OTEL_SERVICE_NAME="dynamo-worker-$i" "$BIN/dynamo-mocker" --model "$MODEL" ${WORKER_ARGS:-} &;;
    *) log "unknown WORKER=$WORKER (engine | mocker)"; exit 2;;
  esac
  pids+=($!)
done
OTEL_SERVICE_NAME=dynamo-frontend "$BIN/dynamo-frontend" --http-port "${DYN_HTTP_PORT:-8000}" --router-mode kv ${FRONTEND_ARGS:-} &
pids+=($!)
log "frontend (KV router) on http://127.0.0.1:${DYN_HTTP_PORT:-8000}; workers' /metrics on :8081..:$((8080 + WORKERS)); Ctrl-C to stop"
wait -n "${pids[@]}"
