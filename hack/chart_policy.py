#!/usr/bin/env python3
"""Offline checks of the rendered Helm chart: the promises a user relies on.

    chart_policy.py split  RENDERED.yaml OUT.yaml
        Copies every object kubernetes-validate knows into OUT.yaml and names
        the custom-resource objects it leaves out (ServiceMonitor, ...).
    chart_policy.py check  RENDERED.yaml...
        Security and wiring assertions over each rendering (see `check`).
    chart_policy.py selftest RENDERED.yaml
        Breaks a good rendering in the ways `check` must catch and fails if
        any break goes unnoticed.
    chart_policy.py values VALUES.yaml SCHEMA.json
        Every value is documented, and values.yaml and the schema agree.
    chart_policy.py crds RENDERED.yaml CRDS.yaml
        The chart's CRDs are crds/apitoken.yaml plus labels and annotations.
    chart_policy.py examples CRDS.yaml EXAMPLE.yaml...
        Example ApiTokens validate against the CRD's schema.
    chart_policy.py rules RENDERED.yaml OUT.rules.yaml TESTS.yaml
        Writes the PrometheusRule's spec as a Prometheus rule file (for
        `promtool check rules` and `promtool test rules`) and fails unless
        TESTS.yaml has, for every alert, a case where it fires and one
        where it must not.

Exit status 1 with one line per violation on any failure.
"""

import copy
import json
import re
import sys

import yaml

# Objects typed by CRDs that kubernetes-validate has no schema for. Anything
# else of an unknown kind is an error, not a silent skip.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("prodgy.io/v1", "ApiToken"),
    ("prodgy.io/v1", "UsageReport"),
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
REQUIRED_ALERTS = {
    "ProdgyApiTokenExpiringSoon",
    "ProdgyApiTokenExpiredStillUsed",
    "ProdgyAuthFailureSpike",
    "ProdgyProxyIndexStale",
}


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def of_kind(objs, kind):
    return [o for o in objs if o.get("kind") == kind]


def name(o):
    return o["metadata"]["name"]


def flag(args, flag_name):
    """Value of `--flag=value` in an argument list, or None."""
    prefix = f"--{flag_name}="
    for a in args or []:
        if a.startswith(prefix):
            return a[len(prefix):]
    return None


def report(errors, ok):
    """Prints each error (or the ok line); the exit status for them."""
    for e in errors:
        print(f"FAIL {e}")
    if not errors:
        print(f"  ok: {ok}")
    return 1 if errors else 0


# --- split -------------------------------------------------------------------


