#!/usr/bin/env bash
# The images built by `make images`, run under podman the way a kubelet runs
# the chart's pods (hack/chart_pod.py turns the Deployments and the
# uninstall hook's Job that `helm template` renders into pods: nothing of a
# pod is written here):
#   1. each container with the chart's security context prints --help, and
#      its process really runs as 65532 with no capabilities, no new
#      privileges and seccomp;
#   2. the Kubernetes API test server (tests/kube-fake) serves HTTPS on the
#      host; pods reach it through in-cluster configuration
#      (KUBERNETES_SERVICE_HOST/PORT, a mounted service-account token and CA);
#   3. the operator pod starts, takes the leader Lease, and issues an
#      ApiToken created on that server;
#   4. the API pod (API + proxy sidecar) starts and its probes answer; through
#      the proxy's port the issued token gets 200 and no token 401; the API's
#      own port is not reachable from outside the pod; the API wrote only
#      under its data volume;
#   5. helm uninstall: both pods stopped, the chart's post-delete hook Job
#      runs `prodgy-operator release`; afterwards no ApiToken has the
#      cleanup finalizer and no hashed Secret is left.
#
# The images are the chart's default references (prodgy/<c>:<appVersion>),
# which podman resolves in local storage to what make images built; nothing
# is pulled.
#
#   hack/test-images.sh          (make test-images)
#
# Builds the images first (hack/images.sh; SKIP_IMAGES=1 uses those already
# built) and the kube-fake binary (SKIP_CARGO=1 uses the one built). Where containers cannot run at all it prints one line saying why
# and exits 0. Work files and pod logs: target/test-images/.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
work=$PWD/target/test-images
step() { printf '\n==> %s\n' "$*"; }
die() { echo "error: $*" >&2; exit 1; }
skip() { echo "image tests skipped: $*"; exit 0; }

# --- can containers run here? ---------------------------------------------
command -v podman >/dev/null || skip "podman is not installed (apt-get install podman buildah runc)"
command -v buildah >/dev/null || skip "buildah is not installed (apt-get install podman buildah runc)"
command -v curl >/dev/null || die "curl is needed"
# shellcheck source=hack/lib/containers.sh
. hack/lib/containers.sh
containers_setup
read -r -a podman <<<"$PODMAN"
rm -rf "$work"
mkdir -p "$work"
# A container of one binary (/bin/true and its libraries, laid out as the
# images are) tells whether this machine can run containers at all.
sh docker/stage.sh "$work/probe" /bin/true
cp "$work/probe/out/true" "$work/probe/rootfs/true"
if ! why=$("${podman[@]}" run --rm --network none --rootfs "$work/probe/rootfs" /true 2>&1); then
  skip "this machine cannot run containers ($(tail -n1 <<<"$why"))"
fi

# shellcheck source=hack/lib/tools.sh
. hack/lib/tools.sh
helm=$(ensure_helm)
py=$(ensure_validate_python)

# --- images and the rendered chart -----------------------------------------
if [ "${SKIP_IMAGES:-0}" != 1 ]; then
  step "images (hack/images.sh)"
  hack/images.sh
fi
if [ "${SKIP_CARGO:-0}" != 1 ]; then
  step "kube-fake binary"
  cargo build -q -p prodgy-kube-fake --bin kube-fake
fi
kube_fake=$PWD/target/debug/kube-fake
[ -x "$kube_fake" ] || die "no $kube_fake; build it with cargo build -p prodgy-kube-fake --bin kube-fake"

tag=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/prodgy/Chart.yaml)
manifest=$work/chart.yaml
"$helm" template prodgy charts/prodgy --namespace prodgy --kube-version 1.32.0 >"$manifest"
pod() { "$py" hack/chart_pod.py "$@"; }
# The name hack/images.sh gives a component's image.
built() { echo "docker.io/prodgy/$1:$tag"; }
image_id() { "${podman[@]}" image inspect --format '{{.Id}}' "$1" 2>/dev/null; }

