//! Prometheus metrics, kept in atomics and rendered in the text exposition
//! format at scrape time.
//!
//! The hot path touches no map and no lock: global counters are striped per
//! worker thread (summed when scraped), per-token counters live in the
//! token's [`TokenCell`](crate::cells::TokenCell). Requests without a known
//! token are counted with empty token labels, so an attacker spraying random
//! tokens cannot grow the label set.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prodgy_crds::RouteGroup;

use crate::auth::Reason;
use crate::cells::{Cells, RequestCounts, STATUS_CLASSES, TokenCell, group_index, status_class};
use crate::index::Index;

/// Upper bounds of the latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const STRIPES: usize = 8;
const CLASS_LABELS: [&str; STATUS_CLASSES] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Whether a request reached the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent upstream (whatever the upstream answered).
    Forwarded,
    /// Answered by the proxy itself.
    Rejected,
}

/// Kinds of upstream failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// Could not connect.
    Connect,
    /// Timed out reading or writing.
    Timeout,
    /// Anything else while proxying.
    Other,
}

impl UpstreamError {
    const ALL: [UpstreamError; 3] = [
        UpstreamError::Connect,
        UpstreamError::Timeout,
        UpstreamError::Other,
    ];
    const fn label(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Other => "other",
        }
    }
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    anonymous: RequestCounts,
    failures: [AtomicU64; Reason::ALL.len()],
    latency: [Histogram; 2],
    upstream: [AtomicU64; 3],
}

/// Every process-wide metric.
pub struct Metrics {
    stripes: Box<[Stripe]>,
    reports_written: AtomicU64,
    report_errors: AtomicU64,
    started_ms: i64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            reports_written: AtomicU64::new(0),
            report_errors: AtomicU64::new(0),
            started_ms: crate::clock::unix_ms(),
        }
    }
}

/// Requests in flight, striped so the hot path does not share one line.
static IN_FLIGHT: [PaddedI64; STRIPES] = [const { PaddedI64(AtomicI64::new(0)) }; STRIPES];

#[repr(align(128))]
struct PaddedI64(AtomicI64);

/// Requests currently inside the proxy (from the request header until its
/// context is dropped after `logging`), for the drain on shutdown and the metric.
pub fn in_flight() -> i64 {
    IN_FLIGHT.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
}

