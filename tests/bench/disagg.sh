#!/usr/bin/env bash
# Disaggregated against aggregated serving on this machine, idle (one request at a time):
# TTFT, ITL and output tok/s from tests/bench/load.py (unique chat prompts of PROMPTS tokens,
# 32 output tokens), and for the disaggregated pair the last request's KV transfer (MB, GB/s,
# ms) from the decode worker's sglang:kv_transfer_* gauges; loopback TCP's own bandwidth is
# measured in the same run as the baseline. Every worker runs one compute thread; each
# configuration starts fresh, in ABBA order per prompt length. Prints one JSON line per
# configuration and a summary table.
#   PROMPTS="512 2048" N=6 tests/bench/disagg.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source launch/lib.sh
ensure_nats
ensure_model
ensure_aiohttp
cargo build --release --bins -q
BIN="$CARGO_TARGET_DIR/release"
N="${N:-6}"
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
NPORT=$((20000 + RANDOM % 20000)); HPORT=$((NPORT + 1)); PPORT=$((NPORT + 2)); DPORT=$((NPORT + 3)); BPORT=$((NPORT + 4))
nats-server -a 127.0.0.1 -p "$NPORT" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
sleep 0.5
export NATS_SERVER="nats://127.0.0.1:$NPORT" DYN_LOG=warn

# Loopback TCP: 1 GiB through one connection, 4 MiB writes (the transfer's frames are a
# prefill chunk's blocks, a few MiB each).
LOOPBACK=$(python3 - <<'PY'
import socket, threading, time
N, CHUNK = 1 << 30, 4 << 20
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def sink():
    c, _ = srv.accept(); buf = bytearray(CHUNK); view = memoryview(buf); got = 0
    while got < N:
        n = c.recv_into(view)
        if not n: break
        got += n
    c.close()
t = threading.Thread(target=sink); t.start()
s = socket.create_connection(srv.getsockname()); data = b"\0" * CHUNK
t0 = time.perf_counter()
for _ in range(N // CHUNK): s.sendall(data)
s.close(); t.join()
print(f"{N / (time.perf_counter() - t0) / 1e9:.2f}")
PY
)
log "loopback TCP: $LOOPBACK GB/s"

wait_models() { for _ in $(seq 1 300); do curl -s "127.0.0.1:$HPORT/v1/models" | grep -q SmolLM2 && return 0; sleep 0.2; done; return 1; }
metric() { curl -s "127.0.0.1:$1/metrics" | awk -v m="$2" '$1 ~ "^"m"({|$)" {s+=$2} END {print s+0}'; }

run() { # agg|disagg prompt_tokens -> one JSON line
  local mode=$1 L=$2 pids=()
  if [ "$mode" = agg ]; then
    DYN_SYSTEM_PORT=$DPORT "$BIN/dynamo-worker" --threads 1 --enable-metrics >"$WORK/w.log" 2>&1 & pids+=($!)
  else
    DYN_SYSTEM_PORT=$PPORT "$BIN/dynamo-worker" --threads 1 --enable-metrics --disaggregation-mode prefill \
      --disaggregation-bootstrap-port "$BPORT" --host 127.0.0.1 >"$WORK/p.log" 2>&1 & pids+=($!)
    DYN_SYSTEM_PORT=$DPORT "$BIN/dynamo-worker" --threads 1 --enable-metrics --disaggregation-mode decode \
      >"$WORK/d.log" 2>&1 & pids+=($!)
  fi
  "$BIN/dynamo-frontend" --http-port "$HPORT" --http-host 127.0.0.1 >"$WORK/f.log" 2>&1 & pids+=($!)
  wait_models
  sleep 1
  local out
  out=$(python3 tests/bench/load.py --url "http://127.0.0.1:$HPORT" --model SmolLM2-135M-Instruct \
    -n "$N" -c 1 --stream --unique-prompts --prompt-tokens "$L" --max-tokens 32 --ignore-eos \
    --temperature 0 --warmup 1 | tail -1)
  local mb=0 gbs=0 ms=0
  if [ "$mode" = disagg ]; then
    mb=$(metric "$DPORT" sglang:kv_transfer_total_mb); gbs=$(metric "$DPORT" sglang:kv_transfer_speed_gb_s)
    ms=$(metric "$DPORT" sglang:kv_transfer_latency_ms)
  fi
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(json.dumps({"mode":sys.argv[2],"prompt":int(sys.argv[3]),
    "ttft_ms_p50":d["ttft_ms_p50"],"itl_ms_p50":d["itl_ms_p50"],"output_tokens_per_s":d["output_tokens_per_s"],
    "transfer_mb":float(sys.argv[4]),"transfer_gb_s":float(sys.argv[5]),"transfer_ms":float(sys.argv[6]),"errors":d["errors"]}))' \
    "$out" "$mode" "$L" "$mb" "$gbs" "$ms"
}

RESULTS="$WORK/results.jsonl"
for L in ${PROMPTS:-512 2048}; do
  for mode in agg disagg disagg agg; do run "$mode" "$L" | tee -a "$RESULTS"; done
done
python3 - "$RESULTS" "$LOOPBACK" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
loop = float(sys.argv[2])
print(f"loopback TCP {loop:.2f} GB/s")
print("| prompt | mode | TTFT p50 ms | ITL p50 ms | output tok/s | transfer MB | transfer GB/s (of loopback) | transfer ms |")
print("|---|---|---|---|---|---|---|---|")
for L in sorted({r["prompt"] for r in rows}):
    med = {}
    for mode in ("agg", "disagg"):
        rs = [r for r in rows if r["prompt"] == L and r["mode"] == mode]
        m = {k: statistics.median(r[k] for r in rs) for k in ("ttft_ms_p50", "itl_ms_p50", "output_tokens_per_s", "transfer_mb", "transfer_gb_s", "transfer_ms")}
        med[mode] = m
        share = f"{m['transfer_gb_s']:.2f} ({100 * m['transfer_gb_s'] / loop:.0f} %)" if mode == "disagg" else "–"
        print(f"| {L} | {mode} | {m['ttft_ms_p50']:.0f} | {m['itl_ms_p50']:.1f} | {m['output_tokens_per_s']:.1f} | "
              f"{m['transfer_mb'] if mode == 'disagg' else 0:.1f} | {share} | {m['transfer_ms'] if mode == 'disagg' else 0:.1f} |")
    print(f"| {L} | disagg/agg TTFT | {med['disagg']['ttft_ms_p50'] / med['agg']['ttft_ms_p50']:.2f} | | | | | |")
PY
