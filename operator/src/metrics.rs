//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` server.
//!
//! Token gauges are computed at scrape time from the leader's ApiToken
//! caches, so they always match the status the operator wrote (a standby
//! replica reports none). Labels are bounded: namespace, name, phase, result
//! and error labels; never a token or a hash.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use kube::runtime::reflector::Store;
use prodgy_crds::{ApiToken, Phase};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tokens: IntGaugeVec,
    expiry: GaugeVec,
    usage_remaining: IntGaugeVec,
    reconciles: IntCounterVec,
    reconcile_errors: IntCounterVec,
    reconcile_duration: HistogramVec,
    status_writes: IntCounterVec,
    secret_writes: IntCounterVec,
    reports_folded: IntCounter,
    reports_retired: IntCounter,
    leader: IntGauge,
    /// The leak-report counters.
    pub leaks: crate::leaks::LeakMetrics,
    sources: Mutex<Vec<Store<ApiToken>>>,
    ready: AtomicBool,
}

impl Metrics {
    /// Registers every metric in a fresh registry. Longer than most
    /// functions here on purpose: it is the one declarative list of the
    /// operator's metrics, names and help text side by side.
    pub fn new() -> Result<Arc<Self>> {
        let registry = Registry::new();
        let m = Self {
            tokens: IntGaugeVec::new(
                Opts::new(
                    "prodgy_operator_tokens",
                    "ApiTokens by namespace and phase.",
                ),
                &["namespace", "phase"],
            )?,
            expiry: GaugeVec::new(
                Opts::new(
                    "prodgy_operator_token_expiry_timestamp_seconds",
                    "spec.expiresAt of each ApiToken that expires and is neither revoked nor deactivated, as a Unix timestamp.",
                ),
                &["namespace", "name"],
            )?,
            usage_remaining: IntGaugeVec::new(
                Opts::new(
                    "prodgy_operator_token_usage_remaining",
                    "Calls left in the current window of each ApiToken with spec.usageLimit (status.usageLimit.remaining).",
                ),
                &["namespace", "name"],
            )?,
            reconciles: IntCounterVec::new(
                Opts::new(
                    "prodgy_operator_reconciles_total",
                    "Reconciles by result (ok or an error label).",
                ),
                &["result"],
            )?,
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "prodgy_operator_reconcile_errors_total",
                    "Failed reconciles by error.",
                ),
                &["error"],
            )?,
            reconcile_duration: HistogramVec::new(
                HistogramOpts::new(
                    "prodgy_operator_reconcile_duration_seconds",
                    "Time spent in one reconcile, by result.",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["result"],
            )?,
            status_writes: IntCounterVec::new(
                Opts::new(
                    "prodgy_operator_status_writes_total",
                    "ApiToken status writes by kind (lifecycle or usage).",
                ),
                &["kind"],
            )?,
            secret_writes: IntCounterVec::new(
                Opts::new(
                    "prodgy_operator_secret_writes_total",
                    "Secret writes by Secret (hashed or delivery) and operation.",
                ),
                &["secret", "op"],
            )?,
            reports_folded: IntCounter::new(
                "prodgy_operator_usage_reports_folded_total",
                "Usage reports folded into an ApiToken's usage ledger (once per token).",
            )?,
            reports_retired: IntCounter::new(
                "prodgy_operator_usage_reports_retired_total",
                "Usage reports deleted after every token folded them.",
            )?,
            leader: IntGauge::new(
                "prodgy_operator_leader",
                "1 while this replica holds the Lease and reconciles.",
            )?,
            leaks: crate::leaks::LeakMetrics::new(&registry)?,
            sources: Mutex::new(Vec::new()),
            ready: AtomicBool::new(false),
            registry,
        };
        m.registry.register(Box::new(m.tokens.clone()))?;
        m.registry.register(Box::new(m.expiry.clone()))?;
        m.registry.register(Box::new(m.usage_remaining.clone()))?;
        m.registry.register(Box::new(m.reconciles.clone()))?;
        m.registry.register(Box::new(m.reconcile_errors.clone()))?;
        m.registry
            .register(Box::new(m.reconcile_duration.clone()))?;
        m.registry.register(Box::new(m.status_writes.clone()))?;
        m.registry.register(Box::new(m.secret_writes.clone()))?;
        m.registry.register(Box::new(m.reports_folded.clone()))?;
        m.registry.register(Box::new(m.reports_retired.clone()))?;
        m.registry.register(Box::new(m.leader.clone()))?;
        Ok(Arc::new(m))
    }

    /// Records one reconcile.
    pub fn reconciled(&self, result: std::result::Result<(), &Error>, took: Duration) {
        let label = match result {
            Ok(()) => "ok",
            Err(e) => {
                self.reconcile_errors
                    .with_label_values(&[e.metric_label()])
                    .inc();
                e.metric_label()
            }
        };
        self.reconciles.with_label_values(&[label]).inc();
        self.reconcile_duration
            .with_label_values(&[label])
            .observe(took.as_secs_f64());
    }

    /// Records a status write.
    pub fn status_written(&self, usage_only: bool) {
        let kind = if usage_only { "usage" } else { "lifecycle" };
        self.status_writes.with_label_values(&[kind]).inc();
    }

    /// Records a Secret write (`secret`: hashed or delivery; `op`: create,
    /// replace or delete).
    pub fn secret_written(&self, secret: &str, op: &str) {
        self.secret_writes.with_label_values(&[secret, op]).inc();
    }

    /// Records reports folded into one token's ledger.
    pub fn folded(&self, n: usize) {
        self.reports_folded.inc_by(n as u64);
    }

    /// Records a deleted report.
    pub fn retired(&self) {
        self.reports_retired.inc();
    }

    /// Leadership changed.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The ApiToken caches the token gauges are computed from (empty when
    /// not reconciling).
    pub fn set_sources(&self, stores: Vec<Store<ApiToken>>) {
        *self.sources.lock().unwrap_or_else(PoisonError::into_inner) = stores;
    }

    /// `/readyz` answers 200 from now on (or 503 again).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String> {
        self.refresh_token_gauges();
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| Error::Metrics(prometheus::Error::Msg(e.to_string())))
    }

    fn refresh_token_gauges(&self) {
        let stores = self
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.tokens.reset();
        self.expiry.reset();
        self.usage_remaining.reset();
        for store in &stores {
            for token in store.state() {
                let ns = token.metadata.namespace.as_deref().unwrap_or_default();
                let name = token.metadata.name.as_deref().unwrap_or_default();
                let phase = token
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .unwrap_or(Phase::Pending);
                self.tokens.with_label_values(&[ns, phase.as_str()]).inc();
                // A revoked or deactivated token cannot be used anyway: an
                // "expiring soon" alert for it would only be noise.
                let usable = !matches!(phase, Phase::Revoked | Phase::Inactive);
                if let Some(at) = token.spec.expires_at.filter(|_| usable) {
                    // Seconds fit an f64 exactly for any plausible date.
                    #[allow(clippy::cast_precision_loss)]
                    let secs = at.timestamp() as f64;
                    self.expiry.with_label_values(&[ns, name]).set(secs);
                }
                if let Some(cap) = token.status.as_ref().and_then(|s| s.usage_limit.as_ref()) {
                    let gauge = self.usage_remaining.with_label_values(&[ns, name]);
                    gauge.set(cap.remaining);
                }
            }
        }
    }
}

