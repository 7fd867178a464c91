#!/usr/bin/env bash
# KV router at scale with mockers: nats-server + MOCKERS simulated workers (real model card,
# small KV pools so caches matter) + release dynamo-frontend, driven by tests/bench/prefix_trace.py
# (64 prefix groups of 32 blocks, Zipf popularity, unique tails, 16 output tokens), once per
# router mode in the same invocation. Per mode: req/s, output tok/s, TTFT p50/p99, the engines'
# actual hit rate (cached / prompt tokens from usage), the router's predicted hit rate (mean of
# dynamo_router_kv_hit_rate) and dynamo_router_overhead_total_ms p50/p99 (from its buckets).
#   METRICS_OUT=prefix keeps each mode's /metrics scrape, FE_LOG=file the frontend log.
#   MOCKERS=32 CONC=64 REQUESTS=2000 MODES="round-robin kv" BLOCKS=512 SPEEDUP=1 \
#     tests/bench/router_scale.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source launch/lib.sh
ensure_nats
ensure_model
ensure_aiohttp
MOCKERS="${MOCKERS:-32}"; CONC="${CONC:-64}"; REQUESTS="${REQUESTS:-2000}"
MODES="${MODES:-round-robin kv}"; BLOCKS="${BLOCKS:-512}"; SPEEDUP="${SPEEDUP:-1}"
# ISOLATE=1 runs the mockers and the load client under SCHED_IDLE: they stand for GPU workers and
# clients on other hosts, so they get only the CPU that the frontend and nats-server leave.
HARNESS=""; [ "${ISOLATE:-0}" = 1 ] && HARNESS="chrt --idle 0"
cargo build --release --bins -q
BIN="$CARGO_TARGET_DIR/release"
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
NPORT=$((20000 + RANDOM % 20000)); HPORT=$((NPORT + 1))
nats-server -a 127.0.0.1 -p "$NPORT" -js -sd "$WORK/js" -m 0 >"$WORK/nats.log" 2>&1 &
sleep 0.5
export NATS_SERVER="nats://127.0.0.1:$NPORT" DYN_LOG=warn

echo "| mode | mockers | c | req/s | out tok/s | TTFT p50 ms | TTFT p99 ms | actual hit | predicted hit | overhead p50 ms | overhead p99 ms | errors |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for mode in $MODES; do
  pids=()
  for i in $(seq 1 "$MOCKERS"); do
    $HARNESS "$BIN/dynamo-mocker" --speedup-ratio "$SPEEDUP" --num-gpu-blocks "$BLOCKS" >"$WORK/m$i.log" 2>&1 &
    pids+=($!)
  done
  "$BIN/dynamo-frontend" --http-port "$HPORT" --http-host 127.0.0.1 --router-mode "$mode" >"${FE_LOG:-$WORK/fe.log}" 2>&1 &
  fe=$!
  for _ in $(seq 1 1200); do
    n=$(curl -s "127.0.0.1:$HPORT/health" | grep -o '"instance_id"' | wc -l || true)
    [ "$n" = "$MOCKERS" ] && curl -s "127.0.0.1:$HPORT/v1/models" | grep -q SmolLM2 && break; sleep 0.1
  done
  [ "$n" = "$MOCKERS" ] || { log "only $n of $MOCKERS mockers registered"; exit 1; }
  sleep 2
  res=$($HARNESS python3 tests/bench/prefix_trace.py --url "http://127.0.0.1:$HPORT" --model SmolLM2-135M-Instruct \
        -n "$REQUESTS" -c "$CONC" --label "$mode")
  curl -s "127.0.0.1:$HPORT/metrics" >"$WORK/metrics.txt"
  [ -n "${METRICS_OUT:-}" ] && cp "$WORK/metrics.txt" "$METRICS_OUT.$mode"
  python3 - "$res" "$WORK/metrics.txt" "$mode" "$MOCKERS" "$CONC" <<'PY'
import json, re, sys
r = json.loads(sys.argv[1]); text = open(sys.argv[2]).read()
def series(name):
    return [(l.split("{")[1], float(l.rsplit(" ", 1)[1])) for l in text.splitlines() if l.startswith(name + "{")]
def one(name):
    v = [x for _, x in series(name)]
    return v[0] if v else None
def quantile(name, q):
    b = sorted((float(re.search(r'le="([^"]+)"', k).group(1).replace("+Inf", "inf")), v) for k, v in series(name + "_bucket"))
    if not b or b[-1][1] == 0:
        return None
    want = q * b[-1][1]; prev_le, prev_c = 0.0, 0.0
    for le, c in b:
        if c >= want:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (want - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
n = one("dynamo_router_kv_hit_rate_count"); s = one("dynamo_router_kv_hit_rate_sum")
pred = f"{s / n:.3f}" if n else "n/a"
p50 = quantile("dynamo_router_overhead_total_ms", 0.5); p99 = quantile("dynamo_router_overhead_total_ms", 0.99)
f = lambda v: "n/a" if v is None else f"{v:.3f}"
print(f"| {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | {r['requests_per_s']} | {r['output_tokens_per_s']} | {r['ttft_ms_p50']} | {r['ttft_ms_p99']} | {r['actual_hit_rate']:.3f} | {pred} | {f(p50)} | {f(p99)} | {r['errors']} |")
PY
  kill "$fe" "${pids[@]}" 2>/dev/null || true; wait "$fe" "${pids[@]}" 2>/dev/null || true
done
