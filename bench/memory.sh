#!/usr/bin/env bash
# The proxy with 1,000,000 tokens (file source): time and CPU time until
# ready, and RSS once loaded. With BASELINE=/path/to/an/older/prodgy-proxy,
# the two binaries start in alternating rounds, so both meet the same
# machine load and their ratio can be read even when the machine is busy.
#   bench/memory.sh                      (make bench-memory)
#   TOKENS=1000000 ROUNDS=2 BASELINE=/tmp/prodgy-proxy-old bench/memory.sh
set -euo pipefail

# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"
TOKENS=${TOKENS:-1000000}
ROUNDS=${ROUNDS:-2}
SUT_CPU=${SUT_CPU:-0}
bench_setup memory curl taskset
"$BIN/bench-tokens" --count "$TOKENS" --spread 1 --out "$WORK/tokens"
cp "$BIN/prodgy-proxy" "$WORK/current"

start_up() { # name binary
  local start pid wall cpu rss
  start=$(date +%s.%N)
  taskset -c "$SUT_CPU" "$2" --source file --tokens-path "$WORK/tokens/records.json" \
    --listen 127.0.0.1:18610 --metrics-addr 127.0.0.1:18611 --upstream 127.0.0.1:9 \
    --threads 1 --work-stealing false --log-format json > "$WORK/$1.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  until [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18611/readyz)" = 200 ]; do
    kill -0 "$pid" 2>/dev/null || { echo "$1 exited; see its log" >&2; cat "$WORK/$1.log" >&2; exit 1; }
    sleep 0.05
  done
  wall=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN {printf "%.2f", a - b}')
  cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$pid/stat")
  sleep 2
  rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$wall" "$cpu" "$rss" "$(cut -d' ' -f1 /proc/loadavg)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "$TOKENS tokens ($(du -h "$WORK/tokens/records.json" | cut -f1) of records), $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| binary | ready after (s) | CPU time until ready (s) | RSS once loaded (MB) | load average |"
echo "|---|---:|---:|---:|---:|"
for _ in $(seq 1 "$ROUNDS"); do
  [ -n "${BASELINE:-}" ] && start_up baseline "$BASELINE"
  start_up current "$WORK/current"
done
