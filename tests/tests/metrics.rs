#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real `/metrics` of the operator, the proxy and the API, scraped from
//! the running binaries (the local stack of `prodgy_tests::local`) after
//! they did the work a user would watch: a token issued after a refused
//! write, calls accepted and refused, executions run, files stored and
//! read, usage folded into status. Each scrape must pass `promtool check metrics` (Debian's
//! `prometheus` package), match the metric tables of docs/operator.md,
//! docs/proxy.md and docs/api.md in name, type and labels, and contain
//! every series the chart's alerts and Grafana dashboard query, with every
//! label those queries match on or aggregate by.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use prodgy_tests::cluster::Scenario;
use prodgy_tests::local::{LocalCluster, workspace_root};
use prodgy_tests::wait::{Probe, until};
use serde_json::{Value, json};

/// A metric family: its type and the label names its samples carry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
}

#[tokio::test]
async fn metrics_pass_promtool_match_the_docs_and_cover_alerts_and_dashboard() {
    let local = LocalCluster::start().await.unwrap();
    let s = local.cluster().unwrap().scenario("metrics").await.unwrap();
    let result = exercise(&local, &s).await;
    let scrapes = [
        ("operator", "docs/operator.md", &local.operator_metrics),
        ("proxy", "docs/proxy.md", &local.proxy_metrics),
        ("api", "docs/api.md", &local.api_ops),
    ];
    // Scraped before the scenario's clean-up deletes its tokens: the
    // operator's per-token gauges exist only while the tokens do.
    let mut texts = Vec::new();
    if result.is_ok() {
        for (_, _, base) in &scrapes {
            let text = reqwest::get(format!("{base}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            texts.push(text);
        }
    }
    s.finish(result).await;
    let mut exported = BTreeMap::new();
    let mut problems = Vec::new();
    for ((component, doc, _), text) in scrapes.into_iter().zip(texts) {
        if let Err(e) = promtool_check_metrics(&text) {
            problems.push(format!("{component}: {e:#}"));
        }
        let scraped = families(&text);
        let documented = documented(&std::fs::read_to_string(workspace_root().join(doc)).unwrap());
        problems.extend(compare(component, doc, &scraped, &documented));
        for (name, labels) in sample_labels(&text) {
            exported
                .entry(name)
                .or_insert_with(BTreeSet::new)
                .extend(labels);
        }
    }
    let queries = queries();
    problems.extend(queried_but_not_exported(&queries, &exported));
    problems.extend(labels_not_exported(&queries, &exported));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Makes every series appear: a reconcile that fails (a write refused with
/// 403), an issued token with an expiry, the tour of every resource group
/// (files in and out, executions run), a refused call, usage reported and
/// folded into status.
async fn exercise(local: &LocalCluster, s: &Scenario) -> Result<()> {
    local.server.deny_in(&s.namespace, "create", "secrets");
    let expires = chrono::Utc::now() + chrono::TimeDelta::days(3);
    let at = expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let cap = json!({"requests": 1_000_000, "per": "30d"});
    s.apply_token("watched", json!({"expiresAt": at, "usageLimit": cap}))
        .await?;
    seen(
        &local.operator_metrics,
        "prodgy_operator_reconcile_errors_total{",
    )
    .await?;
    local.server.allow("create", "secrets");
    s.wait_phase(
        "watched",
        prodgy_crds::Phase::Active,
        Duration::from_secs(30),
    )
    .await?;
    let token = s.delivered_token("watched").await?;
    // Every resource group: files in and out, executions queued and run.
    let steps = prodgy_tests::tour::tour(s.caller(), &token).await?;
    let bad = s.caller().get("/api/agent-base", "not-a-token").await?;
    ensure!(bad.status == 401, "a malformed token got {}", bad.status);
    seen(&local.api_ops, "prodgy_api_executions_total{").await?;
    until(
        "usage folded into status",
        Duration::from_secs(40),
        Duration::from_millis(200),
        || async {
            let usage = s
                .tokens()
                .get("watched")
                .await?
                .status
                .map_or(0, |st| st.usage);
            Ok(if usage >= i64::try_from(steps.len())? {
                Probe::Done(())
            } else {
                Probe::NotYet(format!("usage {usage} of {} calls", steps.len()))
            })
        },
    )
    .await
}

/// Waits until the `/metrics` under `base` contain `what`.
async fn seen(base: &str, what: &str) -> Result<()> {
    until(
        &format!("{what} in {base}/metrics"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let text = reqwest::get(format!("{base}/metrics"))
                .await?
                .text()
                .await?;
            Ok(if text.contains(what) {
                Probe::Done(())
            } else {
                Probe::NotYet("not yet".into())
            })
        },
    )
    .await
}

/// `promtool check metrics` on the exposition text: parse errors and lint
/// findings (missing HELP, counters without `_total`, bad units) fail.
fn promtool_check_metrics(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package `prometheus`; .ci/run installs it)")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Families from `# TYPE` lines, with the label names of their samples
/// (`le` and `quantile` belong to the type, not to the family).
fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                out.insert(
                    name.to_owned(),
                    Family {
                        kind: kind.to_owned(),
                        labels: BTreeSet::new(),
                    },
                );
            }
        }
    }
    for sample in prodgy_tests::metrics::Scrape::parse(text).samples {
        let family = ["_bucket", "_sum", "_count", ""]
            .iter()
            .filter_map(|suffix| sample.name.strip_suffix(suffix))
            .find(|base| out.contains_key(*base));
        if let Some(f) = family.and_then(|base| out.get_mut(base)) {
            f.labels.extend(
                sample
                    .labels
                    .into_keys()
                    .filter(|k| k != "le" && k != "quantile"),
            );
        }
    }
    out
}

