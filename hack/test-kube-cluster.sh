#!/usr/bin/env bash
# The API test server's semantics and watch suites against a cluster named
# by a kubeconfig, instead of the in-process server (docs/testing.md).
#
#   hack/test-kube-cluster.sh                      (make test-kube-cluster)
#   KUBE_TEST_KUBECONFIG=/tmp/kind.kubeconfig hack/test-kube-cluster.sh
#
# Without KUBE_TEST_KUBECONFIG it starts the test server's standalone binary
# (kube-fake, with --require-namespaces, as a real server behaves) and runs
# the suites against it as an external server: namespace creation, cleanup
# and the skips of the cluster mode are exercised on every `make test`.
# Afterwards no test namespace may be left: none at all on the standalone
# server; on a given cluster none that is not already being deleted.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
target=${CARGO_TARGET_DIR:-$PWD/target}
label=prodgy.io/kube-fake-test
die() { echo "error: $*" >&2; exit 1; }

run_suites() {
  PRODGY_KUBE_TEST_KUBECONFIG=$1 "$CARGO" nextest run --locked --no-fail-fast \
    -p prodgy-kube-fake --test semantics --test watch
}

if [ -n "${KUBE_TEST_KUBECONFIG:-}" ]; then
  [ -r "$KUBE_TEST_KUBECONFIG" ] || die "cannot read KUBE_TEST_KUBECONFIG=$KUBE_TEST_KUBECONFIG"
  # Leftovers are checked after failed tests too: cleanup matters most then.
  status=0
  run_suites "$KUBE_TEST_KUBECONFIG" || status=$?
  command -v kubectl >/dev/null || { echo "kubectl not installed: leftover test namespaces not checked"; exit "$status"; }
  left=$(kubectl --kubeconfig "$KUBE_TEST_KUBECONFIG" get namespaces -l "$label" \
    -o jsonpath='{range .items[?(!@.metadata.deletionTimestamp)]}{.metadata.name}{"\n"}{end}')
  [ -z "$left" ] || die "test namespaces left behind (not being deleted): $left"
  echo "no test namespace left behind"
  exit "$status"
fi

command -v curl >/dev/null || die "curl is needed"
work=$(mktemp -d)
server_pid=
stop() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap stop EXIT

"$CARGO" build -q --locked -p prodgy-kube-fake --bin kube-fake
"$target/debug/kube-fake" --listen 127.0.0.1:0 --kubeconfig "$work/kubeconfig" \
  --require-namespaces >"$work/server.log" 2>&1 &
server_pid=$!
# The kubeconfig appears once the server answers.
for _ in $(seq 100); do
  [ -f "$work/kubeconfig" ] && break
  kill -0 "$server_pid" 2>/dev/null || die "kube-fake exited: $(cat "$work/server.log")"
  sleep 0.1
done
[ -f "$work/kubeconfig" ] || die "kube-fake wrote no kubeconfig within 10 s"

status=0
run_suites "$work/kubeconfig" || status=$?

server=$(awk '$1 == "server:" {print $2}' "$work/kubeconfig")
token=$(awk '$1 == "token:" {print $2}' "$work/kubeconfig")
names=$(curl -sf -H "Authorization: Bearer $token" "$server/api/v1/namespaces" |
  python3 -c 'import json, sys; print(" ".join(n["metadata"]["name"] for n in json.load(sys.stdin)["items"]))')
[ -z "$names" ] || die "namespaces left behind on the standalone test server: $names"
echo "no test namespace left behind on the standalone test server"
exit "$status"
