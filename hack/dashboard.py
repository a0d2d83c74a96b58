#!/usr/bin/env python3
"""Prints the Grafana dashboard shipped by the chart
(charts/prodgy/dashboards/prodgy-api-tokens.json).

Edit the panels here, then regenerate:

    python3 hack/dashboard.py > charts/prodgy/dashboards/prodgy-api-tokens.json

hack/check-chart.sh fails when the committed JSON differs from this output.
The metric names are those the proxy and the operator export (docs/deployment.md
lists them).
"""

import json

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'namespace=~"$namespace",product=~"$product"'
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

row("Traffic")
panel("stat", "Requests/s", [t(f'sum(rate(prodgy_proxy_requests_total{{{SEL}}}[$__rate_interval]))', "")], 6, 4, 0, "reqps",
      "Every request the proxies answered, accepted or not.")
panel("stat", "Accepted share", [t(f'sum(rate(prodgy_proxy_requests_total{{{SEL},code!~"401|403|429"}}[$__rate_interval])) / sum(rate(prodgy_proxy_requests_total{{{SEL}}}[$__rate_interval]))', "")], 6, 4, 6, "percentunit",
      "Share of requests not refused by the proxy (401, 403, 429).")
panel("stat", "Tokens in the proxy index", [t('max(prodgy_proxy_index_tokens{namespace=~"$namespace"})', "")], 6, 4, 12, "short",
      "Hashed Secrets the proxies know.")
panel("stat", "Index staleness (worst replica)", [t('max(prodgy_proxy_index_staleness_seconds{namespace=~"$namespace"})', "")], 6, 4, 18, "s",
      "Seconds since the oldest proxy replica last heard from the Kubernetes API.")
y += 4
panel("timeseries", "Requests per token", [t(f'sum by (token) (rate(prodgy_proxy_requests_total{{{SEL},token=~"$token"}}[$__rate_interval]))', "{{token}}")], 12, 8, 0, "reqps",
      "Requests per second by token (namespace/name).")
panel("timeseries", "Requests by route group and status", [t(f'sum by (group, code) (rate(prodgy_proxy_requests_total{{{SEL},token=~"$token"}}[$__rate_interval]))', "{{group}} {{code}}")], 12, 8, 12, "reqps")
y += 8
panel("bargauge", "Usage per token over the range", [t(f'topk(20, sum by (token) (increase(prodgy_proxy_requests_total{{{SEL},token=~"$token",code!~"401|403|429"}}[$__range])))', "{{token}}", instant=True)], 12, 8, 0, "short",
      "Accepted calls per token in the selected time range (status.usage counts the same calls, all time).",
      {"options": {"orientation": "horizontal", "displayMode": "gradient", "reduceOptions": {"calcs": ["lastNotNull"], "values": False}}})
panel("timeseries", "Latency (proxy, end to end)", [
    t(f'histogram_quantile(0.5, sum by (le) (rate(prodgy_proxy_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p50"),
    t(f'histogram_quantile(0.95, sum by (le) (rate(prodgy_proxy_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p95"),
    t(f'histogram_quantile(0.99, sum by (le) (rate(prodgy_proxy_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p99"),
], 12, 8, 12, "s", "Request duration seen by the proxy, including the API.")
y += 8
row("Refusals")
panel("timeseries", "401 / 403 / 429 by reason", [t('sum by (reason) (rate(prodgy_proxy_auth_failures_total{namespace=~"$namespace"}[$__rate_interval]))', "{{reason}}")], 12, 8, 0, "reqps",
      "Refused requests by reason: 401 (missing, malformed, unknown, inactive, expired, revoked), 403 (wrong product, missing scope), 429 (rate limited).")
panel("timeseries", "Refusals by status code", [t(f'sum by (code) (rate(prodgy_proxy_requests_total{{{SEL},code=~"401|403|429"}}[$__rate_interval]))', "{{code}}")], 12, 8, 12, "reqps")
y += 8
row("Tokens")
panel("piechart", "Tokens by phase", [t('sum by (phase) (max by (phase, pod) (prodgy_operator_tokens{namespace=~"$namespace"}))', "{{phase}}", instant=True)], 8, 8, 0, "short",
      "ApiTokens by status.phase, as the operator sees them.",
      {"options": {"reduceOptions": {"calcs": ["lastNotNull"], "values": False}, "legend": {"displayMode": "table", "placement": "right", "values": ["value"]}}})
panel("table", "Tokens expiring soonest", [t('bottomk(20, (max by (token_namespace, token_name, product) (prodgy_operator_token_expiry_timestamp_seconds{namespace=~"$namespace"}) - time()) > 0)', "", instant=True, format="table")], 16, 8, 8, "s",
      "Time left before each token with an expiry stops working.")
y += 8
panel("timeseries", "Operator reconciles", [
    t('sum by (result) (rate(prodgy_operator_reconciles_total{namespace=~"$namespace"}[$__rate_interval]))', "{{result}}"),
    t('sum(rate(prodgy_operator_reconcile_errors_total{namespace=~"$namespace"}[$__rate_interval]))', "errors"),
], 24, 7, 0, "ops")

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
        var("token", 'label_values(prodgy_proxy_requests_total{namespace=~"$namespace",product=~"$product"}, token)', "Token"),
    ]},
    "annotations": {"list": []},
    "panels": panels,
}
print(json.dumps(dash, indent=2))