/// Every sample name with the label names its samples carry.
fn sample_labels(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sample in prodgy_tests::metrics::Scrape::parse(text).samples {
        out.entry(sample.name)
            .or_default()
            .extend(sample.labels.into_keys());
    }
    out
}

/// The `| metric | type | labels |` table of a component doc: label names
/// are the backticked words of the third column outside parentheses (which
/// hold example values); `—` means none.
fn documented(doc: &str) -> BTreeMap<String, Family> {
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with("`prodgy_") {
            continue;
        }
        let name = cells[1].trim_matches('`').to_owned();
        let mut depth = 0usize;
        let outside: String = cells[3]
            .chars()
            .filter(|c| {
                match c {
                    '(' => depth += 1,
                    ')' => depth = depth.saturating_sub(1),
                    _ => return depth == 0,
                }
                false
            })
            .collect();
        let labels = outside
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        out.insert(
            name,
            Family {
                kind: cells[2].to_owned(),
                labels,
            },
        );
    }
    out
}

fn compare(
    component: &str,
    doc: &str,
    scraped: &BTreeMap<String, Family>,
    documented: &BTreeMap<String, Family>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, got) in scraped {
        match documented.get(name) {
            None => problems.push(format!(
                "{component} exports {name} ({got:?}), {doc} lacks it"
            )),
            Some(want) if want != got => problems.push(format!(
                "{component} exports {name} as {got:?}, {doc} says {want:?}"
            )),
            Some(_) => {}
        }
    }
    for name in documented.keys().filter(|n| !scraped.contains_key(*n)) {
        problems.push(format!(
            "{doc} documents {name}, {component} does not export it"
        ));
    }
    problems
}

/// Every query of the chart, with where it is: each alert's expression
/// (Helm's release-namespace matcher filled in) and each dashboard panel
/// target and variable.
fn queries() -> Vec<(String, String)> {
    let root = workspace_root();
    let rules = std::fs::read_to_string(
        root.join("charts/prodgy/templates/monitoring/prometheusrule.yaml"),
    )
    .unwrap();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("charts/prodgy/dashboards/prodgy-api-tokens.json"))
            .unwrap(),
    )
    .unwrap();
    let mut queries = rule_exprs(&rules);
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                format!("dashboard panel {}", panel["title"]),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            queries.push((format!("dashboard variable {}", v["name"]), q.to_owned()));
        }
    }
    queries
}

/// The `expr: |` blocks of the PrometheusRule template, by alert.
fn rule_exprs(template: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let (mut alert, mut indent) = (String::new(), None);
    for line in template.lines() {
        let depth = line.len() - line.trim_start().len();
        match indent {
            Some(d) if depth > d || line.trim().is_empty() => {
                let expr = line.replace("{{- $ns -}}", "namespace=\"prodgy\"");
                out.last_mut().unwrap().1.push_str(&format!("{expr}\n"));
                continue;
            }
            _ => indent = None,
        }
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            alert = name.to_owned();
        } else if line.trim() == "expr: |" {
            indent = Some(depth);
            out.push((format!("alert {alert}"), String::new()));
        }
    }
    out
}

/// Series the PrometheusRule and the dashboard name that no binary exported.
fn queried_but_not_exported(
    queries: &[(String, String)],
    exported: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (place, text) in queries {
        for name in series_names(text) {
            if !exported.contains_key(&name) {
                problems.push(format!("{place} queries {name}, which no binary exports"));
            }
        }
    }
    problems
}

/// The labels Prometheus adds to every series it scrapes through a
/// ServiceMonitor (the target's).
const TARGET_LABELS: [&str; 7] = [
    "namespace",
    "service",
    "pod",
    "container",
    "endpoint",
    "job",
    "instance",
];

