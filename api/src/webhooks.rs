//! Webhook events: `POST /api/webhook/<path>` stores the event and queues an
//! execution for every enabled `webhook` trigger of the product whose path
//! equals `<path>`; the event (any JSON) is the execution's input.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{Error, ErrorBody, Result};
use crate::extract::{ApiPath, read_limited};
use crate::identity::Caller;
use crate::ids::{new_id, now_ms, rfc3339};
use crate::queue;
use crate::state::AppState;
use crate::triggers::normalize_path;

/// What a webhook event started.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventAccepted {
    /// Id of the stored event, `evt_…`.
    pub event_id: String,
    /// Normalised path.
    pub path: String,
    /// When it was received.
    pub received_at: String,
    /// One per matching trigger.
    pub executions: Vec<StartedExecution>,
}

/// An execution queued by an event.
#[derive(Debug, Serialize, ToSchema)]
pub struct StartedExecution {
    /// Execution id.
    pub id: String,
    /// Its trigger.
    pub trigger_id: String,
    /// Its agent.
    pub agent_id: String,
    /// `queued`.
    pub status: String,
}

/// Send an event.
#[utoipa::path(post, operation_id = "webhooks_send", path = "/api/webhook/{path}", tag = "webhooks",
    params(("path" = String, Path, description = "Event path, may contain `/`, e.g. `github/push`")),
    request_body(content = Object, description = "Any JSON value, at most --max-webhook-bytes"),
    responses((status = 202, body = EventAccepted), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(path): ApiPath<String>,
    body: Body,
) -> Result<(StatusCode, Json<EventAccepted>)> {
    let path = normalize_path(&path).map_err(|m| Error::invalid("path", m))?;
    let bytes = read_limited(body, state.config.limits.max_webhook_bytes).await?;
    let event: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::BadJson(format!("the event must be JSON: {e}")))?;
    let now = now_ms();
    let event_id = new_id("evt");
    let mut tx = state.db.begin().await?;
    let targets: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, agent_id FROM triggers WHERE product = $1 AND kind = 'webhook' \
         AND enabled = 1 AND webhook_path = $2 ORDER BY id",
    )
    .bind(&caller.product)
    .bind(&path)
    .fetch_all(&mut *tx)
    .await?;
    let mut executions = Vec::with_capacity(targets.len());
    for (trigger_id, agent_id) in targets {
        let id = queue::enqueue(
            &mut tx,
            &caller.product,
            &agent_id,
            Some(&trigger_id),
            &event,
            state.config.queue.max_attempts,
        )
        .await?;
        executions.push(StartedExecution {
            id,
            trigger_id,
            agent_id,
            status: "queued".into(),
        });
    }
    let ids: Vec<&str> = executions.iter().map(|e| e.id.as_str()).collect();
    sqlx::query(
        "INSERT INTO webhook_events (id, product, path, body, execution_ids, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&event_id)
    .bind(&caller.product)
    .bind(&path)
    .bind(event.to_string())
    .bind(serde_json::to_string(&ids).unwrap_or_default())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    for _ in &executions {
        state.queue_wake.notify_one();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(EventAccepted {
            event_id,
            path,
            received_at: rfc3339(now),
            executions,
        }),
    ))
}
