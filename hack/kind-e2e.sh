#!/usr/bin/env bash
# kind end-to-end suite: creates a kind cluster, loads the three images that
# `make images` builds (target/images/*.tar, built first unless SKIP_BUILD=1),
# installs ingress-nginx and the chart, then runs the Rust suite
# (tests/tests/kind_e2e.rs) against the ingress. On failure it dumps the
# cluster's state to target/kind-e2e/state/ and prints the essentials. The
# cluster is deleted at the end unless --keep (or KEEP_CLUSTER=1).
#
#   hack/kind-e2e.sh [--keep]
#
# Environment: KIND_CLUSTER (default prodgy-e2e), E2E_HTTP_PORT (host port of
# the ingress, default 18080), INGRESS_NGINX_VERSION (default
# controller-v1.12.1), KIND_NODE_IMAGE (optional kindest/node image),
# KEEP_CLUSTER=1, SKIP_BUILD=1 (load target/images/*.tar as they are),
# KIND_EXPERIMENTAL_PROVIDER=podman (kind's podman provider; chosen by itself
# when podman is there and no Docker engine runs).
#
# Without kind, or without a running Docker engine or podman, it prints how
# to run it and exits 0, so `make e2e` is harmless on machines that cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${KIND_CLUSTER:-prodgy-e2e}
http_port=${E2E_HTTP_PORT:-18080}
ingress_version=${INGRESS_NGINX_VERSION:-controller-v1.12.1}
keep=${KEEP_CLUSTER:-0}
release=prodgy
namespace=prodgy
tokens_namespace=prodgy-tokens
work=$PWD/target/kind-e2e

for arg in "$@"; do
  case $arg in
    --keep) keep=1 ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

# The engine kind runs its nodes on: Docker when its engine answers, else
# podman (kind's podman provider).
engine=
if [ "${KIND_EXPERIMENTAL_PROVIDER:-}" = podman ]; then
  command -v podman >/dev/null 2>&1 && engine=podman
elif docker info >/dev/null 2>&1; then
  engine=docker
elif command -v podman >/dev/null 2>&1 && podman info >/dev/null 2>&1; then
  engine=podman
  export KIND_EXPERIMENTAL_PROVIDER=podman
fi
if ! command -v kind >/dev/null 2>&1 || [ -z "$engine" ]; then
  echo "kind e2e skipped: it needs kind on PATH and a running Docker engine or podman; with them, run hack/kind-e2e.sh (add --keep to keep the cluster)"
  exit 0
fi
command -v kubectl >/dev/null || { echo "error: kubectl is not on PATH" >&2; exit 1; }
# shellcheck source=hack/lib/tools.sh
. hack/lib/tools.sh
helm=$(ensure_helm)

mkdir -p "$work"
export KUBECONFIG=$work/kubeconfig
step() { printf '\n==> %s\n' "$*"; }

