#!/bin/sh
# Lays out what the runtime images are made of:
#
#   docker/stage.sh DIR BINARY...
#
# DIR/out gets the binaries without their debug sections (symbols stay, so
# backtraces keep function names). DIR/rootfs gets the shared libraries the
# binaries link and the dynamic loader (found with ldd, so a new native
# dependency cannot be forgotten), the CA certificates (the API calls S3 and
# model endpoints over TLS), passwd and group entries for the unprivileged
# user 65532, and /tmp: no shell, no package manager. The Dockerfile's
# builder stage runs it, and so does hack/images.sh on the host for images
# built from host binaries: one definition of what an image holds.
set -eu

[ $# -ge 2 ] || { echo "usage: $0 DIR BINARY..." >&2; exit 2; }
dir=$1
shift
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -s "$ca" ] || { echo "error: no CA bundle at $ca (install ca-certificates)" >&2; exit 1; }

rootfs=$dir/rootfs
# data/ is empty: the Dockerfile copies it to /var/lib/prodgy owned by 65532.
mkdir -p "$dir/out" "$dir/data" "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/var/lib"
for bin in "$@"; do
  [ -x "$bin" ] || { echo "error: $bin is not an executable" >&2; exit 1; }
  strip --strip-debug -o "$dir/out/$(basename "$bin")" "$bin"
  # `ldd` prints "name => /path (addr)" and "/lib64/ld-linux… (addr)";
  # every absolute path is a file to copy.
  libs=$(ldd "$bin" | grep -o '/[^ ]*') || { echo "error: ldd $bin failed" >&2; exit 1; }
  for lib in $libs; do
    cp --parents -L "$lib" "$rootfs/"
  done
done
cp "$ca" "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
chmod 1777 "$rootfs/tmp"