def split(src, dst):
    objs = load(src)
    known, skipped = [], []
    for o in objs:
        key = (o.get("apiVersion"), o.get("kind"))
        (skipped if key in CUSTOM_KINDS else known).append(o)
    with open(dst, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(known, f, sort_keys=False)
    for o in skipped:
        print(f"  not validated (custom resource): {o['kind']}/{name(o)}")
    return 0


# --- check -------------------------------------------------------------------


class Rendering:
    """One rendering of the chart, with the lookups the checks need."""

    def __init__(self, objs):
        self.objs = objs
        deployments = of_kind(objs, "Deployment")
        self.api = next(d for d in deployments if component(d) == "api")
        self.operator = next(d for d in deployments if component(d) == "operator")
        pod = self.api["spec"]["template"]["spec"]
        self.proxy_c = next(c for c in pod["containers"] if c["name"] == "proxy")
        self.api_c = next(c for c in pod["containers"] if c["name"] == "api")
        self.release_ns = self.api["metadata"]["namespace"]
        self.tokens_ns = flag(self.proxy_c.get("args"), "hashed-secret-namespace")


def component(o):
    return o["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def bound_rules(objs, sa_name, sa_ns):
    """(binding, role namespace or None for cluster-wide, rules) for a ServiceAccount."""
    roles = {(o["kind"], o["metadata"].get("namespace"), name(o)): o for o in objs
             if o["kind"] in ("Role", "ClusterRole")}
    out = []
    for b in objs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = b.get("subjects") or []
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name
                   and s.get("namespace") == sa_ns for s in subjects):
            continue
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
        role_ns = ns if ref["kind"] == "Role" else None
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        rules = role.get("rules", []) if role else []
        out.append((b, ns, rules))
    return out


def touches(rule, group, resource):
    groups = rule.get("apiGroups", [])
    resources = rule.get("resources", [])
    return (group in groups or "*" in groups) and (resource in resources or "*" in resources)


def check_proxy_rbac(r, errors):
    """The proxy may list/watch Secrets in the tokens namespace and nothing more."""
    pod = r.api["spec"]["template"]["spec"]
    sa = pod.get("serviceAccountName", "default")
    if pod.get("automountServiceAccountToken") is not False:
        errors.append("API pod automounts its ServiceAccount token into every container")
    for m in r.api_c.get("volumeMounts", []):
        if m["mountPath"].startswith("/var/run/secrets/kubernetes.io"):
            errors.append("API container mounts the ServiceAccount token")
    bindings = bound_rules(r.objs, sa, r.release_ns)
    if not bindings:
        errors.append(f"proxy ServiceAccount {sa} has no RoleBinding")
    for b, ns, rules in bindings:
        where = f"{b['kind']}/{name(b)}"
        if ns is None:
            errors.append(f"proxy ServiceAccount is bound cluster-wide by {where}")
        elif ns != r.tokens_ns:
            errors.append(f"proxy ServiceAccount has rights in namespace {ns} ({where}), "
                          f"not only the tokens namespace {r.tokens_ns}")
        for rule in rules:
            verbs = set(rule.get("verbs", []))
            if "*" in verbs or "*" in rule.get("resources", []) or "*" in rule.get("apiGroups", []):
                errors.append(f"proxy rule with a wildcard in {where}: {rule}")
            if touches(rule, "", "secrets"):
                if not verbs <= {"list", "watch"}:
                    errors.append(f"proxy may {sorted(verbs - {'list', 'watch'})} Secrets ({where})")
            elif touches(rule, "prodgy.io", "usagereports"):
                if not verbs <= {"create", "get", "update", "patch"}:
                    errors.append(f"proxy may {sorted(verbs)} UsageReports ({where})")
            else:
                errors.append(f"proxy has a right it does not need in {where}: {rule}")


def check_ingress(r, errors):
    services = {name(s): s for s in of_kind(r.objs, "Service")}
    proxy_ports = {p["name"]: p["containerPort"] for p in r.proxy_c.get("ports", [])}
    data_port = proxy_ports.get("http")
    api_port = (flag(r.api_c.get("args"), "listen") or ":").rsplit(":", 1)[1]
    for ing in of_kind(r.objs, "Ingress"):
        if ing["metadata"].get("labels", {}).get("prodgy.io/leak-reports") == "true":
            check_leak_ingress(ing, services, errors)
            continue
        backends = []
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                backends.append(p["backend"])
        if ing["spec"].get("defaultBackend"):
            backends.append(ing["spec"]["defaultBackend"])
        for be in backends:
            svc_ref = be.get("service")
            if not svc_ref:
                errors.append(f"Ingress {name(ing)} has a non-Service backend")
                continue
            svc = services.get(svc_ref["name"])
            if svc is None:
                errors.append(f"Ingress {name(ing)} targets unknown Service {svc_ref['name']}")
                continue
            want = svc_ref["port"]
            port = next((p for p in svc["spec"]["ports"]
                         if p.get("name") == want.get("name") or p["port"] == want.get("number")), None)
            if port is None:
                errors.append(f"Ingress {name(ing)} targets a port Service {name(svc)} lacks")
                continue
            target = port.get("targetPort", port["port"])
            resolved = proxy_ports.get(target, target)
            if resolved != data_port:
                errors.append(f"Ingress {name(ing)} reaches port {resolved}, not the proxy port {data_port}")
            if str(resolved) == api_port:
                errors.append(f"Ingress {name(ing)} reaches the API port directly")


def check_leak_ingress(ing, services, errors):
    """The leak-report Ingress routes exactly /leak-reports to the operator's
    leak-report port, and nothing else."""
    paths = [p for rule in ing["spec"].get("rules", []) for p in rule.get("http", {}).get("paths", [])]
    if ing["spec"].get("defaultBackend") or not paths:
        errors.append(f"Ingress {name(ing)} must route /leak-reports only")
    for p in paths:
        svc = services.get(p["backend"].get("service", {}).get("name"))
        ports = svc["spec"]["ports"] if svc else []
        want = p["backend"]["service"]["port"].get("name")
        if (p["path"], p["pathType"]) != ("/leak-reports", "Exact") or not any(
                sp.get("name") == want and sp.get("targetPort") == "leak-reports" for sp in ports):
            errors.append(f"Ingress {name(ing)} reaches {p['path']} beyond the leak-report port")


def check_api_loopback(r, errors):
    listen = flag(r.api_c.get("args"), "listen")
    if not listen or not listen.startswith("127.0.0.1:"):
        errors.append(f"API container listens on {listen!r}, not on loopback")
        return
    api_port = int(listen.rsplit(":", 1)[1])
    for p in r.api_c.get("ports", []):
        if p["containerPort"] == api_port:
            errors.append("API container declares its loopback port as a container port")
    upstream = flag(r.proxy_c.get("args"), "upstream")
    if upstream != listen:
        errors.append(f"proxy forwards to {upstream}, API listens on {listen}")
    # The data Service carries the proxy port only.
    for svc in of_kind(r.objs, "Service"):
        if svc["spec"].get("selector", {}).get("app.kubernetes.io/component") != "api":
            continue
        for p in svc["spec"]["ports"]:
            if p.get("targetPort") in (api_port, str(api_port)):
                errors.append(f"Service {name(svc)} exposes the API port")
    for np in of_kind(r.objs, "NetworkPolicy"):
        if np["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component") != "api":
            continue
        for rule in np["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                if p.get("port") == api_port:
                    errors.append(f"NetworkPolicy {name(np)} admits the API port")


def check_restricted(r, errors):
    """Pod Security Standards, restricted profile, for every container."""
    for w in r.objs:
        if w["kind"] not in WORKLOAD_KINDS:
            continue
        pod = w["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(host):
                errors.append(f"{w['kind']}/{name(w)} uses {host}")
        for v in pod.get("volumes", []):
            if "hostPath" in v:
                errors.append(f"{w['kind']}/{name(w)} mounts a hostPath")
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            where = f"{w['kind']}/{name(w)} container {c['name']}"
            sc = c.get("securityContext", {})
            if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
                errors.append(f"{where}: runAsNonRoot is not true")
            if sc.get("runAsUser", psc.get("runAsUser")) == 0:
                errors.append(f"{where}: runs as UID 0")
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{where}: root filesystem is writable")
            if sc.get("privileged"):
                errors.append(f"{where}: privileged")
            caps = sc.get("capabilities", {})
            if "ALL" not in caps.get("drop", []):
                errors.append(f"{where}: does not drop ALL capabilities")
            if caps.get("add"):
                errors.append(f"{where}: adds capabilities {caps['add']}")
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
            if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
                errors.append(f"{where}: seccompProfile is not RuntimeDefault")
            # A Job's container runs to completion: nothing to probe.
            for probe in () if w["kind"] == "Job" else ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    errors.append(f"{where}: no {probe}")
            if not c.get("resources", {}).get("requests"):
                errors.append(f"{where}: no resource requests")


def check_operator(r, errors):
    pod = r.operator["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c.get("args", [])
    env = {e["name"]: e for e in c.get("env", [])}
    if flag(args, "hashed-secret-namespace") != r.tokens_ns:
        errors.append("operator and proxy disagree on the hashed-Secret namespace")
    leader = flag(args, "leader-election") == "true"
    if r.operator["spec"].get("replicas", 1) > 1 and not leader:
        errors.append("several operator replicas without leader election")
    if leader:
        ref = env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {})
        if ref.get("fieldPath") != "metadata.namespace":
            errors.append("operator POD_NAMESPACE (lease namespace) is not from the downward API")
        lease = flag(args, "lease-name")
        sa = pod.get("serviceAccountName", "default")
        ok = False
        for b, ns, rules in bound_rules(r.objs, sa, r.release_ns):
            for rule in rules:
                if touches(rule, "coordination.k8s.io", "leases") and ns == r.release_ns:
                    if rule.get("resourceNames") and lease not in rule["resourceNames"]:
                        errors.append(f"lease Role names {rule['resourceNames']}, operator uses {lease}")
                    if "update" in rule.get("verbs", []):
                        ok = True
        if not ok:
            errors.append("operator may not update its Lease in the release namespace")
    sa = pod.get("serviceAccountName", "default")
    for b, ns, rules in bound_rules(r.objs, sa, r.release_ns):
        for rule in rules:
            if "*" in rule.get("verbs", []) or "*" in rule.get("resources", []):
                errors.append(f"operator rule with a wildcard in {name(b)}: {rule}")
            if {"escalate", "bind", "impersonate"} & set(rule.get("verbs", [])):
                errors.append(f"operator may {rule['verbs']} ({name(b)})")


def check_monitoring(r, errors):
    for pr in of_kind(r.objs, "PrometheusRule"):
        alerts = {rule.get("alert") for g in pr["spec"]["groups"] for rule in g["rules"]}
        missing = REQUIRED_ALERTS - alerts
        if missing:
            errors.append(f"PrometheusRule lacks alerts {sorted(missing)}")
        for g in pr["spec"]["groups"]:
            for rule in g["rules"]:
                if "{{ ." in rule["expr"]:
                    errors.append(f"alert {rule.get('alert')} has an unrendered template")
    for cm in of_kind(r.objs, "ConfigMap"):
        if cm["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
            continue
        for key, body in cm.get("data", {}).items():
            try:
                dash = json.loads(body)
            except ValueError as e:
                errors.append(f"dashboard {key} is not JSON: {e}")
                continue
            if not dash.get("panels"):
                errors.append(f"dashboard {key} has no panels")
    for sm in of_kind(r.objs, "ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        matched = [s for s in of_kind(r.objs, "Service")
                   if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        if len(matched) != 1:
            errors.append(f"ServiceMonitor {name(sm)} selects {len(matched)} Services, want 1")
            continue
        ports = {p.get("name") for p in matched[0]["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            if ep["port"] not in ports:
                errors.append(f"ServiceMonitor {name(sm)} scrapes missing port {ep['port']}")


def check_release_hook(r, errors):
    """helm uninstall runs `prodgy-operator release` after the operator is
    gone, with RBAC of its own (the operator's is deleted by then) that can
    let every ApiToken go and delete the hashed Secrets."""
    jobs = [j for j in of_kind(r.objs, "Job")
            if "release" in (j["spec"]["template"]["spec"]["containers"][0].get("args") or [])]
    if len(jobs) != 1:
        errors.append(f"{len(jobs)} Jobs run `prodgy-operator release`, want 1")
        return
    job = jobs[0]
    if job["metadata"].get("annotations", {}).get("helm.sh/hook") != "post-delete":
        errors.append(f"Job {name(job)} is not a post-delete hook")
    pod = job["spec"]["template"]["spec"]
    sa = pod.get("serviceAccountName", "default")
    op_sa = r.operator["spec"]["template"]["spec"].get("serviceAccountName")
    if sa == op_sa:
        errors.append(f"Job {name(job)} uses the operator's ServiceAccount, deleted before it runs")
    for o in r.objs:
        if o["kind"] == "ServiceAccount" and name(o) == sa:
            if o["metadata"].get("annotations", {}).get("helm.sh/hook") != "post-delete":
                errors.append(f"ServiceAccount {sa} of the release Job is not a hook")
    args = pod["containers"][0].get("args") or []
    op_args = r.operator["spec"]["template"]["spec"]["containers"][0].get("args") or []
    for f in ("hashed-secret-namespace", "namespaces", "leader-election", "lease-name"):
        if flag(args, f) != flag(op_args, f):
            errors.append(f"release Job --{f}={flag(args, f)}, operator --{f}={flag(op_args, f)}")
    rules = bound_rules(r.objs, sa, r.release_ns)
    for b, _, rs in rules:
        if b["metadata"].get("annotations", {}).get("helm.sh/hook") != "post-delete":
            errors.append(f"{b['kind']} {name(b)} of the release Job is not a hook")

    def may(ns, group, resource, verb):
        return any((bns is None or bns == ns) and touches(rule, group, resource)
                   and verb in rule.get("verbs", []) for _, bns, rs in rules for rule in rs)
    watched = (flag(op_args, "namespaces") or "").split(",")
    for ns in watched:
        if not may(ns or "any", "prodgy.io", "apitokens", "patch"):
            errors.append(f"release Job may not patch ApiTokens in {ns or 'every namespace'}")
    if not may(r.tokens_ns, "", "secrets", "delete"):
        errors.append(f"release Job may not delete hashed Secrets in {r.tokens_ns}")


def check_objects(objs):
    errors = []
    try:
        r = Rendering(objs)
    except StopIteration:
        return ["rendering lacks the API or operator Deployment or a container"]
    for f in (check_proxy_rbac, check_ingress, check_api_loopback, check_restricted,
              check_operator, check_monitoring, check_release_hook):
        f(r, errors)
    return errors


def check(paths):
    failed = False
    for p in paths:
        errors = check_objects(load(p))
        for e in errors:
            print(f"FAIL {p}: {e}")
        failed |= bool(errors)
        if not errors:
            print(f"  ok {p}")
    return 1 if failed else 0


# --- selftest ----------------------------------------------------------------


def mutations():
    """Ways to break a good rendering; `check` must catch each one."""

    def proxy_role(objs):
        return next(o for o in objs if o["kind"] == "Role" and name(o).endswith("-proxy"))

    def api_pod(objs):
        d = next(o for o in objs if o["kind"] == "Deployment" and component(o) == "api")
        return d["spec"]["template"]["spec"]

    def container(objs, n):
        return next(c for c in api_pod(objs)["containers"] if c["name"] == n)

    def add_get(objs):
        proxy_role(objs)["rules"][0]["verbs"].append("get")

    def proxy_role_elsewhere(objs):
        role = proxy_role(objs)
        role["metadata"]["namespace"] = "default"
        for b in objs:
            if b["kind"] == "RoleBinding" and b["roleRef"]["name"] == name(role):
                b["metadata"]["namespace"] = "default"

    def proxy_cluster_binding(objs):
        role = copy.deepcopy(proxy_role(objs))
        role["kind"] = "ClusterRole"
        del role["metadata"]["namespace"]
        sa = api_pod(objs)["serviceAccountName"]
        ns = next(o for o in objs if o["kind"] == "Deployment")["metadata"]["namespace"]
        objs += [role, {"kind": "ClusterRoleBinding", "metadata": {"name": "x"},
                        "roleRef": {"kind": "ClusterRole", "name": name(role)},
                        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]}]

    def ingress_to_metrics(objs):
        ing = next(o for o in objs if o["kind"] == "Ingress" and component(o) == "api")
        ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] += "-metrics"
        ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] = {"name": "api-metrics"}

    def leak_ingress_wide_open(objs):
        ing = next(o for o in objs if o["kind"] == "Ingress" and component(o) == "operator")
        ing["spec"]["rules"][0]["http"]["paths"][0].update(path="/", pathType="Prefix")

    def api_on_all_interfaces(objs):
        c = container(objs, "api")
        c["args"] = [a.replace("--listen=127.0.0.1:", "--listen=0.0.0.0:") for a in c["args"]]

    def writable_root(objs):
        container(objs, "proxy")["securityContext"]["readOnlyRootFilesystem"] = False

    def keeps_capabilities(objs):
        container(objs, "api")["securityContext"]["capabilities"] = {"drop": []}

    def token_in_api(objs):
        api_pod(objs)["automountServiceAccountToken"] = True

    def no_lease_namespace(objs):
        d = next(o for o in objs if o["kind"] == "Deployment" and component(o) == "operator")
        env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        d["spec"]["template"]["spec"]["containers"][0]["env"] = [
            e for e in env if e["name"] != "POD_NAMESPACE"]

    def release_not_a_hook(objs):
        job = next(o for o in objs if o["kind"] == "Job")
        del job["metadata"]["annotations"]["helm.sh/hook"]

    def release_cannot_delete_hashed(objs):
        job = next(o for o in objs if o["kind"] == "Job")
        sa = job["spec"]["template"]["spec"]["serviceAccountName"]
        objs[:] = [o for o in objs if not (o["kind"] == "RoleBinding"
                   and any(s.get("name") == sa for s in o.get("subjects", []))
                   and o["metadata"]["namespace"] != job["metadata"]["namespace"]
                   and o["metadata"]["namespace"].endswith("tokens"))]

    return [release_not_a_hook, release_cannot_delete_hashed, add_get, proxy_role_elsewhere, proxy_cluster_binding, ingress_to_metrics,
            api_on_all_interfaces, writable_root, keeps_capabilities, token_in_api,
            no_lease_namespace, leak_ingress_wide_open]


def selftest(path):
    good = load(path)
    baseline = check_objects(good)
    if baseline:
        print(f"FAIL selftest: the baseline {path} is not clean: {baseline}")
        return 1
    failed = False
    for m in mutations():
        objs = copy.deepcopy(good)
        m(objs)
        if not check_objects(objs):
            print(f"FAIL selftest: breaking the chart by {m.__name__} went unnoticed")
            failed = True
    if not failed:
        print(f"  ok: {len(mutations())} deliberate breakages all caught")
    return 1 if failed else 0


# --- values ------------------------------------------------------------------

# Maps whose entries are Kubernetes fields, documented upstream.
FREE_FORM = {"podSecurityContext", "containerSecurityContext", "resources", "egress",
             "hosts", "requests", "limits", "capabilities", "seccompProfile", "accessModes"}


def values_doc(values_path, schema_path):
    errors = []
    lines = open(values_path, encoding="utf-8").read().splitlines()
    stack = []  # (indent, key)
    for n, line in enumerate(lines, 1):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9_]*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        stack.append((indent, key))
        if any(p in FREE_FORM for p in parents):
            continue
        is_section = rest == "" and n < len(lines) and re.match(
            r"^\s+[A-Za-z#]", lines[n]) and not lines[n].lstrip().startswith("- ")
        if is_section:
            continue  # a heading; its leaves carry the docs
        prev = lines[n - 2].strip() if n >= 2 else ""
        # A comment directly above, possibly the tail of a multi-line one.
        if not prev.startswith("#"):
            errors.append(f"{values_path}:{n}: value {'.'.join(parents + [key])} is not documented")

    with open(values_path, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)

    def walk(v, s, path):
        props = s.get("properties")
        if not isinstance(v, dict) or props is None:
            return
        for k in v:
            if k not in props:
                errors.append(f"value {path}{k} is missing from {schema_path}")
        for k, sub in props.items():
            if k not in v:
                errors.append(f"schema property {path}{k} has no default in {values_path}")
            else:
                walk(v[k], sub, f"{path}{k}.")

    walk(values, schema, "")
    return report(errors, f"every value in {values_path} is documented and typed")


# --- crds --------------------------------------------------------------------


def crds(rendered_path, crds_path):
    want = {name(o): o for o in load(crds_path)}
    got = {name(o): o for o in of_kind(load(rendered_path), "CustomResourceDefinition")}
    errors = []
    if set(want) != set(got):
        errors.append(f"chart renders CRDs {sorted(got)}, {crds_path} has {sorted(want)}")
    for n, crd in got.items():
        if n not in want:
            continue
        meta = crd["metadata"]
        if meta.get("annotations", {}).get("helm.sh/resource-policy") != "keep":
            errors.append(f"CRD {n} is not kept on uninstall")
        stripped = copy.deepcopy(crd)
        stripped["metadata"].pop("labels", None)
        stripped["metadata"].pop("annotations", None)
        if stripped != want[n]:
            errors.append(f"CRD {n} in the chart differs from {crds_path}")
    return report(errors, f"chart CRDs equal {crds_path}")


# --- examples ----------------------------------------------------------------


def examples(crds_path, paths):
    import jsonschema

    schemas = {}
    for crd in load(crds_path):
        kind = crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schemas[(f"{crd['spec']['group']}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    errors = []
    count = 0
    for p in paths:
        for o in load(p):
            key = (o.get("apiVersion"), o.get("kind"))
            if key not in schemas:
                errors.append(f"{p}: unknown kind {key}")
                continue
            body = {k: v for k, v in o.items() if k not in ("apiVersion", "kind", "metadata")}
            try:
                jsonschema.validate(body, schemas[key])
                count += 1
            except jsonschema.ValidationError as e:
                errors.append(f"{p}: {name(o)}: {e.message} at {'/'.join(map(str, e.path))}")
    return report(errors, f"{count} example ApiTokens match the CRD schema")


# --- alert rules --------------------------------------------------------------


def rules(rendered_path, out_path, tests_path):
    prs = of_kind(load(rendered_path), "PrometheusRule")
    if len(prs) != 1:
        return report([f"{rendered_path} has {len(prs)} PrometheusRules, want 1"], "")
    spec = prs[0]["spec"]
    with open(out_path, "w") as f:
        yaml.safe_dump({"groups": spec["groups"]}, f, sort_keys=False)
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r}
    with open(tests_path) as f:
        tests = yaml.safe_load(f)
    fires, silent = set(), set()
    for t in tests.get("tests", []):
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    errors = [f"{tests_path}: no case where {a} fires" for a in sorted(alerts - fires)]
    errors += [f"{tests_path}: no case where {a} must stay silent" for a in sorted(alerts - silent)]
    errors += [f"{tests_path}: tests an alert the chart lacks: {a}"
               for a in sorted((fires | silent) - alerts)]
    return report(errors, f"{len(alerts)} alerts written to {out_path}, each tested firing and silent")


def main(argv):
    cmds = {
        "rules": lambda a: rules(a[0], a[1], a[2]),
        "split": lambda a: split(a[0], a[1]),
        "check": check,
        "selftest": lambda a: selftest(a[0]),
        "values": lambda a: values_doc(a[0], a[1]),
        "crds": lambda a: crds(a[0], a[1]),
        "examples": lambda a: examples(a[0], a[1:]),
    }
    if len(argv) < 2 or argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    return cmds[argv[1]](argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
