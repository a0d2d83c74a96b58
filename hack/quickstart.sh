#!/usr/bin/env bash
# Runs Prodgy on this machine without a cluster (`make run`): builds the
# binaries, issues a token from examples/apitoken.yaml with
# `prodgy-operator issue-offline`, starts the API on loopback and the proxy in
# front of it (reading the token's hashed record from a directory), prints
# the token once with a curl to paste, and stops both on Ctrl-C.
#
# Environment (all optional):
#   PRODGY_QUICKSTART_MANIFEST   ApiToken manifest      (examples/apitoken.yaml)
#   PRODGY_QUICKSTART_DATA       data directory         (.data/quickstart)
#   PRODGY_QUICKSTART_PORT       proxy port             (8000)
#   PRODGY_QUICKSTART_METRICS    proxy metrics port     (9090)
#   PRODGY_QUICKSTART_API_PORT   API loopback port      (8081)
#   PRODGY_QUICKSTART_OPS_PORT   API ops/metrics port   (9091)
#   PRODGY_BIN_DIR               use these binaries instead of building them
set -euo pipefail
cd "$(dirname "$0")/.."

manifest=${PRODGY_QUICKSTART_MANIFEST:-examples/apitoken.yaml}
data=${PRODGY_QUICKSTART_DATA:-.data/quickstart}
proxy_port=${PRODGY_QUICKSTART_PORT:-8000}
metrics_port=${PRODGY_QUICKSTART_METRICS:-9090}
api_port=${PRODGY_QUICKSTART_API_PORT:-8081}
ops_port=${PRODGY_QUICKSTART_OPS_PORT:-9091}

log() { printf '%s\n' "$*" >&2; }

if [ -n "${PRODGY_BIN_DIR:-}" ]; then
  bin=$PRODGY_BIN_DIR
else
  log "building prodgy-operator, prodgy-proxy and prodgy-api (debug)…"
  cargo build -q -p prodgy-operator -p prodgy-proxy -p prodgy-api --bins
  bin=${CARGO_TARGET_DIR:-target}/debug
fi
for b in prodgy-operator prodgy-proxy prodgy-api; do
  [ -x "$bin/$b" ] || { log "error: $bin/$b is missing"; exit 1; }
done

mkdir -p "$data/tokens" "$data/api" "$data/logs"

pids=()
# Stops both processes and exits with $1.
stop() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    log ""
    log "stopping proxy and API…"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  exit "${1:-0}"
}
trap 'stop 0' INT TERM
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' EXIT

# A fresh token each run: issue-offline re-issues nothing for a record it
# already wrote, and the previous run's plaintext is gone, so start over (the
# previous quickstart token stops working).
rm -f "$data"/tokens/*.json
token=$("$bin/prodgy-operator" issue-offline --file "$manifest" --out-dir "$data/tokens" 2>"$data/logs/issue.log") \
  || { cat "$data/logs/issue.log" >&2; exit 1; }
token=$(printf '%s\n' "$token" | grep -E '^[A-Za-z0-9]+_[A-Za-z0-9]+$' | tail -n1)
[ -n "$token" ] || { log "error: prodgy-operator issue-offline printed no token"; exit 1; }

"$bin/prodgy-api" --listen "127.0.0.1:$api_port" --ops-listen "127.0.0.1:$ops_port" \
  --data-dir "$data/api" >"$data/logs/api.log" 2>&1 &
pids+=($!)
"$bin/prodgy-proxy" --listen "127.0.0.1:$proxy_port" --upstream "127.0.0.1:$api_port" \
  --metrics-addr "127.0.0.1:$metrics_port" --source file --tokens-path "$data/tokens" \
  >"$data/logs/proxy.log" 2>&1 &
pids+=($!)

ready() { curl -fsS -o /dev/null "$1" 2>/dev/null; }
for i in $(seq 1 100); do
  if ready "http://127.0.0.1:$ops_port/readyz" && ready "http://127.0.0.1:$metrics_port/readyz"; then
    break
  fi
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null || { log "error: a process exited at start-up; see $data/logs/"; tail -n 20 "$data"/logs/*.log >&2; exit 1; }
  done
  [ "$i" = 100 ] && { log "error: not ready after 20 s; see $data/logs/"; exit 1; }
  sleep 0.2
done

cat <<EOF
Prodgy is running on this machine (no cluster).

  API token (shown once, keep it):
    $token

  Try it:
    curl -H "Authorization: Bearer $token" http://127.0.0.1:$proxy_port/api/agent-base

  Without the token you get 401:
    curl -i http://127.0.0.1:$proxy_port/api/agent-base

  Metrics: http://127.0.0.1:$metrics_port/metrics (proxy, per-token usage)
           http://127.0.0.1:$ops_port/metrics (API)
  Logs:    $data/logs/

Press Ctrl-C to stop.
EOF

# Returns when either process exits on its own (Ctrl-C runs the trap instead).
wait -n "${pids[@]}" || true
log "error: the proxy or the API exited; see $data/logs/"
tail -n 20 "$data"/logs/*.log >&2
stop 1
