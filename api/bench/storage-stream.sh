#!/usr/bin/env bash
# Streams a file of SIZE_MIB MiB (default 1024) through a release build of
# prodgy-api: upload with PUT (chunked, no length), download with GET, then
# prints throughput and the server's peak resident memory (VmHWM).
#
#   cargo build --release -p prodgy-api && api/bench/storage-stream.sh [SIZE_MIB]
set -euo pipefail
size_mib=${1:-1024}
bin=${PRODGY_API_BIN:-target/release/prodgy-api}
[ -x "$bin" ] || { echo "build it first: cargo build --release -p prodgy-api" >&2; exit 1; }
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ops=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$bin" --listen "127.0.0.1:$port" --ops-listen "127.0.0.1:$ops" \
  --data-dir "$dir" --workers 1 2>"$dir/api.log" &
pid=$!
for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$ops/readyz" 2>/dev/null && break; sleep 0.1; done
hwm() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status"; }
base=$(hwm)
id=(-H "x-prodgy-product: bench" -H "x-prodgy-scopes: *")
up=$(head -c "$((size_mib * 1024 * 1024))" /dev/zero |
  curl -fsS "${id[@]}" -H "content-type: application/octet-stream" -T - \
    -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/api/knowledge-base/storage/big.bin")
after_up=$(hwm)
down=$(curl -fsS "${id[@]}" -o /dev/null -w '%{time_total} %{size_download}' \
  "http://127.0.0.1:$port/api/knowledge-base/storage/big.bin")
after_down=$(hwm)
read -r down_s bytes <<<"$down"
[ "$bytes" -eq "$((size_mib * 1024 * 1024))" ] || { echo "downloaded $bytes bytes" >&2; exit 1; }
printf '| %s MiB | %.1f s (%.0f MiB/s) | %.1f s (%.0f MiB/s) | %s MiB | %s MiB | %s MiB |\n' \
  "$size_mib" "$up" "$(echo "$size_mib / $up" | bc -l)" "$down_s" "$(echo "$size_mib / $down_s" | bc -l)" \
  "$base" "$after_up" "$after_down"
