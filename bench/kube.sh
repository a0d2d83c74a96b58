#!/usr/bin/env bash
# Many replicas, many tokens: a fresh prodgy-proxy (one worker thread, pinned
# to one CPU like a 1-CPU sidecar) against the Kubernetes API test server
# holding SECRETS hashed Secrets. Reports time to ready, memory, and the list
# and watch traffic the proxy causes (bench-kube-load). Loopback only.
#
#   bench/kube.sh                 # 100,000 Secrets
#   SECRETS=10000 bench/kube.sh
# Results: bench/results/kube.md.
set -euo pipefail

# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"
SECRETS=${SECRETS:-100000}
SUT_CPU=${SUT_CPU:-0}
bench_setup kube taskset
mkdir -p "$ROOT/bench/results"
OUT="$WORK/figures.txt"
"$BIN/bench-kube-load" --secrets "$SECRETS" --proxy "$BIN/prodgy-proxy" --cpu "$SUT_CPU" \
  --work "$WORK/run" | tee "$OUT"
{
  echo "# Fresh proxy against $SECRETS hashed Secrets, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Load average (1, 5, 15 min) at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo '```'
  cat "$OUT"
  echo '```'
} > "$ROOT/bench/results/kube.md"