/// A series' label names as Prometheus stores them when it scrapes the
/// chart's ServiceMonitors: the target's labels added; an exported label
/// of the same name kept as `exported_<name>`, which the ServiceMonitor
/// renames for `namespace` (the token's) to `token_namespace`.
fn as_stored(exported: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = TARGET_LABELS.iter().map(|l| (*l).to_owned()).collect();
    for label in exported {
        out.insert(match label.as_str() {
            "namespace" => "token_namespace".to_owned(),
            l if TARGET_LABELS.contains(&l) => format!("exported_{l}"),
            l => l.to_owned(),
        });
    }
    out
}

/// Labels the queries match on or aggregate by that the series they apply
/// to do not carry as stored (series no binary exports are reported by
/// [`queried_but_not_exported`]).
fn labels_not_exported(
    queries: &[(String, String)],
    exported: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let monitor = std::fs::read_to_string(
        workspace_root().join("charts/prodgy/templates/monitoring/servicemonitor.yaml"),
    )
    .unwrap();
    let mut problems = Vec::new();
    if !(monitor.contains("sourceLabels: [exported_namespace]")
        && monitor.contains("targetLabel: token_namespace"))
    {
        problems.push("the ServiceMonitor no longer renames exported_namespace to token_namespace, as as_stored() assumes".to_owned());
    }
    for (place, text) in queries {
        for (label, series) in label_uses(text) {
            for name in &series {
                let Some(stored) = exported.get(name).map(as_stored) else {
                    continue;
                };
                if !stored.contains(&label) {
                    problems.push(format!(
                        "{place} uses the label {label} of {name}, which carries only {stored:?}"
                    ));
                }
            }
        }
    }
    problems
}

/// A query's tokens: identifiers, quoted strings (their text dropped) and
/// every other character but blanks on its own (`=~` is `=` then `~`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str,
    Punct(char),
}

fn tokens(text: &str) -> Vec<Tok> {
    let is_ident = |c: &char| c.is_ascii_alphanumeric() || *c == '_' || *c == ':';
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_alphabetic() || c == '_' {
            let mut ident = c.to_string();
            while let Some(n) = chars.next_if(is_ident) {
                ident.push(n);
            }
            out.push(Tok::Ident(ident));
        } else if matches!(c, '"' | '\'' | '`') {
            while let Some(n) = chars.next() {
                if n == '\\' {
                    chars.next();
                } else if n == c {
                    break;
                }
            }
            out.push(Tok::Str);
        } else if !c.is_whitespace() {
            out.push(Tok::Punct(c));
        }
    }
    out
}

/// The index of the bracket that closes the one at `open`.
fn closing(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Punct('(' | '{' | '[') => depth += 1,
            Tok::Punct(')' | '}' | ']') => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return i;
        }
    }
    panic!("unbalanced brackets in {toks:?}")
}

/// The index of the bracket that opens the one at `close`.
fn opening(toks: &[Tok], close: usize) -> usize {
    let mut depth = 0usize;
    for i in (0..=close).rev() {
        match toks[i] {
            Tok::Punct(')' | '}' | ']') => depth += 1,
            Tok::Punct('(' | '{' | '[') => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return i;
        }
    }
    panic!("unbalanced brackets in {toks:?}")
}

fn idents(toks: &[Tok]) -> Vec<String> {
    toks.iter()
        .filter_map(|t| match t {
            Tok::Ident(l) => Some(l.clone()),
            _ => None,
        })
        .collect()
}

/// A label name and the series that must carry it.
type LabelUse = (String, BTreeSet<String>);

/// The label names a query relies on, each with the series that must carry
/// it: the matchers of a `prodgy_…{…}` selector; the `by (…)` or
/// `without (…)` labels of an aggregation, and the label of Grafana's
/// `label_values(series, label)`, over every series in their argument.
fn label_uses(text: &str) -> Vec<LabelUse> {
    let toks = tokens(text);
    let mut out = Vec::new();
    for (i, tok) in toks.iter().enumerate() {
        match tok {
            Tok::Ident(w) if w.starts_with("prodgy_") => out.extend(matcher_uses(&toks, i)),
            Tok::Ident(w) if w == "by" || w == "without" => out.extend(grouping_uses(&toks, i)),
            Tok::Ident(w) if w == "label_values" => out.extend(label_values_use(&toks, i)),
            _ => {}
        }
    }
    out
}

fn opens(toks: &[Tok], i: usize, c: char) -> bool {
    toks.get(i) == Some(&Tok::Punct(c))
}

fn series_in(toks: &[Tok]) -> BTreeSet<String> {
    idents(toks)
        .into_iter()
        .filter(|n| n.starts_with("prodgy_"))
        .collect()
}

