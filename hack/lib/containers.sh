# shellcheck shell=bash
# Sourced by hack/images.sh, hack/test-images.sh and hack/kind-e2e.sh: the
# podman/buildah settings this project's container runs need, in a
# containers.conf of its own (CONTAINERS_CONF, unless the caller set one):
# runc (crun fails on some kernels), cgroupfs (no systemd in CI), and open
# file and process limits at 1024 (a container may not raise its limits
# above the host's, which some sandboxes keep low). Exports PODMAN, the
# podman command line.

containers_setup() {
  if [ -z "${CONTAINERS_CONF:-}" ]; then
    local conf=$PWD/target/images/containers.conf
    mkdir -p "$(dirname "$conf")"
    {
      echo '[containers]'
      echo 'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]'
      echo '[engine]'
      if command -v runc >/dev/null || [ -x /usr/sbin/runc ]; then echo 'runtime = "runc"'; fi
      echo 'cgroup_manager = "cgroupfs"'
      echo 'events_logger = "file"'
    } >"$conf"
    export CONTAINERS_CONF=$conf
  fi
  export PODMAN=${PODMAN:-podman}
}
