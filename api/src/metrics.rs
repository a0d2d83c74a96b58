//! Prometheus metrics of the API, served on the ops listener.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::error::{Error, Result};

/// The API's metrics, in their own registry (no global state, so several
/// apps can live in one test process).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route group, method and status.
    pub requests: IntCounterVec,
    /// Request latency by route group.
    pub latency: HistogramVec,
    /// Finished executions by final status.
    pub executions: IntCounterVec,
    /// Executions in a worker right now (this process).
    pub running: IntGauge,
    /// Bytes received by uploads.
    pub upload_bytes: IntCounterVec,
    /// Open chat streams.
    pub chat_streams: IntGauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Metrics> {
        let registry = Registry::new();
        let m = |e: prometheus::Error| Error::Internal(format!("metrics: {e}"));
        let requests = IntCounterVec::new(
            Opts::new(
                "prodgy_api_requests_total",
                "API requests by route group and status",
            ),
            &["group", "method", "status"],
        )
        .map_err(m)?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "prodgy_api_request_duration_seconds",
                "Time to the response head, by route group",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["group"],
        )
        .map_err(m)?;
        let executions = IntCounterVec::new(
            Opts::new(
                "prodgy_api_executions_total",
                "Executions finished, by status",
            ),
            &["status"],
        )
        .map_err(m)?;
        let running =
            IntGauge::new("prodgy_api_executions_running", "Executions running here").map_err(m)?;
        let upload_bytes = IntCounterVec::new(
            Opts::new("prodgy_api_storage_bytes_total", "Bytes moved by storage"),
            &["direction"],
        )
        .map_err(m)?;
        let chat_streams =
            IntGauge::new("prodgy_api_chat_streams", "Assistant chat streams open").map_err(m)?;
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(executions.clone()),
            Box::new(running.clone()),
            Box::new(upload_bytes.clone()),
            Box::new(chat_streams.clone()),
        ] {
            registry.register(c).map_err(m)?;
        }
        Ok(Metrics {
            registry,
            requests,
            latency,
            executions,
            running,
            upload_bytes,
            chat_streams,
        })
    }

    /// The text exposition, with `extra` lines (gauges read at scrape time).
    pub fn render(&self, extra: &str) -> Result<String> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(|e| Error::Internal(format!("metrics: {e}")))?;
        let mut text = String::from_utf8_lossy(&buf).into_owned();
        text.push_str(extra);
        Ok(text)
    }
}