/// `series{label="…", …}` at `i`: each matched label, on that series.
fn matcher_uses(toks: &[Tok], i: usize) -> Vec<LabelUse> {
    let (Tok::Ident(series), true) = (&toks[i], opens(toks, i + 1, '{')) else {
        return Vec::new();
    };
    let end = closing(toks, i + 1);
    toks[i + 2..end]
        .windows(2)
        .filter_map(|pair| match pair {
            [Tok::Ident(label), Tok::Punct('=' | '!')] => {
                Some((label.clone(), BTreeSet::from([series.clone()])))
            }
            _ => None,
        })
        .collect()
}

/// `by (…)` or `without (…)` at `i`, before its argument (`sum by (l)
/// (arg)`) or after it (`sum (arg) by (l)`): each label, on every series of
/// the argument.
fn grouping_uses(toks: &[Tok], i: usize) -> Vec<LabelUse> {
    if !opens(toks, i + 1, '(') {
        return Vec::new();
    }
    let end = closing(toks, i + 1);
    let arg = if opens(toks, end + 1, '(') {
        end + 1..closing(toks, end + 1)
    } else {
        opening(toks, i - 1)..i
    };
    let over = series_in(&toks[arg]);
    idents(&toks[i + 2..end])
        .into_iter()
        .map(|l| (l, over.clone()))
        .collect()
}

/// Grafana's `label_values(series, label)` at `i`.
fn label_values_use(toks: &[Tok], i: usize) -> Vec<LabelUse> {
    if !opens(toks, i + 1, '(') {
        return Vec::new();
    }
    let args = &toks[i + 2..closing(toks, i + 1)];
    match args {
        [.., Tok::Punct(','), Tok::Ident(label)] => vec![(label.clone(), series_in(args))],
        _ => Vec::new(),
    }
}

/// Every `prodgy_…` identifier in a query.
fn series_names(text: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("prodgy_") {
        let preceded = rest[..i].chars().next_back().is_some_and(is_ident);
        let tail = &rest[i..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        if !preceded {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_docs_table_parser_reads_names_types_and_labels() {
    let doc = "| metric | type | labels |\n|---|---|---|\n\
        | `prodgy_x_total` | counter | `result` (`ok` or an error label), `kind` |\n\
        | `prodgy_y` | gauge | — |\n";
    let d = documented(doc);
    assert_eq!(d.len(), 2);
    assert_eq!(d["prodgy_x_total"].kind, "counter");
    assert_eq!(
        d["prodgy_x_total"].labels,
        BTreeSet::from(["result".to_owned(), "kind".to_owned()])
    );
    assert!(d["prodgy_y"].labels.is_empty());
    assert_eq!(
        series_names("sum(rate(prodgy_a_total{x=\"y\"}[5m])) / prodgy_c_bucket"),
        BTreeSet::from(["prodgy_a_total".to_owned(), "prodgy_c_bucket".to_owned()])
    );
}

#[test]
fn label_uses_reads_matchers_aggregations_and_label_values() {
    let uses = |q: &str| -> Vec<(String, Vec<String>)> {
        label_uses(q)
            .into_iter()
            .map(|(l, s)| (l, s.into_iter().collect()))
            .collect()
    };
    let one = |l: &str, s: &str| (l.to_owned(), vec![s.to_owned()]);
    assert_eq!(
        uses(
            r#"sum by (le, pod) (rate(prodgy_a_bucket{ns=~"$x",r!="a}b"}[5m])) / sum(prodgy_b) without (c)"#
        ),
        vec![
            one("le", "prodgy_a_bucket"),
            one("pod", "prodgy_a_bucket"),
            one("ns", "prodgy_a_bucket"),
            one("r", "prodgy_a_bucket"),
            one("c", "prodgy_b"),
        ]
    );
    assert_eq!(
        uses(r#"label_values(prodgy_c{namespace=~"$n"}, product)"#),
        vec![one("product", "prodgy_c"), one("namespace", "prodgy_c")]
    );
    let stored = as_stored(&BTreeSet::from(["namespace".to_owned(), "pod".to_owned()]));
    assert!(stored.contains("token_namespace") && stored.contains("exported_pod"));
    let exprs = rule_exprs(
        "        - alert: A\n          expr: |\n            sum(x{ {{- $ns -}} })\n          for: 5m\n",
    );
    assert_eq!(
        exprs,
        vec![(
            "alert A".to_owned(),
            "            sum(x{ namespace=\"prodgy\" })\n".to_owned()
        )]
    );
}

#[test]
fn promtool_refuses_bad_exposition_text() {
    promtool_check_metrics(
        "# HELP prodgy_ok_total fine\n# TYPE prodgy_ok_total counter\nprodgy_ok_total 1\n",
    )
    .unwrap();
    // A counter without `_total` and without HELP: promtool's lint says so.
    let err =
        promtool_check_metrics("# TYPE prodgy_requests counter\nprodgy_requests 1\n").unwrap_err();
    assert!(format!("{err:#}").contains("prodgy_requests"), "{err:#}");
}