/// Counts a request for as long as it lives.
#[derive(Debug)]
pub struct InFlight(&'static AtomicI64);

impl InFlight {
    /// Starts counting a request.
    pub fn start() -> Self {
        let c = &IN_FLIGHT[stripe_index()].0;
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    MINE.with(|i| *i)
}

impl Metrics {
    fn stripe(&self) -> &Stripe {
        &self.stripes[stripe_index()]
    }

    /// A request finished. `token_known` says whether its counts went to a
    /// token cell; otherwise they go to the anonymous counters here.
    pub fn request_finished(
        &self,
        group: RouteGroup,
        status: u16,
        token_known: bool,
        outcome: Outcome,
        rejected: Option<Reason>,
        elapsed: Duration,
    ) {
        let s = self.stripe();
        if !token_known {
            s.anonymous[group_index(group)][status_class(status)].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(r) = rejected {
            s.failures[r.index()].fetch_add(1, Ordering::Relaxed);
        }
        let h = &s.latency[outcome as usize];
        let secs = elapsed.as_secs_f64();
        if let Some(b) = LATENCY_BUCKETS.iter().position(|&le| secs <= le) {
            h.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        h.sum_ns.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        h.count.fetch_add(1, Ordering::Relaxed);
    }

    /// An upstream failure.
    pub fn upstream_error(&self, kind: UpstreamError) {
        self.stripe().upstream[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A usage-report write finished.
    pub fn report_written(&self, ok: bool) {
        let c = if ok {
            &self.reports_written
        } else {
            &self.report_errors
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn sum<F: Fn(&Stripe) -> u64>(&self, f: F) -> u64 {
        self.stripes.iter().map(f).sum()
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self, index: &Index, cells: &Cells, now_ms: i64) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let all = cells.snapshot();
        self.render_requests(&mut out, &all);
        render_token_usage(&mut out, &all);
        self.render_refusals(&mut out);
        self.render_latency(&mut out);
        self.render_index(&mut out, index, now_ms);
        self.render_reports(&mut out);
        out
    }

    /// Requests by token, product, route group and status class.
    fn render_requests(&self, out: &mut String, all: &[Arc<TokenCell>]) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        header(
            out,
            "prodgy_proxy_requests_total",
            "counter",
            "Requests by token, product, route group and status class (empty token labels: no known token).",
        );
        for (g, group) in RouteGroup::ALL.iter().enumerate() {
            for (c, class) in CLASS_LABELS.iter().enumerate() {
                let v = self.sum(|s| load(&s.anonymous[g][c]));
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "prodgy_proxy_requests_total{{namespace=\"\",name=\"\",product=\"\",route_group=\"{}\",status_class=\"{class}\"}} {v}",
                        group.as_str()
                    );
                }
            }
        }
        for cell in all {
            for (g, group) in RouteGroup::ALL.iter().enumerate() {
                for (c, class) in CLASS_LABELS.iter().enumerate() {
                    let v = load(&cell.requests()[g][c]);
                    if v > 0 {
                        let _ = writeln!(
                            out,
                            "prodgy_proxy_requests_total{{namespace=\"{}\",name=\"{}\",product=\"{}\",route_group=\"{}\",status_class=\"{class}\"}} {v}",
                            esc(cell.namespace()),
                            esc(cell.name()),
                            esc(cell.product().name()),
                            group.as_str()
                        );
                    }
                }
            }
        }
    }

    /// Refusals by reason and upstream failures by kind.
    fn render_refusals(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        header(
            out,
            "prodgy_proxy_auth_failures_total",
            "counter",
            "Refused requests by reason.",
        );
        for r in Reason::ALL {
            let v = self.sum(|s| load(&s.failures[r.index()]));
            let _ = writeln!(
                out,
                "prodgy_proxy_auth_failures_total{{reason=\"{}\"}} {v}",
                r.code()
            );
        }

        header(
            out,
            "prodgy_proxy_upstream_errors_total",
            "counter",
            "Failures talking to the upstream, by kind.",
        );
        for k in UpstreamError::ALL {
            let v = self.sum(|s| load(&s.upstream[k as usize]));
            let _ = writeln!(
                out,
                "prodgy_proxy_upstream_errors_total{{kind=\"{}\"}} {v}",
                k.label()
            );
        }
    }

    /// The latency histogram, by outcome.
    fn render_latency(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        header(
            out,
            "prodgy_proxy_request_duration_seconds",
            "histogram",
            "Time from request header to end of response, by outcome.",
        );
        for (o, label) in ["forwarded", "rejected"].iter().enumerate() {
            let mut cumulative = 0;
            for (b, le) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += self.sum(|s| load(&s.latency[o].buckets[b]));
                let _ = writeln!(
                    out,
                    "prodgy_proxy_request_duration_seconds_bucket{{outcome=\"{label}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let count = self.sum(|s| load(&s.latency[o].count));
            let sum = self.sum(|s| load(&s.latency[o].sum_ns)) as f64 / 1e9;
            let _ = writeln!(
                out,
                "prodgy_proxy_request_duration_seconds_bucket{{outcome=\"{label}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "prodgy_proxy_request_duration_seconds_sum{{outcome=\"{label}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "prodgy_proxy_request_duration_seconds_count{{outcome=\"{label}\"}} {count}"
            );
        }
    }

    /// The usage reports written and failed.
    fn render_reports(&self, out: &mut String) {
        counter(
            out,
            "prodgy_proxy_usage_reports_written_total",
            "UsageReport objects written.",
            self.reports_written.load(Ordering::Relaxed),
        );
        counter(
            out,
            "prodgy_proxy_usage_report_errors_total",
            "Failed UsageReport writes.",
            self.report_errors.load(Ordering::Relaxed),
        );
    }

    /// In-flight requests and the index.
    fn render_index(&self, out: &mut String, index: &Index, now_ms: i64) {
        gauge(
            out,
            "prodgy_proxy_in_flight_requests",
            "Requests being handled.",
            in_flight() as f64,
        );
        gauge(
            out,
            "prodgy_proxy_tokens_loaded",
            "Tokens in the index.",
            index.records() as f64,
        );
        gauge(
            out,
            "prodgy_proxy_token_digests_loaded",
            "Accepted digests in the index (current and superseded in grace).",
            index.digests() as f64,
        );
        gauge(
            out,
            "prodgy_proxy_index_ready",
            "1 once the first full sync of the token source completed.",
            f64::from(u8::from(index.sync.ready())),
        );
        let last = index.sync.last_sync_ms();
        gauge(
            out,
            "prodgy_proxy_index_last_sync_timestamp_seconds",
            "Last time the index was known to match its source, unix seconds (0: never).",
            last.unwrap_or(0) as f64 / 1000.0,
        );
        let stale = index
            .sync
            .staleness_secs(now_ms)
            .unwrap_or((now_ms - self.started_ms).max(0) as f64 / 1000.0);
        gauge(
            out,
            "prodgy_proxy_index_staleness_seconds",
            "Seconds since the index was last known to match its source (since start when never synced).",
            stale,
        );
        let (invalid_total, invalid_now, source_errors, full_syncs) = index.sync.counters();
        counter(
            out,
            "prodgy_proxy_index_invalid_records_total",
            "Records skipped as invalid.",
            invalid_total,
        );
        gauge(
            out,
            "prodgy_proxy_index_invalid_records",
            "Source objects currently skipped as invalid.",
            invalid_now as f64,
        );
        counter(
            out,
            "prodgy_proxy_index_source_errors_total",
            "Failed reads of the token source (watch errors, unreadable files).",
            source_errors,
        );
        counter(
            out,
            "prodgy_proxy_index_full_syncs_total",
            "Complete loads of the token source (first sync, relists, file reloads).",
            full_syncs,
        );
    }
}

/// Per-token usage: accepted requests and last use.
fn render_token_usage(out: &mut String, all: &[Arc<TokenCell>]) {
    header(
        out,
        "prodgy_proxy_token_accepted_requests_total",
        "counter",
        "Requests forwarded upstream per token since this process started (the usage reported to the operator).",
    );
    header(
        out,
        "prodgy_proxy_token_last_used_timestamp_seconds",
        "gauge",
        "Last forwarded request per token, unix seconds.",
    );
    for cell in all {
        let (count, last) = cell.usage();
        if count > 0 {
            let labels = format!(
                "namespace=\"{}\",name=\"{}\",product=\"{}\"",
                esc(cell.namespace()),
                esc(cell.name()),
                esc(cell.product().name())
            );
            let _ = writeln!(
                out,
                "prodgy_proxy_token_accepted_requests_total{{{labels}}} {count}"
            );
            let _ = writeln!(
                out,
                "prodgy_proxy_token_last_used_timestamp_seconds{{{labels}}} {}",
                last as f64 / 1000.0
            );
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}

/// Escapes a label value (backslash, double quote, newline).
fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\\', '"', '\n']) {
        s.replace('\\', r"\\")
            .replace('"', "\\\"")
            .replace('\n', r"\n")
            .into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_every_thread_are_summed_and_rendered() {
        let m = Arc::new(Metrics::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        m.request_finished(
                            RouteGroup::Agents,
                            401,
                            false,
                            Outcome::Rejected,
                            Some(Reason::UnknownToken),
                            Duration::from_micros(300),
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        m.upstream_error(UpstreamError::Connect);
        let text = m.render(
            &Index::default(),
            &Cells::default(),
            crate::clock::unix_ms(),
        );
        assert!(text.contains(
            r#"prodgy_proxy_requests_total{namespace="",name="",product="",route_group="agents",status_class="4xx"} 400"#
        ), "{text}");
        assert!(text.contains(r#"prodgy_proxy_auth_failures_total{reason="unknown_token"} 400"#));
        assert!(text.contains(r#"prodgy_proxy_auth_failures_total{reason="revoked_token"} 0"#));
        assert!(text.contains(
            r#"prodgy_proxy_request_duration_seconds_bucket{outcome="rejected",le="0.0005"} 400"#
        ));
        assert!(
            text.contains(r#"prodgy_proxy_request_duration_seconds_count{outcome="rejected"} 400"#)
        );
        assert!(text.contains(r#"prodgy_proxy_upstream_errors_total{kind="connect"} 1"#));
        assert!(text.contains("prodgy_proxy_in_flight_requests 0"));
        assert!(text.contains("prodgy_proxy_index_ready 0"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(esc("plain"), "plain");
    }
}
