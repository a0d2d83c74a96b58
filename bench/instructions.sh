#!/usr/bin/env bash
# Instructions per request, counted by callgrind: a measure that does not move
# with the machine's load, to read beside run.sh's timings.
#
#   bench/instructions.sh            # 2,000 requests per target
#   REQUESTS=5000 bench/instructions.sh
#
# Each target runs under `valgrind --tool=callgrind`; the same REQUESTS
# requests are sent once to warm up (every token seen, so per-token state
# exists as it does under a steady load), its counters are zeroed, the
# requests are sent again over one keep-alive connection (curl), and the
# counters are dumped. User-space instructions only (the kernel's socket work
# is the same for every target). nginx runs as a single process
# (`master_process off`) so one process holds its count; Envoy's count
# includes all of its threads (one worker, `--concurrency 1`).
# Under valgrind, sha2 cannot use the CPU's SHA instructions and falls back to
# its portable code, so the proxy's hashing is counted at its slowest.
set -euo pipefail

# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"
REQUESTS=${REQUESTS:-2000}
bench_setup instr valgrind callgrind_control nginx curl python3
ENVOY=$(envoy_bin)
"$BIN/bench-tokens" --count 10000 --spread 10000 --out "$WORK/tokens"
head -1 "$WORK/tokens/tokens.txt" > "$WORK/tokens/one.txt"
sed "s#@WORK@#$WORK#g" "$ROOT/bench/nginx/upstream.conf" > "$WORK/upstream.conf"
sed -e "s#@WORK@#$WORK#g" -e 's/^daemon off;/daemon off;\nmaster_process off;/' \
  "$ROOT/bench/nginx/auth.conf" > "$WORK/auth.conf"
envoy_conf "$WORK/tokens/tokens.txt" "$WORK/envoy.yaml"
nginx -p "$WORK" -c "$WORK/upstream.conf" & PIDS+=($!)

grind() { # name, then valgrind options and the command
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.%p.out" "$@" > "$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  echo $! > "$WORK/$name.pid"
}
COMMON=(--upstream 127.0.0.1:18081 --threads 1 --work-stealing false)
grind passthrough "$BIN/bench-passthrough" --listen 127.0.0.1:18100 "${COMMON[@]}"
grind sessions "$BIN/bench-passthrough" --listen 127.0.0.1:18400 --mode sessions "${COMMON[@]}"
grind proxy-1 "$BIN/prodgy-proxy" --source file --tokens-path "$WORK/tokens/one.json" \
  --listen 127.0.0.1:18200 --metrics-addr 127.0.0.1:18201 "${COMMON[@]}"
grind proxy-10k "$BIN/prodgy-proxy" --source file --tokens-path "$WORK/tokens/records.json" \
  --listen 127.0.0.1:18210 --metrics-addr 127.0.0.1:18211 "${COMMON[@]}"
grind nginx-map nginx -p "$WORK" -c "$WORK/auth.conf"
# Envoy generates code at run time: valgrind must watch for it.
grind envoy-key --smc-check=all "$ENVOY" -c "$WORK/envoy.yaml" --concurrency 1 --disable-hot-restart \
  --log-level warn

# A curl config of n requests to a port, cycling through a token file.
requests() { # port tokens-file n
  awk -v port="$1" -v n="$3" '{ t[NR] = $0 } END {
    for (i = 0; i < n; i++) {
      printf "url = \"http://127.0.0.1:%s/api/agent-base\"\n", port
      printf "header = \"Authorization: Bearer %s\"\noutput = \"/dev/null\"\nwrite-out = \"%%{http_code}\\n\"\n", t[i % NR + 1]
      if (i < n - 1) print "next"
    } }' "$2"
}
total_ir() { awk '/^totals:/ {print $2}' "$1"; }

printf '\n| target | instructions per request | × passthrough |\n|---|---:|---:|\n' > "$WORK/table"
BASE=
for t in "passthrough 18100 tokens.txt" "sessions 18400 tokens.txt" \
         "proxy-1 18200 one.txt" "proxy-10k 18210 tokens.txt" \
         "nginx-map 18300 tokens.txt" "envoy-key 18500 tokens.txt"; do
  read -r name port file <<<"$t"
  pid=$(cat "$WORK/$name.pid")
  for _ in $(seq 1 1800); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$WORK/tokens/one.txt")" \
      "http://127.0.0.1:$port/api/agent-base" || true)" = 200 ] && break
    sleep 0.1
  done
  requests "$port" "$WORK/tokens/$file" "$REQUESTS" > "$WORK/run.cfg"
  curl -s -K "$WORK/run.cfg" > /dev/null
  callgrind_control -z "$pid" > /dev/null 2>&1
  ok=$(curl -s -K "$WORK/run.cfg" | grep -c '^200$' || true)
  callgrind_control -d "$pid" > /dev/null 2>&1
  [ "$ok" = "$REQUESTS" ] || { echo "$name: only $ok of $REQUESTS requests answered 200" >&2; exit 1; }
  dump=$(ls -t "$WORK/$name".*.out.* | head -1)
  per=$(( $(total_ir "$dump") / REQUESTS ))
  BASE=${BASE:-$per}
  printf '| %s | %d | %.2f |\n' "$name" "$per" "$(awk -v a="$per" -v b="$BASE" 'BEGIN {print a / b}')" >> "$WORK/table"
done
cat "$WORK/table"
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$WORK"/*.out.* "$KEEP"/; fi # KEEP=dir: keep the profiles
