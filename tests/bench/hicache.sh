#!/usr/bin/env bash
# The KV cache hierarchy benchmark (docs/kv-cache.md; figures in docs/benchmarks.md): a
# multi-turn chat workload whose working set is ~4x the KV pool, against one worker per
# configuration (hierarchy off, host tier, host + storage, pins), then storage hits against
# recomputation at several prompt lengths, with this machine's memory and disk bandwidth
# measured in the same run. Release binaries; nats-server started when none answers.
#   THREADS=2 tests/bench/hicache.sh            (ONLY=multiturn|storage for one part)
set -euo pipefail
cd "$(dirname "$0")/../.."
source launch/lib.sh
launch_prepare
ensure_aiohttp
"$(python_bin)" tests/bench/hicache_bench.py --bin "$BIN" --threads "${THREADS:-2}" \
  --log-dir "$DYN_LOG_DIR" ${ONLY:+--only "$ONLY"} "$@"
