#!/usr/bin/env bash
# The proxy with 1,000,000 tokens (file source): time and CPU time until
# ready, and RSS once loaded. With BASELINE=/path/to/an/older/prodgy-proxy,
# the two binaries start in alternating rounds, so both meet the same
# machine load and their ratio can be read even when the machine is busy.
#   bench/memory.sh                      (make bench-memory)
#   TOKENS=1000000 ROUNDS=2 BASELINE=/tmp/prodgy-proxy-old bench/memory.sh
# Then, under callgrind (a count that does not move with the machine's load),
# the instructions one record costs to load: a start-up with COUNTED (100,000)
# records less one with a single record, over COUNTED - 1. COUNTED=0 skips it.
set -euo pipefail

# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"
TOKENS=${TOKENS:-1000000}
ROUNDS=${ROUNDS:-2}
SUT_CPU=${SUT_CPU:-0}
bench_setup memory curl taskset valgrind callgrind_control
"$BIN/bench-tokens" --count "$TOKENS" --spread 1 --out "$WORK/tokens"
cp "$BIN/prodgy-proxy" "$WORK/current"

proxy() { # records-file log, then a command before the proxy's (may be empty)
  local records=$1 log=$2; shift 2
  "$@" --source file --tokens-path "$records" \
    --listen 127.0.0.1:18610 --metrics-addr 127.0.0.1:18611 --upstream 127.0.0.1:9 \
    --threads 1 --work-stealing false --log-format json > "$log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  until [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18611/readyz)" = 200 ]; do
    kill -0 "$pid" 2>/dev/null || { echo "$log: the proxy exited" >&2; cat "$log" >&2; exit 1; }
    sleep 0.05
  done
}

start_up() { # name binary
  local start wall cpu rss
  start=$(date +%s.%N)
  proxy "$WORK/tokens/records.json" "$WORK/$1.log" taskset -c "$SUT_CPU" "$2"
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

COUNTED=${COUNTED:-100000}
[ "$COUNTED" -gt 1 ] || exit 0
"$BIN/bench-tokens" --count "$COUNTED" --spread 1 --out "$WORK/counted"
"$BIN/bench-tokens" --count 1 --spread 1 --out "$WORK/single"
start_ir() { # binary records-file: instructions from exec until ready
  local out
  out=$(mktemp "$WORK/ir.XXXXXX")
  proxy "$2" "$out.log" valgrind --tool=callgrind --callgrind-out-file="$out" "$1"
  # An idle process takes the dump request at its next event: a request.
  callgrind_control -d "$pid" > /dev/null 2>&1 &
  until grep -qs '^totals:' "$out"*; do
    curl -s -o /dev/null http://127.0.0.1:18611/readyz; sleep 0.5
  done
  kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
  awk '/^totals:/ {print $2; exit}' "$out"*
}
echo
echo "| binary | instructions per record loaded ($COUNTED records, callgrind) |"
echo "|---|---:|"
for b in ${BASELINE:+baseline:$BASELINE} "current:$WORK/current"; do
  many=$(start_ir "${b#*:}" "$WORK/counted/records.json")
  one=$(start_ir "${b#*:}" "$WORK/single/records.json")
  printf '| %s | %d |\n' "${b%%:*}" $(( (many - one) / (COUNTED - 1) ))
done
