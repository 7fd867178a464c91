#!/usr/bin/env bash
# Load benchmark of the frontend path: nats-server + 2 mockers at their fastest
# (--speedup-ratio 100000) + release dynamo-frontend, driven by tests/bench/load.py
# (our closed-loop OpenAI client) at concurrency 1, 16, 64,
# 256, streaming and unary, 64-word prompt, 16 output tokens. Prints one markdown row per cell:
# req/s, TTFT and e2e p50/p99, and the frontend's CPU (% of one core) from /proc.
#   CONCURRENCY="1 16 64 256" MODES="stream unary" tests/bench/frontend_load.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source launch/lib.sh
ensure_nats
ensure_model
ensure_aiohttp
LOAD="${LOAD:-tests/bench/load.py}"
[ -f "$LOAD" ] || { log "load client $LOAD not found"; exit 1; }
cargo build --release --bins -q
BIN="$CARGO_TARGET_DIR/release"
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

NPORT=$((20000 + RANDOM % 20000)); HPORT=$((NPORT + 1))
nats-server -a 127.0.0.1 -p "$NPORT" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
sleep 0.5
export NATS_SERVER="nats://127.0.0.1:$NPORT" DYN_LOG=warn
NATS_PID=$!
MOCKERS=()
for i in 1 2; do "$BIN/dynamo-mocker" --speedup-ratio 100000 >"$WORK/mocker$i.log" 2>&1 & MOCKERS+=($!); done
"$BIN/dynamo-frontend" --http-port "$HPORT" --http-host 127.0.0.1 >"$WORK/frontend.log" 2>&1 &
FE=$!
for _ in $(seq 1 200); do
  n=$(curl -s "127.0.0.1:$HPORT/health" | grep -o '"instance_id"' | wc -l || true)
  [ "$n" = 2 ] && curl -s "127.0.0.1:$HPORT/v1/models" | grep -q SmolLM2 && break; sleep 0.1
done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
others_ticks() { local t=0; for p in "$NATS_PID" "${MOCKERS[@]}"; do t=$((t + $(cpu_ticks "$p"))); done; echo $t; }
HZ=$(getconf CLK_TCK)

echo "| mode | c | req/s | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms | frontend CPU % | nats+mockers CPU % | errors |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for mode in ${MODES:-stream unary}; do
  for c in ${CONCURRENCY:-1 16 64 256}; do
    n=$(( 40 * c )); [ $n -lt 400 ] && n=400; [ $n -gt 6000 ] && n=6000
    w=$c; [ $w -lt 32 ] && w=32
    t0=$(cpu_ticks $FE); o0=$(others_ticks); s0=$(date +%s.%N)
    out=$(python3 "$LOAD" --url "http://127.0.0.1:$HPORT" --model SmolLM2-135M-Instruct -n "$n" -c "$c" \
          --"$( [ "$mode" = stream ] && echo stream || echo no-stream )" --max-tokens 16 --prompt-tokens 64 --warmup "$w")
    t1=$(cpu_ticks $FE); o1=$(others_ticks); s1=$(date +%s.%N)
    python3 - "$out" "$mode" "$c" "$t0" "$t1" "$s0" "$s1" "$HZ" "$o0" "$o1" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); mode, c = sys.argv[2], sys.argv[3]
t0, t1, s0, s1, hz, o0, o1 = map(float, sys.argv[4:11])
# CPU over the whole cell (warm-up included), as a share of one core.
cpu = 100.0 * (t1 - t0) / hz / (s1 - s0)
other = 100.0 * (o1 - o0) / hz / (s1 - s0)
print(f"| {mode} | {c} | {r['requests_per_s']:.0f} | {r['ttft_ms_p50']:.1f} | {r['ttft_ms_p99']:.1f} | "
      f"{r['e2e_ms_p50']:.1f} | {r['e2e_ms_p99']:.1f} | {cpu:.0f} | {other:.0f} | {r['errors']} |")
PY
  done
done