step "the chart's default image references resolve to the built images"
mapfile -t refs < <(pod images --manifest "$manifest")
[ "${#refs[@]}" -gt 0 ] || die "the rendered chart runs no image"
for ref in "${refs[@]}"; do
  repo=${ref%:*}
  want=$(image_id "$(built "${repo##*/}")") || die "no image $(built "${repo##*/}"); run make images"
  got=$(image_id "$ref") || die "the chart's $ref resolves to no local image"
  [ "$got" = "$want" ] || die "the chart's $ref resolves to ${got:0:12}, not to $(built "${repo##*/}") (${want:0:12}): remove the other image"
  echo "  $ref: $(built "${repo##*/}") (${got:0:12})"
done

# --- 1. --help under the chart's security context ---------------------------
step "--help with the chart's security context"
for dc in prodgy-operator/operator prodgy-api/proxy prodgy-api/api; do
  mapfile -t run_flags < <(pod flags --manifest "$manifest" --deployment "${dc%/*}" --container "${dc#*/}")
  out=$("${podman[@]}" run --rm --network none "${run_flags[@]}" --help 2>&1) || die "$dc --help failed: $out"
  grep -q '^Usage: prodgy-' <<<"$out" || die "$dc --help printed no usage: $out"
  echo "  $dc: $(grep '^Usage:' <<<"$out")"
done

step "image metadata: user, OCI labels, no shell"
for c in operator proxy api; do
  name=$(built "$c")
  meta=$("${podman[@]}" image inspect --format '{{.Config.User}} {{index .Labels "org.opencontainers.image.source"}} {{index .Labels "org.opencontainers.image.version"}} {{index .Labels "org.opencontainers.image.revision"}} {{index .Labels "org.opencontainers.image.licenses"}}' "$name")
  read -r user source version revision licenses <<<"$meta"
  [ "$user" = 65532:65532 ] || die "$name runs as '$user', not 65532:65532"
  [ -n "$source" ] && [ "$version" = "$tag" ] && [ -n "$revision" ] && [ "$licenses" = Apache-2.0 ] \
    || die "$name lacks OCI labels: $meta"
  if "${podman[@]}" run --rm --network none --entrypoint /bin/sh "$name" -c true >/dev/null 2>&1; then
    die "$name has a shell"
  fi
  echo "  $name: user $user, version $version, revision ${revision:0:12}, $licenses, no /bin/sh"
done

# Reads a running container's process status from the host, as it really is.
check_process() {
  local name=$1 pid status
  pid=$("${podman[@]}" inspect --format '{{.State.Pid}}' "$name")
  status=$(cat "/proc/$pid/status")
  grep -Eq '^Uid:\s+65532\s+65532\s+65532\s+65532$' <<<"$status" || die "$name: not running as uid 65532: $(grep ^Uid <<<"$status")"
  grep -Eq '^Gid:\s+65532\s+65532\s+65532\s+65532$' <<<"$status" || die "$name: not running as gid 65532"
  # The bounding set: a non-root process has no effective capabilities
  # anyway, but only `drop: [ALL]` empties what it could ever gain.
  for set in CapEff CapPrm CapBnd; do
    grep -Eq "^$set:\s+0+$" <<<"$status" || die "$name: has capabilities: $(grep "^$set" <<<"$status")"
  done
  grep -Eq '^NoNewPrivs:\s+1$' <<<"$status" || die "$name: may gain privileges"
  local seccomp="seccomp n/a"
  if grep -q '^Seccomp:' <<<"$status"; then
    grep -Eq '^Seccomp:\s+2$' <<<"$status" || die "$name: no seccomp filter"
    seccomp="seccomp filter"
  fi
  echo "  $name: uid/gid 65532, no capabilities, no new privileges, $seccomp, read-only root: $("${podman[@]}" inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$name")"
}

# --- 2. the API server on the host ------------------------------------------
step "Kubernetes API test server (HTTPS)"
pki=$work/pki
# 10.0.2.2 is the host's loopback as the pods' slirp4netns network shows it.
hack/test-certs.sh "$pki" IP:127.0.0.1 IP:10.0.2.2 DNS:kubernetes.default.svc
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$kube_fake" --listen "127.0.0.1:$port" --kubeconfig "$work/kubeconfig" \
  --tls-cert "$pki/server.pem" --tls-key "$pki/server.key" --tls-ca "$pki/ca.pem" >"$work/kube-fake.log" 2>&1 &
kube_fake_pid=$!
cleanup() {
  local rc=$?
  for p in api operator release; do pod down --keep --state "$work/$p" || true; done
  for c in prodgy-operator-0-operator prodgy-api-0-proxy prodgy-api-0-api prodgy-operator-release-0-release; do
    "${podman[@]}" logs "$c" >"$work/logs-$c.txt" 2>&1 || true
  done
  for p in prodgy-api-0 prodgy-operator-0 prodgy-operator-release-0; do "${podman[@]}" pod rm -f "$p" >/dev/null 2>&1 || true; done
  [ "$rc" = 0 ] || echo "image tests failed; container logs and kube-fake.log under $work" >&2
  kill "$kube_fake_pid" 2>/dev/null || true
  wait "$kube_fake_pid" 2>/dev/null || true
  exit "$rc"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  [ -s "$work/kubeconfig" ] && break
  kill -0 "$kube_fake_pid" 2>/dev/null || die "kube-fake exited: $(cat "$work/kube-fake.log")"
  sleep 0.1
done
[ -s "$work/kubeconfig" ] || die "kube-fake wrote no kubeconfig"
token=$(sed -n 's/^ *token: //p' "$work/kubeconfig")
api=https://127.0.0.1:$port
kube() { curl -sS --cacert "$pki/ca.pem" -H "Authorization: Bearer $token" "$@"; }
# A field of the JSON object on stdin (a dotted path), empty when absent.
field() { "$py" -c 'import json,sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."): v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$1"; }
# One line per item of the list on stdin: namespace/name, then the values
# of the named metadata or top-level field (finalizers joined by commas).
items() { "$py" -c 'import json,sys
for o in json.load(sys.stdin)["items"]:
    m = o["metadata"]
    v = m.get(sys.argv[1], o.get(sys.argv[1]))
    print(m.get("namespace", "") + "/" + m["name"], ",".join(v) if isinstance(v, list) else v or "-")' "$1"; }
kube -f "$api/version" >/dev/null || die "the API server does not answer over HTTPS"
echo "  serving $api (pods: https://10.0.2.2:$port)"
in_cluster=(--api-server "10.0.2.2:$port" --ca "$pki/ca.pem" --token "$token")

# --- 3. the operator issues a token -----------------------------------------
step "operator pod (rendered Deployment prodgy-operator)"
pod up --manifest "$manifest" --deployment prodgy-operator --state "$work/operator" "${in_cluster[@]}"
pod wait --state "$work/operator"
check_process prodgy-operator-0-operator

kube -f -X POST -H 'Content-Type: application/json' "$api/apis/prodgy.io/v1/namespaces/default/apitokens" \
  -d '{"apiVersion":"prodgy.io/v1","kind":"ApiToken","metadata":{"name":"images-e2e","namespace":"default"},"spec":{"product":"acme","displayName":"image tests"}}' >/dev/null
plaintext=
for _ in $(seq 1 300); do
  data=$(kube "$api/api/v1/namespaces/default/secrets/images-e2e-token" 2>/dev/null || true)
  plaintext=$("$py" -c 'import base64,json,sys
try: print(base64.b64decode(json.load(sys.stdin)["data"]["token"]).decode())
except Exception: pass' <<<"$data")
  [ -n "$plaintext" ] && break
  sleep 0.1
done
[ -n "$plaintext" ] || die "the operator issued no token for default/images-e2e (logs: podman logs prodgy-operator-0-operator)"
echo "  the operator issued default/images-e2e (delivery Secret images-e2e-token)"
# The rendered Deployment's --lease-name, in its POD_NAMESPACE; the holder
# is the pod's name (POD_NAME).
lease_url=$api/apis/coordination.k8s.io/v1/namespaces/prodgy/leases/prodgy-operator
holder=$(kube -f "$lease_url" | field spec.holderIdentity) || die "the operator took no Lease prodgy/prodgy-operator"
[ "$holder" = prodgy-operator-0 ] || die "the Lease prodgy/prodgy-operator is held by '$holder', not by the operator pod"
echo "  the operator pod holds the leader Lease prodgy/prodgy-operator"

# --- 4. the API pod ---------------------------------------------------------
step "API pod (rendered Deployment prodgy-api: API + proxy sidecar)"
# 8081 is the API's own port (loopback only): published as well, to show
# that nothing outside the pod reaches it.
pod up --manifest "$manifest" --deployment prodgy-api --state "$work/api" "${in_cluster[@]}" --extra-port 8081
pod wait --state "$work/api"
check_process prodgy-api-0-proxy
check_process prodgy-api-0-api

port_of() { "$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["ports"][sys.argv[2]])' "$work/api/pod.json" "$1"; }
proxy=http://127.0.0.1:$(port_of 8000)
code() { curl -s -o /dev/null -w '%{http_code}' "$@" || true; }
got=$(code -H "Authorization: Bearer $plaintext" "$proxy/api/agent-base")
[ "$got" = 200 ] || die "the issued token got $got through the proxy, not 200"
echo "  issued token through the proxy: 200"
got=$(code "$proxy/api/agent-base")
[ "$got" = 401 ] || die "no token got $got through the proxy, not 401"
echo "  no token through the proxy: 401"
got=$(code --max-time 5 "http://127.0.0.1:$(port_of 8081)/healthz")
[ "$got" = 000 ] || die "the API's port 8081 answered $got from outside the pod"
echo "  the API's port 8081 from outside the pod: no connection"

changed=$(pod diff --state "$work/api" --container api)
[ -z "$changed" ] || die "the API changed its root filesystem: $changed"
data_dir=$work/api/claims/prodgy-api-data
[ -n "$(find "$data_dir" -mindepth 1 -print -quit)" ] || die "the API wrote nothing under its data volume"
foreign=$(find "$data_dir" -mindepth 1 ! -uid 65532)
[ -z "$foreign" ] || die "files in the data volume not written by 65532: $foreign"
echo "  the API wrote only under its data volume: $(find "$data_dir" -mindepth 1 -maxdepth 1 -printf '%f ' )"

# --- 5. helm uninstall: the post-delete hook --------------------------------
step "uninstall: the rendered post-delete hook Job prodgy-operator-release"
# helm uninstall deletes the Deployments, then runs the hook.
for p in api operator; do pod down --keep --state "$work/$p"; done
# Each ApiToken with its finalizers; the hashed Secrets in prodgy-tokens.
tokens() { kube -f "$api/apis/prodgy.io/v1/apitokens" | items finalizers; }
hashed() {
  local list
  list=$(kube -f "$api/api/v1/namespaces/prodgy-tokens/secrets") || return 1
  items type <<<"$list" | { grep ' prodgy.io/hashed-token$' || true; }
}
before=$(tokens) && before_hashed=$(hashed) && holder=$(kube -f "$lease_url" | field spec.holderIdentity) \
  || die "the API server does not answer"
[ "$before" = "default/images-e2e prodgy.io/cleanup" ] || die "before the hook, the ApiTokens are: $before"
[ -n "$before_hashed" ] || die "before the hook, no hashed Secret in prodgy-tokens"
# An operator killed at the end of its grace period leaves the Lease held
# until it expires: release waits for that (--wait).
echo "  pods stopped; Lease holder: '${holder}'; $(wc -l <<<"$before_hashed") hashed Secret(s); images-e2e has the finalizer"
pod up --manifest "$manifest" --job prodgy-operator-release --state "$work/release" "${in_cluster[@]}"
pod complete --state "$work/release" --timeout 180
after=$(tokens) && after_hashed=$(hashed) || die "the API server does not answer"
[ "$after" = "default/images-e2e -" ] || die "after the hook, the ApiTokens are: $after"
[ -z "$after_hashed" ] || die "hashed Secrets left after the hook: $after_hashed"
echo "  released: images-e2e has no finalizer, no hashed Secret left in prodgy-tokens"

echo
echo "image tests passed in $(( $(date +%s) - start ))s"
