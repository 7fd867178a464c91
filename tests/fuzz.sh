#!/usr/bin/env bash
# Run every fuzz target of crates/fuzz for a bounded time each (default 30 s; FUZZ_SECONDS to
# change). Two engines:
#   random     (default) bolero's random engine under `cargo test`: stable toolchain, no setup.
#   libfuzzer  coverage-guided libFuzzer with AddressSanitizer through `cargo bolero test`:
#              needs a nightly toolchain (rustup toolchain install nightly) and cargo-bolero
#              (installed with `cargo install --locked cargo-bolero` when missing). The corpus
#              grows in crates/fuzz/tests/__fuzz__/ (not committed); the first build is long.
# A failure prints how to reproduce it (the seed, or the crashing input's file).
#
#   tests/fuzz.sh                                  # every target, random engine, 30 s each
#   FUZZ_SECONDS=300 tests/fuzz.sh kv_index_operations
#   tests/fuzz.sh --engine libfuzzer openai_request
#   tests/fuzz.sh -h
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(openai_request openai_request_shaped traceparent kv_event_decode kv_index_operations
         request_plane_envelope gguf_metadata)
engine=random
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help)
      sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
      echo "targets: ${targets[*]}"
      exit 0 ;;
    --engine)
      [ $# -ge 2 ] || { echo "fuzz.sh: --engine needs a value (random or libfuzzer)" >&2; exit 2; }
      engine="$2"; shift 2 ;;
    --engine=*) engine="${1#--engine=}"; shift ;;
    -*) echo "fuzz.sh: unknown option $1 (try -h)" >&2; exit 2 ;;
    *) break ;;
  esac
done
case "$engine" in
  random|libfuzzer) ;;
  *) echo "fuzz.sh: --engine must be random or libfuzzer, not $engine" >&2; exit 2 ;;
esac
if [ $# -gt 0 ]; then
  for t in "$@"; do
    [[ " ${targets[*]} " == *" $t "* ]] || { echo "fuzz.sh: no target $t (have: ${targets[*]})" >&2; exit 2; }
  done
  targets=("$@")
fi
secs="${FUZZ_SECONDS:-30}"
[[ "$secs" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: FUZZ_SECONDS must be a whole number of seconds" >&2; exit 2; }

if [ "$engine" = random ]; then
  cargo test -p dynamo-fuzz --test targets --no-run --locked -q
  for t in "${targets[@]}"; do
    echo "== $t (${secs} s, random)"
    BOLERO_RANDOM_TEST_TIME_MS=$((secs * 1000)) \
      cargo test -p dynamo-fuzz --test targets --locked -q -- --exact "$t" --nocapture
  done
else
  rustup run nightly rustc --version >/dev/null 2>&1 || {
    echo "fuzz.sh: libfuzzer needs a nightly toolchain: rustup toolchain install nightly" >&2; exit 2; }
  command -v cargo-bolero >/dev/null || cargo install --locked cargo-bolero
  # cargo-bolero builds in its own directory: keep it beside the shared target directory.
  fuzz_target="${CARGO_TARGET_DIR:-target}/fuzz"
  for t in "${targets[@]}"; do
    echo "== $t (${secs} s, libfuzzer)"
    cargo bolero test --toolchain nightly -p dynamo-fuzz --target-dir "$fuzz_target" \
      -T "${secs}s" "$t"
  done
fi
echo "fuzz.sh: ${#targets[@]} targets, ${secs} s each, engine $engine, no failure"
