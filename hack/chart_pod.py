#!/usr/bin/env python3
"""Runs one pod of a Deployment or Job rendered by `helm template` under
podman, the way a kubelet would, for hack/test-images.sh.

Everything comes from the rendered workload: containers, images (the
chart's references as they are: podman resolves them in local storage as
a node's runtime would, pulling only what is missing, as imagePullPolicy
says), args, env (values and the downward API), ports, probes, volumes and
mounts, the pod and container security contexts and memory limits.
Nothing of the pod is written here by hand. What the kubelet adds is
added: the service-account volume when the pod does not opt out,
KUBERNETES_SERVICE_HOST/PORT, fsGroup ownership of volumes.

    chart_pod.py up    --manifest RENDERED (--deployment NAME | --job NAME)
                       --state DIR [--api-server HOST:PORT] [--ca FILE]
                       [--token TOKEN] [--extra-port PORT]...
    chart_pod.py wait  --state DIR [--timeout S]
    chart_pod.py complete --state DIR [--timeout S]
    chart_pod.py flags --manifest RENDERED --deployment NAME --container C
    chart_pod.py images --manifest RENDERED
    chart_pod.py diff  --state DIR --container C
    chart_pod.py down  --state DIR [--keep]

`up` creates and starts the pod (its own network namespace, container
ports published on 127.0.0.1 as a Service would reach them) and writes
DIR/pod.json: published ports and probes. `wait` polls the startup and
readiness probes, then the liveness probes, until each answers 2xx, as a
kubelet gates readiness. `complete` waits for a Job's pod to finish and
fails unless every container exited 0 (its one run is the verdict: the
Job's retries are not imitated). `flags` prints (one per line) the podman
options for one container's security context and mounts, for one-off runs
such as `--help`, then its image. `images` prints every image the rendered
Deployments and Jobs run. `diff` prints what a container changed in its
root filesystem, less the mount points podman made for its volumes (empty:
it wrote only to volumes). PODMAN is the podman command line (default
`podman`).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

# The kubelet's conventional mount point of the service-account volume.
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SECCOMP_DEFAULT = "/usr/share/containers/seccomp.json"
# slirp4netns' address for the host's loopback (allow_host_loopback).
SLIRP_HOST = "10.0.2.2"


class PodError(Exception):
    pass


def podman() -> list[str]:
    return shlex.split(os.environ.get("PODMAN", "podman"))


def run(args: list[str], **kw) -> str:
    done = subprocess.run(args, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise PodError(f"{shlex.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


WORKLOADS = ("Deployment", "Job")
# imagePullPolicy as podman's --pull.
PULL = {"IfNotPresent": "missing", "Always": "always", "Never": "never"}


def documents(manifest: str) -> list[dict]:
    with open(manifest) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def load(manifest: str, kind: str, workload: str) -> tuple[dict, dict]:
    """The named Deployment or Job and every rendered Secret, by name."""
    docs = documents(manifest)
    secrets = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Secret"}
    for d in docs:
        if d.get("kind") == kind and d["metadata"]["name"] == workload:
            return d, secrets
    raise PodError(f"no {kind} {workload} in {manifest}")


def read_state(state_dir: str) -> dict:
    with open(os.path.join(state_dir, "pod.json")) as f:
        return json.load(f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def merged_security(pod_sc: dict, c_sc: dict) -> dict:
    """The container's effective security context: its own fields over the
    pod's, as the kubelet merges them."""
    sc = {k: pod_sc[k] for k in ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile") if k in pod_sc}
    sc.update(c_sc)
    return sc


def security_flags(spec: dict, container: dict) -> list[str]:
    pod_sc = spec.get("securityContext") or {}
    sc = merged_security(pod_sc, container.get("securityContext") or {})
    flags = []
    user, group = sc.get("runAsUser"), sc.get("runAsGroup")
    if sc.get("runAsNonRoot") and (user is None or user == 0):
        # The kubelet refuses to start it; so do we (the image's USER is
        # not consulted: the chart must say).
        raise PodError(f"{container['name']}: runAsNonRoot without a non-zero runAsUser")
    if user is not None:
        flags.append(f"--user={user}:{group if group is not None else user}")
    if "fsGroup" in pod_sc:
        flags.append(f"--group-add={pod_sc['fsGroup']}")
    for g in pod_sc.get("supplementalGroups") or []:
        flags.append(f"--group-add={g}")
    flags.append(f"--read-only={'true' if sc.get('readOnlyRootFilesystem') else 'false'}")
    if sc.get("readOnlyRootFilesystem"):
        # Kubernetes mounts nothing writable that the pod did not ask for.
        flags.append("--read-only-tmpfs=false")
    caps = sc.get("capabilities") or {}
    flags += [f"--cap-drop={c}" for c in caps.get("drop") or []]
    flags += [f"--cap-add={c}" for c in caps.get("add") or []]
    if sc.get("allowPrivilegeEscalation") is False:
        flags.append("--security-opt=no-new-privileges")
    if sc.get("privileged"):
        raise PodError(f"{container['name']}: privileged containers are not run here")
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    if seccomp == "RuntimeDefault":
        if os.path.exists(SECCOMP_DEFAULT):
            flags.append(f"--security-opt=seccomp={SECCOMP_DEFAULT}")
    elif seccomp == "Unconfined":
        flags.append("--security-opt=seccomp=unconfined")
    limits = (container.get("resources") or {}).get("limits") or {}
    if "memory" in limits:
        flags.append(f"--memory={quantity(limits['memory'])}")
    return flags


def quantity(q: str) -> str:
    """A Kubernetes memory quantity as podman's size (bytes)."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if str(q).endswith(suffix):
            return str(int(float(str(q)[: -len(suffix)]) * factor))
    return str(int(q))


def own(path: str, fs_group: int | None, mode: int) -> None:
    """fsGroup ownership as the kubelet applies it: group fsGroup, group
    access added (setgid on directories so new files inherit it)."""
    if fs_group is not None:
        os.chown(path, 0, fs_group)
        if os.path.isdir(path):
            mode |= 0o2070
        else:
            mode |= 0o040
    os.chmod(path, mode)


def write_file(path: str, data: bytes, mode: int, fs_group: int | None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    own(path, fs_group, mode)


def materialize(volume: dict, root: str, ctx: dict) -> tuple[str, str | None]:
    """Creates a volume's content on the host; returns (kind, host path)."""
    name = volume["name"]
    path = os.path.join(root, "volumes", name)
    fs_group = ctx["fs_group"]
    if "emptyDir" in volume:
        if (volume["emptyDir"] or {}).get("medium") == "Memory":
            return "tmpfs", None
        os.makedirs(path, exist_ok=True)
        own(path, fs_group, 0o777)
        return "bind", path
    if "persistentVolumeClaim" in volume:
        # A claim is a directory that outlives the pod: keep what is there.
        path = os.path.join(root, "claims", volume["persistentVolumeClaim"]["claimName"])
        os.makedirs(path, exist_ok=True)
        own(path, fs_group, 0o755)
        return "bind", path
    if "secret" in volume:
        src = volume["secret"]
        secret = ctx["secrets"].get(src["secretName"])
        if secret is None:
            raise PodError(f"volume {name}: Secret {src['secretName']} is not in the rendered manifest")
        data = secret_data(secret)
        items = src.get("items") or [{"key": k, "path": k} for k in data]
        os.makedirs(path, exist_ok=True)
        for item in items:
            mode = item.get("mode", src.get("defaultMode", 0o644))
            write_file(os.path.join(path, item["path"]), data[item["key"]], mode, fs_group)
        return "bind", path
    if "projected" in volume:
        src = volume["projected"]
        os.makedirs(path, exist_ok=True)
        for source in src["sources"]:
            for item_path, content in projected_items(source, ctx):
                write_file(os.path.join(path, item_path), content, src.get("defaultMode", 0o644), fs_group)
        return "bind", path
    raise PodError(f"volume {name}: this kind of volume is not supported here")


def secret_data(secret: dict) -> dict[str, bytes]:
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    data.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
    return data


def projected_items(source: dict, ctx: dict):
    if "serviceAccountToken" in source:
        if ctx["token"] is None:
            raise PodError("a service-account token is projected but no --token was given")
        yield source["serviceAccountToken"]["path"], ctx["token"].encode()
    elif "configMap" in source:
        cm = source["configMap"]
        if cm["name"] != "kube-root-ca.crt":
            raise PodError(f"projected ConfigMap {cm['name']} is not supported here")
        if ctx["ca"] is None:
            raise PodError("kube-root-ca.crt is projected but no --ca was given")
        with open(ctx["ca"], "rb") as f:
            ca = f.read()
        for item in cm.get("items") or [{"key": "ca.crt", "path": "ca.crt"}]:
            yield item["path"], ca
    elif "downwardAPI" in source:
        for item in source["downwardAPI"]["items"]:
            yield item["path"], field_ref(item["fieldRef"]["fieldPath"], ctx).encode()
    else:
        raise PodError(f"projected source {sorted(source)} is not supported here")


def field_ref(path: str, ctx: dict) -> str:
    values = {
        "metadata.name": ctx["pod"],
        "metadata.namespace": ctx["namespace"],
        "spec.serviceAccountName": ctx["service_account"],
        "status.podIP": "10.0.2.100",
    }
    if path not in values:
        raise PodError(f"fieldRef {path} is not supported here")
    return values[path]


def service_account_volume() -> dict:
    """The volume the kubelet's admission adds when the pod does not opt
    out of automountServiceAccountToken."""
    return {
        "name": "kube-api-access-auto",
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }


def mount_flags(container: dict, volumes: dict) -> list[str]:
    flags = []
    for m in container.get("volumeMounts") or []:
        kind, host = volumes[m["name"]]
        ro = ",ro=true" if m.get("readOnly") else ""
        if kind == "tmpfs":
            flags.append(f"--mount=type=tmpfs,destination={m['mountPath']}")
        else:
            flags.append(f"--mount=type=bind,source={host},destination={m['mountPath']}{ro}")
    return flags


def env_flags(container: dict, ctx: dict) -> list[str]:
    flags = []
    if ctx["api_server"]:
        host, _, port = ctx["api_server"].rpartition(":")
        flags += [f"--env=KUBERNETES_SERVICE_HOST={host}", f"--env=KUBERNETES_SERVICE_PORT={port}"]
    for e in container.get("env") or []:
        if "value" in e:
            value = str(e["value"])
        elif "fieldRef" in (e.get("valueFrom") or {}):
            value = field_ref(e["valueFrom"]["fieldRef"]["fieldPath"], ctx)
        else:
            raise PodError(f"env {e['name']}: only values and fieldRefs are supported here")
        flags.append(f"--env={e['name']}={value}")
    return flags


def pod_context(dep: dict, secrets: dict, args) -> dict:
    spec = dep["spec"]["template"]["spec"]
    return {
        "pod": f"{dep['metadata']['name']}-0",
        "namespace": dep["metadata"].get("namespace", "default"),
        "service_account": spec.get("serviceAccountName", "default"),
        "fs_group": (spec.get("securityContext") or {}).get("fsGroup"),
        "secrets": secrets,
        "token": getattr(args, "token", None),
        "ca": getattr(args, "ca", None),
        "api_server": getattr(args, "api_server", None),
    }


def pod_volumes(spec: dict, containers: list[dict]) -> list[dict]:
    """The pod's volumes; with the kubelet's service-account volume mounted
    into every container unless the pod opts out or mounts its own."""
    volumes = list(spec.get("volumes") or [])
    if spec.get("automountServiceAccountToken", True):
        sa = service_account_volume()
        volumes.append(sa)
        for c in containers:
            mounts = c.setdefault("volumeMounts", [])
            if not any(m["mountPath"] == SA_DIR for m in mounts):
                mounts.append({"name": sa["name"], "mountPath": SA_DIR, "readOnly": True})
    return volumes


def container_flags(spec, container, volumes, ctx) -> list[str]:
    return security_flags(spec, container) + mount_flags(container, volumes) + env_flags(container, ctx)


def up(args) -> None:
    dep, secrets = load(args.manifest, *(("Job", args.job) if args.job else ("Deployment", args.deployment)))
    spec = dep["spec"]["template"]["spec"]
    ctx = pod_context(dep, secrets, args)
    containers = [dict(c) for c in spec["containers"]]
    if spec.get("initContainers"):
        raise PodError("init containers are not supported here")
    os.makedirs(args.state, exist_ok=True)
    volumes = {v["name"]: materialize(v, args.state, ctx) for v in pod_volumes(spec, containers)}

    ports, probes = {}, []
    named = {}
    for c in containers:
        for p in c.get("ports") or []:
            ports[p["containerPort"]] = free_port()
            if "name" in p:
                named[(c["name"], p["name"])] = p["containerPort"]
    for extra in args.extra_port:
        ports.setdefault(extra, free_port())
    for c in containers:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(kind)
            if not probe:
                continue
            get = probe.get("httpGet")
            if not get:
                raise PodError(f"{c['name']} {kind}: only httpGet probes are supported here")
            port = get["port"]
            port = named[(c["name"], port)] if isinstance(port, str) else port
            probes.append({"container": c["name"], "kind": kind, "path": get.get("path", "/"),
                           "host_port": ports[port], "container_port": port,
                           "budget": probe.get("failureThreshold", 3) * probe.get("periodSeconds", 10)})

    pod = ctx["pod"]
    base = podman()
    subprocess.run(base + ["pod", "rm", "-f", pod], capture_output=True)
    publish = [f"--publish=127.0.0.1:{h}:{c}" for c, h in ports.items()]
    # Its own network namespace; published ports reach the pod's address,
    # not its loopback, as a Service reaches a pod IP; the host's loopback
    # is reachable as SLIRP_HOST.
    net = "--network=slirp4netns:allow_host_loopback=true,port_handler=slirp4netns"
    run(base + ["pod", "create", f"--name={pod}", net] + publish)
    names, mounts = [], {}
    for c in containers:
        name = f"{pod}-{c['name']}"
        cmd = base + ["create", f"--pod={pod}", f"--name={name}", "--restart=no",
                      f"--pull={PULL[c.get('imagePullPolicy', 'IfNotPresent')]}"]
        cmd += container_flags(spec, c, volumes, ctx)
        if c.get("command"):
            cmd.append(f"--entrypoint={json.dumps(c['command'])}")
        cmd.append(c["image"])
        cmd += [str(a) for a in c.get("args") or []]
        run(cmd)
        names.append(name)
        mounts[c["name"]] = [m["mountPath"] for m in c.get("volumeMounts") or []]
    run(base + ["pod", "start", pod])
    state = {"pod": pod, "containers": names, "mounts": mounts, "ports": {str(c): h for c, h in ports.items()},
             "probes": probes, "grace": spec.get("terminationGracePeriodSeconds", 30)}
    with open(os.path.join(args.state, "pod.json"), "w") as f:
        json.dump(state, f, indent=2)
    print(f"pod {pod} up: " + ", ".join(f"{c}->127.0.0.1:{h}" for c, h in ports.items()))


def probe_ok(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return 200 <= r.status < 400, str(r.status)
    except urllib.error.HTTPError as e:
        return False, str(e.code)
    except OSError as e:
        return False, type(e).__name__


def wait(args) -> None:
    state = read_state(args.state)
    order = {"startupProbe": 0, "readinessProbe": 1, "livenessProbe": 2}
    for p in sorted(state["probes"], key=lambda p: order[p["kind"]]):
        url = f"http://127.0.0.1:{p['host_port']}{p['path']}"
        deadline = time.monotonic() + min(args.timeout, max(p["budget"], 30))
        while True:
            ok, why = probe_ok(url)
            if ok:
                print(f"  {p['container']} {p['kind']} {p['path']} (port {p['container_port']}): {why}")
                break
            if time.monotonic() > deadline or not pod_running(state):
                logs(state)
                raise PodError(f"{p['container']} {p['kind']} {p['path']} never answered 2xx (last: {why})")
            time.sleep(0.2)


def pod_running(state: dict) -> bool:
    out = subprocess.run(podman() + ["inspect", "--format", "{{.State.Running}}"] + state["containers"],
                         capture_output=True, text=True).stdout.split()
    return bool(out) and all(s == "true" for s in out)


def logs(state: dict) -> None:
    for c in state["containers"]:
        done = subprocess.run(podman() + ["logs", "--tail", "30", c], capture_output=True, text=True)
        sys.stderr.write(f"---- {c} (last 30 lines) ----\n{done.stdout}{done.stderr}")


def complete(args) -> None:
    state = read_state(args.state)
    try:
        codes = run(podman() + ["wait"] + state["containers"], timeout=args.timeout).split()
    except subprocess.TimeoutExpired:
        logs(state)
        raise PodError(f"pod {state['pod']} still runs after {args.timeout:.0f}s") from None
    failed = {c: code for c, code in zip(state["containers"], codes) if code != "0"}
    if failed:
        logs(state)
        raise PodError(f"pod {state['pod']} failed: exit codes {failed}")
    print(f"pod {state['pod']} completed: every container exited 0")


def flags(args) -> None:
    dep, _ = load(args.manifest, "Deployment", args.deployment)
    spec = dep["spec"]["template"]["spec"]
    for c in spec["containers"]:
        if c["name"] == args.container:
            for flag in security_flags(spec, c):
                print(flag)
            print(c["image"])
            return
    raise PodError(f"no container {args.container} in {args.deployment}")


def images(args) -> None:
    seen = []
    for d in documents(args.manifest):
        if d.get("kind") in WORKLOADS:
            spec = d["spec"]["template"]["spec"]
            for c in (spec.get("initContainers") or []) + spec["containers"]:
                if c["image"] not in seen:
                    seen.append(c["image"])
    print("\n".join(seen))


def diff(args) -> None:
    state = read_state(args.state)
    # Podman creates each mount point (and its parents) in the container's
    # layer; those are not writes of the process.
    made = {"/"}
    for path in state["mounts"][args.container]:
        while path not in made:
            made.add(path)
            path = os.path.dirname(path)
    out = run(podman() + ["diff", f"{state['pod']}-{args.container}"])
    for line in out.splitlines():
        _, _, path = line.partition(" ")
        if path not in made:
            print(line)


def down(args) -> None:
    if not os.path.exists(os.path.join(args.state, "pod.json")):
        return
    state = read_state(args.state)
    began = time.monotonic()
    subprocess.run(podman() + ["pod", "stop", "-t", str(state["grace"]), state["pod"]], capture_output=True)
    print(f"pod {state['pod']} stopped in {time.monotonic() - began:.1f}s")
    if not args.keep:
        subprocess.run(podman() + ["pod", "rm", "-f", state["pod"]], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up")
    f = sub.add_parser("flags")
    i = sub.add_parser("images")
    for p in (u, f, i):
        p.add_argument("--manifest", required=True)
    which = u.add_mutually_exclusive_group(required=True)
    which.add_argument("--deployment")
    which.add_argument("--job")
    f.add_argument("--deployment", required=True)
    u.add_argument("--state", required=True)
    u.add_argument("--api-server")
    u.add_argument("--ca")
    u.add_argument("--token")
    u.add_argument("--extra-port", type=int, action="append", default=[])
    f.add_argument("--container", required=True)
    for name in ("wait", "complete"):
        w = sub.add_parser(name)
        w.add_argument("--state", required=True)
        w.add_argument("--timeout", type=float, default=120)
    df = sub.add_parser("diff")
    df.add_argument("--state", required=True)
    df.add_argument("--container", required=True)
    d = sub.add_parser("down")
    d.add_argument("--state", required=True)
    d.add_argument("--keep", action="store_true", help="stop the pod but keep it (and its logs)")
    args = ap.parse_args()
    try:
        commands = {"up": up, "wait": wait, "complete": complete, "flags": flags,
                    "images": images, "diff": diff, "down": down}
        commands[args.cmd](args)
    except PodError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
