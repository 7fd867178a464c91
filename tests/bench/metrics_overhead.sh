#!/usr/bin/env bash
# Cost of --enable-metrics in the engine benchmark: aggregate output tok/s of 8 concurrent
# sequences (the bench's `agg8` cell) in separate processes with metrics off and on, in
# ABBA order (PAIRS pairs), then medians, the on/off ratio, and each side's spread (the
# noise floor). Two engines in one process run at different speeds even with identical
# settings, hence one process per run.
#   PAIRS=3 THREADS=2 tests/bench/metrics_overhead.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source launch/lib.sh
ensure_model
cargo bench -p dynamo-engine --bench engine --no-run -q 2>/dev/null
run() {
  DYN_BENCH_METRICS=$1 DYN_BENCH_THREADS="${THREADS:-2}" DYN_BENCH_ONLY=agg8 \
    cargo bench -q -p dynamo-engine --bench engine 2>/dev/null | awk '$2=="agg8_tok_s" {print $3}'
}
off=() on=()
for i in $(seq "${PAIRS:-3}"); do
  if [ $((i % 2)) -eq 1 ]; then off+=("$(run 0)"); on+=("$(run 1)"); else on+=("$(run 1)"); off+=("$(run 0)"); fi
  log "pair $i: off ${off[-1]} on ${on[-1]}"
done
python3 tests/bench/ab_table.py metrics "tok/s" "${off[*]}" "${on[*]}"
