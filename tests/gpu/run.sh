#!/usr/bin/env bash
# The device check: one command on a machine with one NVIDIA GPU (H100/H200, driver 580 /
# CUDA 13.0, Python with PyTorch + transformers + the pip CUDA libraries, no Rust, no network),
# run from the repository root after launch/build-cuda.sh staged gpu-carry/ on the build
# machine. Under 5 minutes; writes $OUT/report.json and $OUT/log.txt:
#   device      GPU, driver, the CUDA libraries the worker resolves (ldd, LD_LIBRARY_PATH)
#   reference   transformers' teacher-forced top-5 logits computed on this GPU from the same
#               GGUF (tests/fixtures: smollm2-transformers/generate.py)
#   engine      dynamo-engine-check --device cuda: logits against that reference and against
#               the stored CPU-computed one, greedy runs, prefill 512 / 4096 tok/s, decode
#               tok/s at batch 1, 8, 64, 256 (no CUDA graphs yet), host ms per step
#   e2e         nats-server + dynamo-frontend + dynamo-worker --device cuda --enable-trace
#               --enable-metrics: the README's request, the sglang: families from the
#               worker, one trace with the engine's spans (dynamo-trace), 32 requests at c = 8
# Without a GPU it stops at once with {"error": "no GPU"} and exit status 2.
# DRY_RUN=1 runs every part here on `--device reference` (the same path on plain-Rust kernels,
# small cells, the stored reference) to check the script itself before spending device time.
#   OUT=/tmp/out GPU_MODEL=path/to.gguf tests/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/dynamo-gpu-check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
BIN="${GPU_BIN:-gpu-carry/bin}"
MODEL="${GPU_MODEL:-gpu-carry/SmolLM2-135M-Instruct.Q4_1.gguf}"
PY="${GPU_PYTHON:-python3}"
say() { printf '[gpu-check] %s\n' "$*"; }
report() { "$PY" - "$OUT" "$@" <<'PY'
import json, os, sys
out = sys.argv[1]
r = {}
for name in ("device", "reference", "engine", "e2e"):
    p = os.path.join(out, name + ".json")
    if os.path.exists(p):
        try:
            r[name] = json.load(open(p))
        except Exception as e:
            r[name] = {"error": f"unreadable: {e}"}
if len(sys.argv) > 2:
    r["error"] = sys.argv[2]
json.dump(r, open(os.path.join(out, "report.json"), "w"), indent=2)
PY
}

DEV=cuda PREFILL=512,4096 DECODE=1,8,64,256 DTOK=64 LOAD_REQS=32 LOAD_TOKENS=64
if [ -n "${DRY_RUN:-}" ]; then
  DEV=reference PREFILL=32 DECODE=1,2 DTOK=4 LOAD_REQS=4 LOAD_TOKENS=4
  MODEL="${GPU_MODEL:-${DYN_MODEL_CACHE:-$HOME/.cache/dynamo/models}/SmolLM2-135M-Instruct.Q4_1.gguf}"
  say "dry run on --device reference with $BIN"
elif ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  say "no GPU: nvidia-smi finds no device"
  echo '{"error": "no GPU"}' >"$OUT/report.json"
  exit 2
fi
for f in "$BIN/dynamo-worker" "$BIN/dynamo-engine-check" "$BIN/dynamo-frontend" "$BIN/dynamo-trace" "$BIN/nats-server"; do
  [ -x "$f" ] || { say "missing $f (run launch/build-cuda.sh on the build machine and carry gpu-carry/)"; report "missing $f"; exit 1; }
done
# The pip CUDA libraries (NVRTC) next to PyTorch.
CU_LIBS=$("$PY" -c 'import nvidia, os, glob; print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "*", "lib", "libnvrtc.so*"))})))' 2>/dev/null)
export LD_LIBRARY_PATH="${CU_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "device"
"$PY" - "$OUT/device.json" "$BIN/dynamo-worker" <<'PY'
import json, subprocess, sys, os
try:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                        "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except FileNotFoundError:
    q = "no nvidia-smi (dry run)"
ldd = subprocess.run(["ldd", sys.argv[2]], capture_output=True, text=True).stdout
json.dump({"nvidia_smi": q, "ldd": ldd.splitlines(), "ld_library_path": os.environ.get("LD_LIBRARY_PATH", "")},
          open(sys.argv[1], "w"), indent=2)
print(q)
PY
if [ ! -f "$MODEL" ]; then
  say "model not found at $MODEL (GPU_MODEL=...): the engine and e2e parts need it"
  report "model missing: $MODEL"
  exit 1
