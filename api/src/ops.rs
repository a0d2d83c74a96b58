//! The ops listener: liveness, readiness and Prometheus metrics. It holds no
//! product data, so it may listen on every interface for kubelet probes.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::AppState;

/// The ops router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if let Err(e) = state.db.ping().await {
        tracing::warn!(error = %e, "not ready: database");
        return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response();
    }
    if let Err(e) = state.blobs.check().await {
        tracing::warn!(error = %e, "not ready: object store");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "object store unreachable\n",
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    // Queue depth is read at scrape time: it is shared by every replica.
    let mut extra = String::from(
        "# HELP prodgy_api_executions Executions in the database by status (all replicas).\n\
         # TYPE prodgy_api_executions gauge\n",
    );
    match sqlx::query_as::<_, (String, i64)>(
        "SELECT status, COUNT(*) FROM executions GROUP BY status",
    )
    .fetch_all(&state.db.pool)
    .await
    {
        Ok(rows) => {
            for status in ["queued", "running", "succeeded", "failed"] {
                let n = rows
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0, |(_, n)| *n);
                extra.push_str(&format!(
                    "prodgy_api_executions{{status=\"{status}\"}} {n}\n"
                ));
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: could not count executions"),
    }
    match state.metrics.render(&extra) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => e.into_response(),
    }
}