dump_state() {
  local dir=$work/state
  rm -rf "$dir" && mkdir -p "$dir"
  echo "dumping cluster state to $dir" >&2
  kubectl get all,ingress,networkpolicy,lease,apitokens,usagereports -A -o wide >"$dir/get-all.txt" 2>&1 || true
  kubectl get apitokens -A -o yaml >"$dir/apitokens.yaml" 2>&1 || true
  kubectl get events -A --sort-by=.lastTimestamp >"$dir/events.txt" 2>&1 || true
  # Secret names and types only: values stay in the cluster.
  kubectl get secrets -A -o custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,TYPE:.type >"$dir/secrets.txt" 2>&1 || true
  for ns in "$namespace" ingress-nginx; do
    kubectl describe pods -n "$ns" >"$dir/describe-$ns.txt" 2>&1 || true
    for pod in $(kubectl get pods -n "$ns" -o name 2>/dev/null); do
      local f=$dir/logs-$ns-${pod#pod/}.txt
      kubectl logs -n "$ns" "$pod" --all-containers --prefix --timestamps >"$f" 2>&1 || true
      kubectl logs -n "$ns" "$pod" --all-containers --prefix --previous >>"$f" 2>/dev/null || true
    done
  done
  echo "---- kubectl get (all namespaces) ----" >&2
  cat "$dir/get-all.txt" >&2
  echo "---- last events ----" >&2
  tail -n 40 "$dir/events.txt" >&2
  for f in "$dir"/logs-"$namespace"-*.txt; do
    [ -e "$f" ] || continue
    echo "---- $(basename "$f") (last 40 lines) ----" >&2
    tail -n 40 "$f" >&2
  done
}

finish() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    dump_state || true
  fi
  if [ "$keep" = 1 ]; then
    echo "cluster $cluster kept: export KUBECONFIG=$KUBECONFIG; delete it with: kind delete cluster --name $cluster"
  else
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap finish EXIT

step "cluster $cluster"
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  echo "reusing the existing cluster"
  kind export kubeconfig --name "$cluster" --kubeconfig "$KUBECONFIG"
else
  node_image=()
  [ -n "${KIND_NODE_IMAGE:-}" ] && node_image=(--image "$KIND_NODE_IMAGE")
  # The control-plane node runs ingress-nginx on its port 80, published on
  # the host's loopback.
  kind create cluster --name "$cluster" --kubeconfig "$KUBECONFIG" "${node_image[@]}" --wait 120s --config - <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    kubeadmConfigPatches:
      - |
        kind: InitConfiguration
        nodeRegistration:
          kubeletExtraArgs:
            node-labels: "ingress-ready=true"
    extraPortMappings:
      - containerPort: 80
        hostPort: $http_port
        listenAddress: 127.0.0.1
        protocol: TCP
EOF
fi

step "images ($engine)"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  hack/images.sh
fi
# make images writes OCI archives named docker.io/prodgy/<component>:<appVersion>,
# what the nodes' containerd makes of the chart's default reference
# prodgy/<component>:<appVersion>, so the chart is installed with its default
# image values. containerd takes a docker-archive here, so each is loaded
# into the engine and saved as one.
tag=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/prodgy/Chart.yaml)
for component in operator proxy api; do
  archive=target/images/$component.tar
  [ -s "$archive" ] || { echo "error: no $archive; run make images" >&2; exit 1; }
  name=docker.io/prodgy/$component:$tag
  "$engine" load -i "$archive" >/dev/null
  "$engine" save -o "$work/$component-docker.tar" "$name"
  kind load image-archive --name "$cluster" "$work/$component-docker.tar"
done

step "ingress-nginx $ingress_version"
kubectl apply -f "https://raw.githubusercontent.com/kubernetes/ingress-nginx/$ingress_version/deploy/static/provider/kind/deploy.yaml"
kubectl -n ingress-nginx rollout status deploy/ingress-nginx-controller --timeout=180s
# Its admission webhook must be serving before the chart creates an Ingress.
kubectl -n ingress-nginx wait --for=condition=complete job --all --timeout=120s

step "chart"
"$helm" upgrade --install "$release" charts/prodgy --namespace "$namespace" --create-namespace \
  -f charts/prodgy/ci/kind-values.yaml \
  --wait --timeout 5m
kubectl -n "$namespace" get pods -o wide

step "ingress answers"
# The proxy answers a request without a token with 401: that is the ingress,
# the Service and the proxy all in place.
base=http://127.0.0.1:$http_port
for i in $(seq 1 60); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$base/api/agent-base" || true)
  [ "$code" = 401 ] && break
  [ "$i" = 60 ] && { echo "error: $base/api/agent-base answered $code, not 401" >&2; exit 1; }
  sleep 2
done
echo "$base answers 401 without a token"

step "Rust e2e suite"
export PRODGY_E2E_KIND=1
export PRODGY_E2E_BASE_URL=$base
export PRODGY_E2E_RELEASE_NAMESPACE=$namespace
export PRODGY_E2E_TOKENS_NAMESPACE=$tokens_namespace
if command -v cargo-nextest >/dev/null; then
  cargo nextest run -p prodgy-tests --test kind_e2e --no-fail-fast --test-threads 4
else
  cargo test -p prodgy-tests --test kind_e2e --no-fail-fast -- --test-threads 4
fi
echo "kind e2e suite passed"
