#!/usr/bin/env bash
# Cost of tracing end to end: aggregate output tok/s of frontend + dynamo-worker at 8
# concurrent streams (tests/bench/load.py, 128-token prompts, 64 output tokens),
# with tracing off and on (frontend and worker OTLP export plus the engine's --enable-trace,
# all three to a local dynamo-trace), each configuration started fresh, in ABBA order
# (PAIRS pairs); prints both medians and the on/off ratio.
#   PAIRS=2 THREADS=2 tests/bench/tracing_overhead.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source launch/lib.sh
ensure_nats
ensure_model
T="${THREADS:-2}"
LOAD="${LOAD:-tests/bench/load.py}"
ensure_aiohttp
cargo build --release --bins -q
BIN="$CARGO_TARGET_DIR/release"
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

NPORT=$((20000 + RANDOM % 20000)); HPORT=$((NPORT + 1)); OPORT=$((NPORT + 2))
nats-server -a 127.0.0.1 -p "$NPORT" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
"$BIN/dynamo-trace" --listen "127.0.0.1:$OPORT" --quiet-ms 500 >"$WORK/traces.txt" 2>&1 &
sleep 0.5
export NATS_SERVER="nats://127.0.0.1:$NPORT" DYN_LOG=warn

run() { # on|off -> output tok/s
  local wargs=() env=(OTEL_EXPORT_ENABLED=false)
  if [ "$1" = on ]; then
    env=(OTEL_EXPORT_ENABLED=true OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://127.0.0.1:$OPORT")
    wargs=(--enable-trace --otlp-traces-endpoint "127.0.0.1:$OPORT")
  fi
  env "${env[@]}" OTEL_SERVICE_NAME=dynamo-worker-1 "$BIN/dynamo-worker" --threads "$T" "${wargs[@]}" >"$WORK/worker.log" 2>&1 &
  local w=$!
  env "${env[@]}" OTEL_SERVICE_NAME=dynamo-frontend "$BIN/dynamo-frontend" --http-port "$HPORT" --http-host 127.0.0.1 >"$WORK/frontend.log" 2>&1 &
  local f=$!
  for _ in $(seq 1 300); do curl -s "127.0.0.1:$HPORT/v1/models" | grep -q SmolLM2 && break; sleep 0.2; done
  python3 "$LOAD" --url "http://127.0.0.1:$HPORT" --model SmolLM2-135M-Instruct -n 48 -c 8 --stream \
    --prompt-tokens 128 --max-tokens 64 --ignore-eos --temperature 0 --warmup 8 \
    | python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])["output_tokens_per_s"])'
  kill "$f" "$w"; wait "$f" "$w" 2>/dev/null || true
}
off=() on=()
for i in $(seq "${PAIRS:-2}"); do
  if [ $((i % 2)) -eq 1 ]; then off+=("$(run off)"); on+=("$(run on)"); else on+=("$(run on)"); off+=("$(run off)"); fi
  log "pair $i: off ${off[-1]} on ${on[-1]} tok/s"
done
log "traces printed by dynamo-trace: $(grep -c '^trace ' "$WORK/traces.txt" || true)"
python3 tests/bench/ab_table.py tracing "output tok/s" "${off[*]}" "${on[*]}"
