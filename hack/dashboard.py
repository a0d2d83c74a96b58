#!/usr/bin/env python3
"""Prints the Grafana dashboard shipped by the chart
(charts/prodgy/dashboards/prodgy-api-tokens.json).

Edit the panels here, then regenerate:

    python3 hack/dashboard.py > charts/prodgy/dashboards/prodgy-api-tokens.json

hack/check-chart.sh fails when the committed JSON differs from this output.
The metric names are those the proxy and the operator export (docs/deployment.md
lists them).

    python3 hack/dashboard.py --rules

prints every panel and variable query instead as a recording rule of a
Prometheus rule file, with Grafana's variables replaced by values, so that
`promtool check rules` parses each one as PromQL (hack/check-chart.sh). The
test tests/tests/metrics.rs checks that the series named here are ones the
binaries export, and that every label a query matches on or aggregates by
(`by (…)`, `without (…)`, `label_values(…, label)`) is one those series
carry as Prometheus stores them through the chart's ServiceMonitors.
"""

import json
import re
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []
y = 0
def row(title):
    global y
    panels.append({"type": "row", "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "id": len(panels) + 1, "panels": []})
    y += 1
def panel(kind, title, targets, w, h, x, unit="short", desc="", extra=None):
    p = {"type": kind, "title": title, "description": desc, "datasource": DS,
         "gridPos": {"h": h, "w": w, "x": x, "y": y}, "id": len(panels) + 1,
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
         "options": {},
         "targets": [dict(datasource=DS, refId=chr(65 + i), **t) for i, t in enumerate(targets)]}
    if extra:
        p.update(extra)
    panels.append(p)
def t(expr, legend, **kw):
    d = {"expr": expr, "legendFormat": legend}
    d.update(kw)
    return d

# Proxy series carry the token as `token_namespace` (renamed from the
# proxy's `namespace` by the chart's ServiceMonitor) and `name`; `namespace`
# is the pod's, i.e. the release namespace.
REQ = 'prodgy_proxy_requests_total{namespace=~"$namespace",product=~"$product"}'
TOK = 'token_namespace!="",name!="",product=~"$product",name=~"$token"'
FAIL = 'prodgy_proxy_auth_failures_total{namespace=~"$namespace"}'
R401 = "missing_token|unsupported_scheme|duplicate_authorization|invalid_authorization|authorization_too_long|malformed_token|bad_checksum|unknown_token|inactive_token|expired_token|revoked_token"
R403 = "wrong_product|insufficient_scope"

row("Traffic")
panel("stat", "Requests/s", [t(f'sum(rate({REQ}[$__rate_interval]))', "")], 6, 4, 0, "reqps",
      "Every request the proxies answered, accepted or not.")
panel("stat", "Refused share", [t(f'sum(rate({FAIL}[$__rate_interval])) / sum(rate({REQ}[$__rate_interval]))', "")], 6, 4, 6, "percentunit",
      "Share of requests the proxy refused itself (400, 401, 403, 429).")
panel("stat", "Tokens in the proxy index", [t('max(prodgy_proxy_tokens_loaded{namespace=~"$namespace"})', "")], 6, 4, 12, "short",
      "Hashed Secrets the proxies know.")
panel("stat", "Index staleness (worst replica)", [t('max(prodgy_proxy_index_staleness_seconds{namespace=~"$namespace"})', "")], 6, 4, 18, "s",
      "Seconds since the worst proxy replica last confirmed its index against the Kubernetes API.")
y += 4
panel("timeseries", "Requests per token", [t(f'sum by (token_namespace, name) (rate(prodgy_proxy_requests_total{{namespace=~"$namespace",{TOK}}}[$__rate_interval]))', "{{token_namespace}}/{{name}}")], 12, 8, 0, "reqps",
      "Requests per second by token, accepted or refused.")
panel("timeseries", "Requests by route group and status", [t(f'sum by (route_group, status_class) (rate({REQ}[$__rate_interval]))', "{{route_group}} {{status_class}}")], 12, 8, 12, "reqps")
y += 8
panel("bargauge", "Usage per token over the range", [t(f'topk(20, sum by (token_namespace, name) (increase(prodgy_proxy_token_accepted_requests_total{{namespace=~"$namespace",{TOK}}}[$__range])))', "{{token_namespace}}/{{name}}", instant=True)], 12, 8, 0, "short",
      "Accepted calls per token in the selected range; status.usage counts the same calls over the token's life.",
      {"options": {"orientation": "horizontal", "displayMode": "gradient", "reduceOptions": {"calcs": ["lastNotNull"], "values": False}}})
panel("timeseries", "Latency seen by the proxy", [
    t('histogram_quantile(0.5, sum by (le) (rate(prodgy_proxy_request_duration_seconds_bucket{namespace=~"$namespace",outcome="forwarded"}[$__rate_interval])))', "p50 forwarded"),
    t('histogram_quantile(0.99, sum by (le) (rate(prodgy_proxy_request_duration_seconds_bucket{namespace=~"$namespace",outcome="forwarded"}[$__rate_interval])))', "p99 forwarded"),
    t('histogram_quantile(0.99, sum by (le) (rate(prodgy_proxy_request_duration_seconds_bucket{namespace=~"$namespace",outcome="rejected"}[$__rate_interval])))', "p99 refused"),
], 12, 8, 12, "s", "Forwarded: the whole request including the API. Refused: the proxy's own decision time.")
y += 8
row("Refusals")
panel("timeseries", "Refusals by reason", [t(f'sum by (reason) (rate({FAIL}[$__rate_interval]))', "{{reason}}")], 12, 8, 0, "reqps",
      "Requests the proxy refused, by the reason in the error body.")
panel("timeseries", "401 / 403 / 429", [
    t(f'sum(rate(prodgy_proxy_auth_failures_total{{namespace=~"$namespace",reason=~"{R401}"}}[$__rate_interval]))', "401"),
    t(f'sum(rate(prodgy_proxy_auth_failures_total{{namespace=~"$namespace",reason=~"{R403}"}}[$__rate_interval]))', "403"),
    t('sum(rate(prodgy_proxy_auth_failures_total{namespace=~"$namespace",reason="rate_limited"}[$__rate_interval]))', "429"),
], 12, 8, 12, "reqps", "401: no valid token (missing, malformed, unknown, inactive, expired, revoked). 403: wrong product or missing scope. 429: rate limited.")
y += 8
row("Tokens")
panel("piechart", "Tokens by phase", [t('sum by (phase) (max by (phase, token_namespace) (prodgy_operator_tokens{namespace=~"$namespace"}))', "{{phase}}", instant=True)], 8, 8, 0, "short",
      "ApiTokens by status.phase, as the operator sees them.",
      {"options": {"reduceOptions": {"calcs": ["lastNotNull"], "values": False}, "legend": {"displayMode": "table", "placement": "right", "values": ["value"]}}})
panel("table", "Tokens expiring soonest", [t('bottomk(20, (max by (token_namespace, name) (prodgy_operator_token_expiry_timestamp_seconds{namespace=~"$namespace"}) - time()) > 0)', "", instant=True, format="table")], 8, 8, 8, "s",
      "Time left before each token with an expiry stops working.")
panel("table", "Last use per token", [t(f'time() - max by (token_namespace, name, product) (prodgy_proxy_token_last_used_timestamp_seconds{{namespace=~"$namespace",{TOK}}})', "", instant=True, format="table")], 8, 8, 16, "s",
      "Time since each token was last accepted by any proxy replica.")
y += 8
panel("timeseries", "Operator reconciles", [
    t('sum by (result) (rate(prodgy_operator_reconciles_total{namespace=~"$namespace"}[$__rate_interval]))', "{{result}}"),
], 16, 7, 0, "ops", "Reconciles per second by result (ok, or the error label).")
panel("stat", "Operator leader", [t('sum(prodgy_operator_leader{namespace=~"$namespace"})', "")], 8, 7, 16, "short",
      "Replicas holding the Lease: 1 is healthy, 0 means nothing reconciles.")

def var(name, query, label, multi=True):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": name}, "definition": query,
            "refresh": 2, "includeAll": True, "multi": multi, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}

dash = {
    "title": "Prodgy API Tokens",
    "uid": "prodgy-api-tokens",
    "description": "Requests and usage per token, refusals by reason, latency, and tokens by phase.",
    "tags": ["prodgy", "api-tokens"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "graphTooltip": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1},
        var("namespace", 'label_values(prodgy_proxy_requests_total, namespace)', "Namespace"),
        var("product", 'label_values(prodgy_proxy_requests_total{namespace=~"$namespace"}, product)', "Product"),
        var("token", 'label_values(prodgy_proxy_token_accepted_requests_total{namespace=~"$namespace",product=~"$product"}, name)', "Token"),
    ]},
    "annotations": {"list": []},
    "panels": panels,
}


def as_promql(expr):
    """Grafana's variables replaced by what they stand for at query time."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__range", "6h")
    return re.sub(r"\$\w+", ".*", expr)


def rules():
    """One recording rule per panel target and per variable's series."""
    out = []
    for p in panels:
        for t in p.get("targets", []):
            out.append({"record": f"dashboard:panel_{p['id']}_{t['refId']}",
                        "expr": as_promql(t["expr"])})
    for v in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.+), *(\w+)\)", v.get("definition", ""))
        if m:
            out.append({"record": f"dashboard:variable_{v['name']}",
                        "expr": f"count by ({m[2]}) ({as_promql(m[1])})"})
    return {"groups": [{"name": "prodgy-dashboard-expressions", "rules": out}]}


if sys.argv[1:] == ["--rules"]:
    print(json.dumps(rules(), indent=2))
else:
    print(json.dumps(dash, indent=2))