/// The ops router: `/metrics`, `/healthz`, `/readyz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

async fn scrape(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    match m.render() {
        Ok(body) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Binds the ops server; returns the bound address and the serving future.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = Result<()>>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Serve {
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Serve {
        addr: addr.to_string(),
        source,
    })?;
    let serve = async move {
        axum::serve(listener, router(metrics))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(|source| Error::Serve {
                addr: bound.to_string(),
                source,
            })
    };
    Ok((bound, serve))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get_path(m: &Arc<Metrics>, path: &str) -> (StatusCode, String) {
        let resp = router(m.clone())
            .oneshot(
                axum::http::Request::builder()
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn endpoints_answer_and_metrics_are_named() {
        let m = Metrics::new().unwrap();
        m.reconciled(Ok(()), Duration::from_millis(3));
        m.reconciled(Err(&Error::Conflict("x".into())), Duration::from_millis(3));
        m.status_written(true);
        m.folded(2);
        assert_eq!(get_path(&m, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get_path(&m, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        m.set_ready(true);
        assert_eq!(get_path(&m, "/readyz").await.0, StatusCode::OK);
        let (status, body) = get_path(&m, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        for needle in [
            "prodgy_operator_reconciles_total{result=\"ok\"} 1",
            "prodgy_operator_reconcile_errors_total{error=\"conflict\"} 1",
            "prodgy_operator_reconcile_duration_seconds_bucket",
            "prodgy_operator_status_writes_total{kind=\"usage\"} 1",
            "prodgy_operator_usage_reports_folded_total 2",
            "prodgy_operator_leader 0",
        ] {
            assert!(body.contains(needle), "missing {needle} in\n{body}");
        }
    }
}
