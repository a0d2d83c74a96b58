#!/usr/bin/env bash
# Generates charts/prodgy/templates/crds.yaml from crds/apitoken.yaml (itself
# generated from the Rust types): the same CRDs, gated by `crds.enabled`, with
# the chart's labels and, when `crds.keep`, `helm.sh/resource-policy: keep`.
#
#   hack/sync-chart-crds.sh            rewrite the chart template
#   hack/sync-chart-crds.sh --check    fail if the committed template differs
set -euo pipefail
cd "$(dirname "$0")/.."

src=crds/apitoken.yaml
dst=charts/prodgy/templates/crds.yaml

render() {
  # Template braces cannot occur in a CRD we generate; refuse rather than
  # emit a template Helm would misread.
  if grep -q '{{' "$src"; then
    echo "error: $src contains '{{'; escape it in the generator" >&2
    exit 1
  fi
  echo "{{- /* Generated from $src by hack/sync-chart-crds.sh; do not edit. */}}"
  echo '{{- if .Values.crds.enabled }}'
  awk '
    /^# / { next }   # the generator banner
    /^metadata:$/ {
      print
      print "  labels:"
      print "    {{- include \"prodgy.labels\" . | nindent 4 }}"
      print "  {{- if .Values.crds.keep }}"
      print "  annotations:"
      print "    helm.sh/resource-policy: keep"
      print "  {{- end }}"
      next
    }
    { print }
  ' "$src"
  echo '{{- end }}'
}

if [ "${1:-}" = "--check" ]; then
  if ! diff -u "$dst" <(render) >&2; then
    echo "error: $dst is out of date with $src; run hack/sync-chart-crds.sh" >&2
    exit 1
  fi
  echo "chart CRDs match $src"
else
  render >"$dst"
  echo "wrote $dst"
fi
