//! `/metrics`, `/healthz` and `/readyz` on their own port, served by a small
//! pingora HTTP app so probes and scrapes never queue behind proxy traffic.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode, header};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::clock;
use crate::state::State;

/// The ops endpoints.
#[derive(Debug)]
pub struct Ops {
    state: Arc<State>,
}

impl Ops {
    /// Ops endpoints over `state`.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    /// The response for a method and path (pure apart from reading state).
    pub fn answer(&self, method: &str, path: &str) -> (StatusCode, &'static str, Vec<u8>) {
        const JSON: &str = "application/json";
        match (method, path) {
            ("GET" | "HEAD", "/metrics") => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.state
                    .metrics
                    .render(&self.state.index, &self.state.cells, clock::unix_ms())
                    .into_bytes(),
            ),
            ("GET" | "HEAD", "/healthz") => (StatusCode::OK, JSON, br#"{"status":"ok"}"#.to_vec()),
            ("GET" | "HEAD", "/readyz") => {
                let sync = &self.state.index.sync;
                let stale = sync.staleness_secs(clock::unix_ms());
                if sync.ready() {
                    let body = serde_json::json!({
                        "status": "ready",
                        "tokens": self.state.index.records(),
                        "stalenessSeconds": stale,
                    });
                    (StatusCode::OK, JSON, body.to_string().into_bytes())
                } else {
                    let body = serde_json::json!({"error": {
                        "code": "not_synced",
                        "message": "the token index has not completed its first full sync",
                    }});
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        JSON,
                        body.to_string().into_bytes(),
                    )
                }
            }
            (_, "/metrics" | "/healthz" | "/readyz") => (
                StatusCode::METHOD_NOT_ALLOWED,
                JSON,
                br#"{"error":{"code":"method_not_allowed","message":"use GET"}}"#.to_vec(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                JSON,
                br#"{"error":{"code":"not_found","message":"try /metrics, /healthz or /readyz"}}"#
                    .to_vec(),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for Ops {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (status, content_type, body) = self.answer(req.method.as_str(), req.uri.path());
        let len = body.len();
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        resp
    }
}
