#!/usr/bin/env bash
# The observability stack for machines without Docker: Debian's prometheus (installed when
# missing) with deploy/observability/prometheus.yml's dynamo jobs, their targets rewritten to the
# processes of launch/*.sh on this machine, and dynamo-trace as the OTLP/gRPC receiver that
# launch/*.sh --enable-otel exports to. Ctrl-C or SIGTERM stops both and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/lib.sh

USAGE="usage: launch/observability.sh [-h]
  Starts Prometheus on PROMETHEUS_LISTEN (default 127.0.0.1:9090) scraping the dynamo-frontend
  job at FRONTEND_TARGET (default 127.0.0.1:8000) and the dynamo-backend job at WORKER_TARGETS
  (default \"127.0.0.1:8081,127.0.0.1:8082\": launch/agg.sh's worker, launch/disagg.sh's
  prefill and decode workers), with the scrape intervals of deploy/observability/prometheus.yml;
  and dynamo-trace, an OTLP/gRPC receiver on TRACE_LISTEN (default 127.0.0.1:4317, where
  launch/*.sh --enable-otel sends spans) that prints every finished trace as a tree here.
  The NATS exporter and DCGM jobs are dropped: those exporters are containers of
  deploy/docker-observability.yml. Grafana (the dashboards) and Tempo (trace search) come only
  with that compose file; this script is the no-Docker subset.
  -h, --help  this text.
  PROMETHEUS_DATA=<dir> (default ~/.cache/dynamo/prometheus); TRACE_JSONL=<file> also appends
  every span there as JSON; DYN_BIN_DIR=<dir>: run the dynamo-trace built there instead of
  building a release one."
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) printf '%s\n' "$USAGE"; exit 0;;
    *) log "unknown option: $1"; printf '%s\n' "$USAGE" >&2; exit 2;;
  esac
done

PROMETHEUS_LISTEN="${PROMETHEUS_LISTEN:-127.0.0.1:9090}"
TRACE_LISTEN="${TRACE_LISTEN:-127.0.0.1:4317}"
FRONTEND_TARGET="${FRONTEND_TARGET:-127.0.0.1:8000}"
WORKER_TARGETS="${WORKER_TARGETS:-127.0.0.1:8081,127.0.0.1:8082}"
PROMETHEUS_DATA="${PROMETHEUS_DATA:-$DYN_HOME/prometheus}"
CONFIG_DIR="$PROMETHEUS_DATA/config"
mkdir -p "$CONFIG_DIR"

ensure_prometheus
if [ -n "${DYN_BIN_DIR:-}" ]; then
  TRACE_BIN="$DYN_BIN_DIR/dynamo-trace"
else
  log "building dynamo-trace (cargo build --release --bin dynamo-trace)"
  cargo build --release -q --bin dynamo-trace
  TRACE_BIN="$CARGO_TARGET_DIR/release/dynamo-trace"
fi

# The compose file's scrape config, for processes on this host: container-only jobs dropped,
# host.docker.internal targets replaced by the local ones.
quote_list() { local out="" t; IFS=',' read -ra ts <<<"$1"
  for t in "${ts[@]}"; do out="$out${out:+, }\"$t\""; done; printf '%s' "$out"; }
CONFIG="$CONFIG_DIR/prometheus.yml"
awk -v fe="\"$FRONTEND_TARGET\"" -v workers="$(quote_list "$WORKER_TARGETS")" '
  /^  - job_name:/ { job = $3; drop = (job == "nats-prometheus-exporter" || job == "dcgm-exporter") }
  /^[^ #]/ { job = ""; drop = 0 }
  drop { next }
  job == "dynamo-frontend" && /targets:/ { sub(/\[.*\]/, "[" fe "]") }
  job == "dynamo-backend" && /targets:/ { sub(/\[.*\]/, "[" workers "]") }
  { print }
' deploy/observability/prometheus.yml >"$CONFIG"
promtool check config "$CONFIG" >/dev/null

pids=()
cleanup() {
  trap - EXIT INT TERM
  [ ${#pids[@]} -gt 0 ] || return 0
  log "stopping"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

prometheus --config.file="$CONFIG" --storage.tsdb.path="$PROMETHEUS_DATA/data" \
  --web.listen-address="$PROMETHEUS_LISTEN" --web.enable-lifecycle \
  >"$PROMETHEUS_DATA/prometheus.log" 2>&1 &
pids+=($!)
"$TRACE_BIN" --listen "$TRACE_LISTEN" ${TRACE_JSONL:+--jsonl "$TRACE_JSONL"} &
pids+=($!)

log "Prometheus: http://$PROMETHEUS_LISTEN (graph UI; /targets: dynamo-frontend $FRONTEND_TARGET, dynamo-backend $WORKER_TARGETS; log $PROMETHEUS_DATA/prometheus.log)"
log "  e.g. curl -s 'http://$PROMETHEUS_LISTEN/api/v1/query?query=sglang:num_running_reqs'"
log "traces: OTLP/gRPC on $TRACE_LISTEN (launch/disagg.sh --enable-otel); dynamo-trace prints each finished trace below"
log "Grafana and Tempo: docker compose -f deploy/docker-observability.yml up -d (docs/observability/README.md)"
log "Ctrl-C to stop"
wait -n "${pids[@]}"
