# Shared set-up of the benchmark scripts; sourced, not run.
#   bench_setup NAME TOOL...   checks the tools, makes $WORK (removed on exit,
#                              with every pid in PIDS killed), builds the
#                              release binaries into $BIN.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PIDS=()

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"   # holds plaintext benchmark tokens
}

bench_setup() {
  local name=$1; shift
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y nginx wrk valgrind util-linux curl)" >&2; exit 1; }
  done
  WORK=$(mktemp -d "/tmp/prodgy-$name.XXXXXX")
  mkdir -p "$WORK/tmp"
  trap bench_cleanup EXIT
  echo "== build (release)"
  cargo build --release -q -p prodgy-proxy -p prodgy-bench --manifest-path "$ROOT/Cargo.toml"
  BIN="$ROOT/target/release"
}
