#!/usr/bin/env bash
# Disaggregated serving on this machine: nats-server (installed and started if none answers at
# NATS_SERVER), the default model, a release build, one prefill worker (system port 8081, KV
# bootstrap port 12345), one decode worker (system port 8082) and the frontend on port 8000.
# Ctrl-C or SIGTERM stops everything it started and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/lib.sh

USAGE="usage: launch/disagg.sh [--enable-otel] [-h]
  Starts a frontend (API on :8000, DYN_HTTP_PORT), a prefill worker (metrics on :8081,
  PREFILL_SYSTEM_PORT; KV bootstrap on :12345, DISAGG_BOOTSTRAP_PORT) and a decode worker
  (metrics on :8082, DECODE_SYSTEM_PORT), plus nats-server when none answers at NATS_SERVER.
  --enable-otel  DYN_LOGGING_JSONL=true, OTEL_EXPORT_ENABLED=1, runtime spans to
                 OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (default http://localhost:4317) as
                 dynamo-frontend, dynamo-worker-prefill and dynamo-worker-decode, and the
                 engines' own spans (service sglang) with --enable-trace.
  -h, --help     this text.
  MODEL=<gguf, HF dir or name>; PREFILL_ARGS, DECODE_ARGS, FRONTEND_ARGS: extra flags;
  DYN_BIN_DIR=<dir>: run the binaries built there instead of building release ones."
launch_options "$USAGE" "$@"

MODEL="${MODEL:-SmolLM2-135M-Instruct}"
HTTP_PORT="${DYN_HTTP_PORT:-8000}"
PREFILL_PORT="${PREFILL_SYSTEM_PORT:-8081}"
DECODE_PORT="${DECODE_SYSTEM_PORT:-8082}"
BOOTSTRAP_PORT="${DISAGG_BOOTSTRAP_PORT:-12345}"
launch_prepare

DYN_SYSTEM_PORT=$PREFILL_PORT OTEL_SERVICE_NAME=dynamo-worker-prefill "$BIN/dynamo-worker" \
  --model "$MODEL" --threads 1 --enable-metrics --disaggregation-mode prefill \
  --disaggregation-bootstrap-port "$BOOTSTRAP_PORT" --disaggregation-transfer-backend tcp \
  --host 0.0.0.0 --disaggregation-bootstrap-host "${DISAGG_BOOTSTRAP_HOST:-127.0.0.1}" \
  ${TRACE_ARGS[@]+"${TRACE_ARGS[@]}"} ${PREFILL_ARGS:-} &
pids+=($!)
DYN_SYSTEM_PORT=$DECODE_PORT OTEL_SERVICE_NAME=dynamo-worker-decode "$BIN/dynamo-worker" \
  --model "$MODEL" --threads 1 --enable-metrics --disaggregation-mode decode \
  --disaggregation-transfer-backend tcp ${TRACE_ARGS[@]+"${TRACE_ARGS[@]}"} ${DECODE_ARGS:-} &
pids+=($!)
OTEL_SERVICE_NAME=dynamo-frontend "$BIN/dynamo-frontend" --http-port "$HTTP_PORT" ${FRONTEND_ARGS:-} &
pids+=($!)
log "API: http://127.0.0.1:$HTTP_PORT/v1 (docs/disaggregation.md)"
log "metrics: prefill http://127.0.0.1:$PREFILL_PORT/metrics, decode http://127.0.0.1:$DECODE_PORT/metrics, frontend http://127.0.0.1:$HTTP_PORT/metrics"
if [ "$ENABLE_OTEL" = 1 ]; then
  log "traces: OTLP to $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (e.g. \`dynamo-trace\` or deploy/'s Tempo)"
else
  log "traces: off (--enable-otel exports them)"
fi
log "Ctrl-C to stop"
wait -n "${pids[@]}"