fi
if [ "$DEV" = cuda ]; then
  say "reference: transformers on this GPU"
  timeout 120 "$PY" crates/engine/tests/fixtures/smollm2-transformers/generate.py "$(dirname "$MODEL")" cuda \
    >"$OUT/reference.json" || say "the GPU reference failed (the stored CPU one is still compared)"
fi
say "engine: dynamo-engine-check --device $DEV"
for ref in "$OUT/reference.json" crates/engine/tests/fixtures/smollm2-transformers/reference.json; do
  [ -s "$ref" ] && break
done
timeout 150 "$BIN/dynamo-engine-check" --model "$MODEL" --device "$DEV" --reference "$ref" \
  --prefill "$PREFILL" --decode "$DECODE" --decode-tokens "$DTOK" >"$OUT/engine.json" ||
  say "dynamo-engine-check failed (status $?)"
if [ "$DEV" = cuda ]; then
  timeout 60 "$BIN/dynamo-engine-check" --model "$MODEL" --device cuda \
    --reference crates/engine/tests/fixtures/smollm2-transformers/reference.json --prefill "" \
    --decode "" >"$OUT/engine_cpu_reference.json" || true
fi

say "e2e: nats-server + frontend + worker --device $DEV"
W=$(mktemp -d)
NP=$((20000 + RANDOM % 20000)); HP=$((NP + 1)); SP=$((NP + 2)); TP=$((NP + 3))
"$BIN/nats-server" -a 127.0.0.1 -p "$NP" -js -sd "$W/js" >"$OUT/nats.log" 2>&1 &
PIDS=$!
sleep 1
export NATS_SERVER="nats://127.0.0.1:$NP"
export OTEL_EXPORT_ENABLED=1 OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://127.0.0.1:$TP"
"$BIN/dynamo-trace" --listen "127.0.0.1:$TP" >"$OUT/traces.txt" 2>&1 &
PIDS="$PIDS $!"
DYN_SYSTEM_PORT="$SP" "$BIN/dynamo-worker" --model "$MODEL" --device "$DEV" --enable-metrics \
  --enable-trace --otlp-traces-endpoint "127.0.0.1:$TP" >"$OUT/worker.log" 2>&1 &
PIDS="$PIDS $!"
"$BIN/dynamo-frontend" --http-port "$HP" --http-host 127.0.0.1 >"$OUT/frontend.log" 2>&1 &
PIDS="$PIDS $!"
for _ in $(seq 1 300); do curl -s "127.0.0.1:$HP/v1/models" | grep -q '"id"' && break; sleep 0.2; done
"$PY" - "$OUT/e2e.json" "$HP" "$SP" "$LOAD_REQS" "$LOAD_TOKENS" <<'PY'
import concurrent.futures, json, sys, time, urllib.request
out, hp, sp = sys.argv[1], sys.argv[2], sys.argv[3]
reqs, tokens = int(sys.argv[4]), int(sys.argv[5])
r = {}
def post(body):
    req = urllib.request.Request(f"http://127.0.0.1:{hp}/v1/chat/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    t0 = time.perf_counter()
    v = json.load(urllib.request.urlopen(req, timeout=60))
    return v, time.perf_counter() - t0
try:
    model = json.load(urllib.request.urlopen(f"http://127.0.0.1:{hp}/v1/models"))["data"][0]["id"]
    v, took = post({"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16})
    r["readme_request"] = {"text": v["choices"][0]["message"]["content"], "usage": v["usage"], "s": took}
    body = {"model": model, "messages": [{"role": "user", "content": "Write about the sea."}],
            "max_tokens": tokens, "ignore_eos": True}
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        done = list(ex.map(lambda _: post(body), range(reqs)))
    wall = time.perf_counter() - t0
    toks = sum(v["usage"]["completion_tokens"] for v, _ in done)
    r["load_c8"] = {"requests": reqs, "max_tokens": tokens, "output_tok_s": toks / wall, "wall_s": wall}
    m = urllib.request.urlopen(f"http://127.0.0.1:{sp}/metrics").read().decode()
    fams = sorted({l.split("{")[0].split(" ")[0] for l in m.splitlines() if l.startswith("sglang:")})
    r["sglang_families"] = fams
except Exception as e:
    r["error"] = f"{type(e).__name__}: {e}"
json.dump(r, open(out, "w"), indent=2)
print(json.dumps(r)[:400])
PY
sleep 3
# Only these: a bare `wait` would also wait for the log's tee.
kill $PIDS 2>/dev/null
wait $PIDS 2>/dev/null
grep -q "prefill_forward\|decode" "$OUT/traces.txt" 2>/dev/null && say "engine spans in traces.txt"
report
say "report: $OUT/report.json"
