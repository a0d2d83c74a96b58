#!/usr/bin/env bash
# Makes a throw-away CA and a server certificate signed by it, for the
# Kubernetes API test server's HTTPS (tests/kube-fake's TLS test and
# hack/test-images.sh):
#
#   hack/test-certs.sh DIR SAN...      e.g. IP:127.0.0.1 DNS:kubernetes.default.svc
#
# Writes DIR/ca.pem, DIR/server.pem and DIR/server.key (ECDSA P-256, valid
# for two days). Needs the openssl command.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 DIR SAN..." >&2; exit 2; }
dir=$1
shift
command -v openssl >/dev/null || { echo "error: openssl is needed to make test certificates" >&2; exit 1; }
mkdir -p "$dir"
sans=$(IFS=,; echo "$*")
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2)
openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.pem" -subj /CN=prodgy-test-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -x509 "${ec[@]}" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
  -keyout "$dir/server.key" -out "$dir/server.pem" -subj /CN=kube-fake \
  -addext "subjectAltName=$sans" -addext basicConstraints=critical,CA:FALSE \
  -addext keyUsage=critical,digitalSignature -addext extendedKeyUsage=serverAuth 2>/dev/null
rm -f "$dir/ca.key"
chmod 600 "$dir/server.key"
