#!/usr/bin/env bash
# Builds the three images here with buildah, from release binaries built on
# this machine and the same docker/Dockerfile users build with Docker
# (--build-arg BINARIES=prebuilt): nothing is pulled, the runtime base is
# `scratch` plus what docker/stage.sh lays out.
#
#   hack/images.sh
#
# Output: target/images/{operator,proxy,api}.tar, one OCI archive each,
# named docker.io/prodgy/<component>:<appVersion>: what a node's runtime
# makes of the chart's default reference prodgy/<component>:<appVersion>
# (containerd's normalisation; podman finds such a short name in local
# storage under docker.io/ too), so the chart's default values run them as
# built. And target/images/sizes.txt with each image's uncompressed size.
# The images also stay in local container storage.
#
# Environment: SKIP_CARGO=1 uses target/release as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

components=(operator proxy api)
work=target/images
context=$work/context

command -v buildah >/dev/null || { echo "error: make images needs buildah (apt-get install buildah)" >&2; exit 1; }
# shellcheck source=hack/lib/containers.sh
. hack/lib/containers.sh
containers_setup

# The tag the chart uses when image.tag is empty.
tag=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/prodgy/Chart.yaml)
[ -n "$tag" ] || { echo "error: no appVersion in charts/prodgy/Chart.yaml" >&2; exit 1; }
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)

if [ "${SKIP_CARGO:-0}" != 1 ]; then
  echo "==> cargo build --release"
  cargo build --release -p prodgy-operator -p prodgy-proxy -p prodgy-api
fi

echo "==> stage binaries and root filesystem"
rm -rf "$context"
mkdir -p "$context"
bins=()
for c in "${components[@]}"; do bins+=("target/release/prodgy-$c"); done
sh docker/stage.sh "$context" "${bins[@]}"

: >"$work/sizes.txt.new"
for c in "${components[@]}"; do
  name=docker.io/prodgy/$c:$tag
  echo "==> $name"
  # The name earlier builds used: podman would resolve the chart's short
  # name to it before the docker.io/ one.
  if podman image exists "localhost/prodgy/$c:$tag"; then podman rmi "localhost/prodgy/$c:$tag" >/dev/null; fi
  # --layers=false: nothing to cache, every layer is a copy.
  buildah --log-level=error bud --quiet --layers=false -f docker/Dockerfile --target "$c" \
    --build-arg BINARIES=prebuilt --build-arg VERSION="$tag" --build-arg REVISION="$revision" \
    -t "$name" "$context" >/dev/null
  rm -f "$work/$c.tar"
  buildah push --quiet "$name" "oci-archive:$work/$c.tar:$name"
  # Uncompressed: the sum of the layers as stored, what a node's disk holds.
  bytes=$(podman image inspect --format '{{.Size}}' "$name" 2>/dev/null || echo 0)
  printf '%-8s %s %s bytes (%s MB)\n' "$c" "$name" "$bytes" "$(( (bytes + 500000) / 1000000 ))" | tee -a "$work/sizes.txt.new"
done
mv "$work/sizes.txt.new" "$work/sizes.txt"
echo "OCI archives: $work/{$(IFS=,; echo "${components[*]}")}.tar"
