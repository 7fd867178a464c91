#!/usr/bin/env bash
# Soak (a script, not part of CI): frontend + two workers under mixed load for SOAK_SECONDS
# (600): greedy streams checked token for token against a reference, unary requests, client
# cancels, bad requests, and one worker restart (SIGTERM, then started again) half-way.
# Samples every process's RSS every 10 s and reports: RSS growth after the 2-minute warm-up
# (goal < 5 %), KV usage back to idle after the drain, lost or duplicated tokens (a greedy
# stream whose text differs from the reference), and responses by outcome.
#
#   tests/soak.sh                       # release build, 10 minutes
#   SOAK_SECONDS=120 DYN_BIN_DIR=/var/tmp/dynamo-target/release tests/soak.sh
#   tests/soak.sh -h
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "soak.sh: unknown option $1 (try -h)" >&2; exit 2 ;;
esac
source launch/lib.sh

SECONDS_TOTAL="${SOAK_SECONDS:-600}"
[[ "$SECONDS_TOTAL" =~ ^[0-9]+$ ]] && [ "$SECONDS_TOTAL" -ge 60 ] || {
  echo "soak.sh: SOAK_SECONDS must be a whole number >= 60" >&2; exit 2; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NATS_PORT=$(port); HTTP_PORT=$(port); SYS1=$(port); SYS2=$(port)
export NATS_SERVER="nats://127.0.0.1:$NATS_PORT"
OUT="${SOAK_DIR:-/tmp/dynamo-soak.$$}"; mkdir -p "$OUT"
ensure_nats
ensure_model
if [ -n "${DYN_BIN_DIR:-}" ]; then BIN="$DYN_BIN_DIR"; else
  log "building release binaries"; cargo build --release --bins -q; BIN="$CARGO_TARGET_DIR/release"; fi

pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$OUT/js" > "$OUT/nats.log" 2>&1 &
pids+=($!)
sleep 1
start_worker() { # $1: index, $2: system port
  DYN_SYSTEM_PORT="$2" "$BIN/dynamo-worker" --threads 1 --enable-metrics \
    > "$OUT/worker$1.log" 2>&1 &
  echo $!
}
W1=$(start_worker 1 "$SYS1"); pids+=("$W1")
W2=$(start_worker 2 "$SYS2"); pids+=("$W2")
DYN_HTTP_PORT="$HTTP_PORT" DYN_ROUTER_MODE=kv "$BIN/dynamo-frontend" > "$OUT/frontend.log" 2>&1 &
FE=$!; pids+=("$FE")
for _ in $(seq 120); do
  n=$(curl -s "localhost:$HTTP_PORT/health" | python3 -c 'import sys,json; print(len(json.load(sys.stdin).get("instances",[])))' 2>/dev/null || echo 0)
  [ "$n" = 2 ] && break; sleep 1
done
[ "$n" = 2 ] || { log "the fleet did not come up; logs in $OUT"; exit 1; }
log "fleet up (frontend :$HTTP_PORT, workers :$SYS1 :$SYS2); soaking ${SECONDS_TOTAL}s; logs in $OUT"

python3 - "$HTTP_PORT" "$SECONDS_TOTAL" "$OUT" "$FE" "$W1" "$W2" "$SYS1" "$SYS2" "$BIN" <<'PY'
import json, os, random, signal, subprocess, sys, threading, time, urllib.request, http.client

port, total, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
procs = {"frontend": int(sys.argv[4]), "worker1": int(sys.argv[5]), "worker2": int(sys.argv[6])}
sys_ports = {"worker1": int(sys.argv[7]), "worker2": int(sys.argv[8])}
bin_dir = sys.argv[9]
MODEL = "SmolLM2-135M-Instruct"
PROMPTS = ["Tell me about the sea.", "Write a haiku about autumn.", "Explain rain to a child.",
           "List three uses of copper.", "What is a lighthouse for?"]
lock = threading.Lock()
counts = {}
def count(k):
    with lock: counts[k] = counts.get(k, 0) + 1

def post(body, timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    return c, c.getresponse()

def greedy(prompt, stream):
    return {"model": MODEL, "prompt": prompt, "max_tokens": 48, "temperature": 0,
            "ignore_eos": True, "stream": stream}

reference = {}
for p in PROMPTS:
    c, r = post(greedy(p, False))
    reference[p] = json.loads(r.read())["choices"][0]["text"]
    c.close()

def stream_text(r):
    text, done, err = [], False, False
    for raw in r:
        line = raw.decode().strip()
        if line.startswith("event: error"): err = True
        if not line.startswith("data: "): continue
        d = line[6:]
        if d == "[DONE]": done = True; continue
        try: ev = json.loads(d)
        except ValueError: continue
        if "error" in ev: err = True; continue
        for ch in ev.get("choices", []):
            text.append(ch.get("text") or "")
    return "".join(text), done, err

stop = time.time() + total
def client(seed):
    rnd = random.Random(seed)
    while time.time() < stop:
        kind = rnd.choices(["stream", "unary", "cancel", "bad"], [5, 3, 1, 1])[0]
        p = rnd.choice(PROMPTS)
        try:
            if kind == "stream":
                c, r = post(greedy(p, True))
                if r.status != 200: count(f"stream {r.status}"); r.read(); c.close(); continue
                text, done, err = stream_text(r); c.close()
                if err or not done: count("stream error event")
                elif text == reference[p]: count("stream exact")
                else:
                    count("stream MISMATCH (lost or duplicated tokens)")
                    with lock, open(f"{out}/mismatch.txt", "a") as f:
                        f.write(json.dumps({"prompt": p, "got": text, "want": reference[p]}) + "\n")
            elif kind == "unary":
                c, r = post(greedy(p, False))
                body = r.read(); c.close()
                if r.status != 200: count(f"unary {r.status}"); continue
                t = json.loads(body)["choices"][0]["text"]
                count("unary exact" if t == reference[p] else "unary MISMATCH")
            elif kind == "cancel":
                c, r = post(greedy(p, True))
                r.read(64); c.close(); count("cancelled by client")
            else:
                c, r = post({"model": MODEL, "prompt": p, "max_token": 4})
                r.read(); c.close(); count(f"bad request {r.status}")
        except Exception as e:
            count(f"client exception {type(e).__name__}")

def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for l in f:
                if l.startswith("VmRSS:"): return int(l.split()[1])
    except OSError: return None

samples = []
def sampler():
    t0 = time.time()
    while time.time() < stop:
        samples.append((round(time.time() - t0), {k: rss(v) for k, v in procs.items()}))
        time.sleep(10)

def restarter():
    time.sleep(total / 2)
    old = procs["worker2"]
    os.kill(old, signal.SIGTERM)
    # It drains, then exits (it is the shell's child, not ours: watch /proc).
    while os.path.exists(f"/proc/{old}") and not open(f"/proc/{old}/stat").read().split()[2] == "Z":
        time.sleep(0.2)
    env = dict(os.environ, DYN_SYSTEM_PORT=str(sys_ports["worker2"]))
    log = open(f"{out}/worker2-restarted.log", "w")
    p = subprocess.Popen([f"{bin_dir}/dynamo-worker", "--threads", "1", "--enable-metrics"],
                         env=env, stdout=log, stderr=log)
    procs["worker2"] = p.pid
    count("worker restarts")
    with open(f"{out}/worker2.pid", "w") as f: f.write(str(p.pid))

threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
threads += [threading.Thread(target=sampler), threading.Thread(target=restarter)]
for t in threads: t.start()
for t in threads: t.join()

def metric(sp, name):
    try: text = urllib.request.urlopen(f"http://127.0.0.1:{sp}/metrics", timeout=5).read().decode()
    except OSError: return None
    vals = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
            if l.startswith(name) and not l.startswith("#")]
    return sum(vals) if vals else None
idle = None
for _ in range(60):
    used = [metric(sys_ports[w], "sglang:num_running_reqs") for w in sys_ports]
    tok = [metric(sys_ports[w], "sglang:token_usage") for w in sys_ports]
    if all(u == 0 for u in used) and all(t == 0 for t in tok): idle = True; break
    time.sleep(1)

warm = [s for s in samples if s[0] >= 120] or samples
print(f"\nsoak: {total} s, 6 clients, one worker restart at {total // 2} s")
print("\n| process | RSS after warm-up (MiB) | RSS at end (MiB) | growth |")
print("|---|---|---|---|")
growth_ok = True
for k in ("frontend", "worker1"):
    a, b = warm[0][1][k], warm[-1][1][k]
    if a and b:
        g = (b - a) / a * 100
        growth_ok &= g < 5
        print(f"| {k} | {a/1024:.1f} | {b/1024:.1f} | {g:+.1f} % |")
print("| worker2 | restarted half-way | | |")
print("\n| outcome | count |\n|---|---|")
for k, v in sorted(counts.items()): print(f"| {k} | {v} |")
bad = sum(v for k, v in counts.items() if "MISMATCH" in k)
print(f"\nKV back to idle after the drain: {idle}")
print(f"lost or duplicated tokens (mismatching greedy outputs): {bad}")
print(f"RSS growth under 5 % after warm-up: {growth_ok}")
with open(f"{out}/rss.json", "w") as f: json.dump(samples, f)
try: os.kill(procs["worker2"], signal.SIGTERM)  # the restarted worker is ours to stop
except OSError: pass
sys.exit(0 if (idle and bad == 0 and growth_ok) else 1)
PY
