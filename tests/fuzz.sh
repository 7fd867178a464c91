#!/usr/bin/env bash
# Run every fuzz target of crates/fuzz for a bounded time each (default 30 s; FUZZ_SECONDS to
# change), on bolero's random engine under `cargo test`: random inputs, not coverage-guided.
# A failure prints the seed that reproduces it (BOLERO_RANDOM_SEED=...). The suite runs the
# same targets for about a second each as a smoke.
#
#   tests/fuzz.sh                 # every target, 30 s each
#   FUZZ_SECONDS=300 tests/fuzz.sh kv_index_operations
#   tests/fuzz.sh -h
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(openai_request openai_request_shaped traceparent kv_event_decode kv_index_operations
         request_plane_envelope gguf_metadata)
case "${1:-}" in
  -h|--help)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    echo "targets: ${targets[*]}"
    exit 0 ;;
  -*) echo "fuzz.sh: unknown option $1 (try -h)" >&2; exit 2 ;;
esac
if [ $# -gt 0 ]; then
  for t in "$@"; do
    [[ " ${targets[*]} " == *" $t "* ]] || { echo "fuzz.sh: no target $t (have: ${targets[*]})" >&2; exit 2; }
  done
  targets=("$@")
fi
secs="${FUZZ_SECONDS:-30}"
[[ "$secs" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: FUZZ_SECONDS must be a whole number of seconds" >&2; exit 2; }

cargo test -p dynamo-fuzz --test targets --no-run --locked -q
for t in "${targets[@]}"; do
  echo "== $t (${secs} s)"
  BOLERO_RANDOM_TEST_TIME_MS=$((secs * 1000)) \
    cargo test -p dynamo-fuzz --test targets --locked -q -- --exact "$t" --nocapture
done
echo "fuzz.sh: ${#targets[@]} targets, ${secs} s each, no failure"
