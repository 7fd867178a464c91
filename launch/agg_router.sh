#!/usr/bin/env bash
# Frontend with the KV-aware router plus two workers on this machine: nats-server (installed
# and started if needed), the default model, a release build, workers on system ports 8081 and
# 8082 (each with --enable-metrics), frontend on port 8000 in --router-mode kv. Ctrl-C stops it.
#   WORKER=engine (default: dynamo-worker, one thread each) | mocker; MODEL=<gguf, HF dir or name>
#   WORKERS=2: how many workers; WORKER_ARGS / FRONTEND_ARGS: extra flags, e.g.
#   FRONTEND_ARGS="--kv-overlap-score-weight 2 --router-temperature 0.5" or "--no-kv-events".
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/lib.sh

MODEL="${MODEL:-SmolLM2-135M-Instruct}"
WORKER="${WORKER:-engine}"
WORKERS="${WORKERS:-2}"
launch_prepare

for i in $(seq 1 "$WORKERS"); do
  port=$((8080 + i))
  case "$WORKER" in
    engine) DYN_SYSTEM_PORT=$port OTEL_SERVICE_NAME="dynamo-worker-$i" "$BIN/dynamo-worker" \
              --model "$MODEL" --threads 1 --enable-metrics ${WORKER_ARGS:-} &;;
    mocker) DYN_SYSTEM_PORT=$port "$BIN/dynamo-mocker" --model "$MODEL" ${WORKER_ARGS:-} &;;
    *) log "unknown WORKER=$WORKER (engine | mocker)"; exit 2;;
  esac
  pids+=($!)
done
"$BIN/dynamo-frontend" --http-port "${DYN_HTTP_PORT:-8000}" --router-mode kv ${FRONTEND_ARGS:-} &
pids+=($!)
log "frontend (KV router) on http://127.0.0.1:${DYN_HTTP_PORT:-8000}; workers' /metrics on :8081..:$((8080 + WORKERS)); Ctrl-C to stop"
wait -n "${pids[@]}"
