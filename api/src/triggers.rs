//! Triggers start executions of an agent: `manual` (only through
//! `POST /api/agent-base/triggers/{id}/execute`), `webhook` (events posted to
//! `/api/webhook/<path>`), and `schedule` (a cron expression, UTC).
//!
//! Schedules are fired by every replica's scheduler loop; a compare-and-set
//! on `next_run_at` makes exactly one of them enqueue each run. Runs missed
//! while no replica was up are caught up with a single run, then the
//! schedule continues from now.

use std::str::FromStr;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::agents;
use crate::db;
use crate::error::{Error, ErrorBody, Result};
use crate::extract::{ApiJson, ApiPath, ApiQuery, is_json, parse_json, read_limited};
use crate::identity::Caller;
use crate::ids::{PageQuery, Paginated, new_id, now_ms, rfc3339, rfc3339_opt};
use crate::queue;
use crate::state::AppState;
use crate::validate;

/// A trigger.
#[derive(Debug, Serialize, ToSchema)]
pub struct Trigger {
    /// Id, `trg_…`.
    pub id: String,
    /// The agent it runs.
    pub agent_id: String,
    /// Display name.
    pub name: String,
    /// `manual`, `webhook` or `schedule`.
    pub kind: String,
    /// `{}` (manual), `{"path": "github/push"}` (webhook) or
    /// `{"cron": "0 */5 * * * *"}` (schedule).
    pub config: Value,
    /// Default input of its executions.
    pub input: Value,
    /// Disabled triggers neither fire nor execute.
    pub enabled: bool,
    /// Next scheduled run (schedule triggers).
    pub next_run_at: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

/// Body of `POST /api/agent-base/triggers`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTrigger {
    /// The agent to run.
    pub agent_id: String,
    /// Display name.
    pub name: String,
    /// `manual`, `webhook` or `schedule`.
    pub kind: String,
    /// Kind settings.
    #[serde(default)]
    pub config: Value,
    /// Default input (a webhook's event replaces it).
    #[serde(default)]
    pub input: Value,
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Body of `PATCH /api/agent-base/triggers/{id}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTrigger {
    /// New name.
    pub name: Option<String>,
    /// New config (same kind).
    pub config: Option<Value>,
    /// New default input.
    pub input: Option<Value>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// Body of `POST /api/agent-base/triggers/{id}/execute` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteTrigger {
    /// Input for this run; default: the trigger's input.
    pub input: Option<Value>,
}

/// Answer of an execute request.
#[derive(Debug, Serialize, ToSchema)]
pub struct Started {
    /// The queued execution.
    pub execution_id: String,
    /// Its agent.
    pub agent_id: String,
    /// Its trigger.
    pub trigger_id: String,
    /// `queued`.
    pub status: String,
    /// Where to read it.
    pub location: String,
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: String,
    agent_id: String,
    name: String,
    kind: String,
    config: String,
    input: String,
    enabled: i64,
    next_run_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

const COLUMNS: &str =
    "id, agent_id, name, kind, config, input, enabled, next_run_at, created_at, updated_at";

impl Row {
    fn into_api(self) -> Trigger {
        Trigger {
            config: serde_json::from_str(&self.config).unwrap_or(Value::Null),
            input: serde_json::from_str(&self.input).unwrap_or(Value::Null),
            id: self.id,
            agent_id: self.agent_id,
            name: self.name,
            kind: self.kind,
            enabled: self.enabled != 0,
            next_run_at: rfc3339_opt(self.next_run_at),
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
        }
    }
}

/// A checked trigger config: what to store and the derived columns.
#[derive(Debug, PartialEq)]
pub struct Checked {
    /// Config to store.
    pub config: Value,
    /// Normalised webhook path.
    pub webhook_path: Option<String>,
    /// First run of a schedule.
    pub next_run_at: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookConfig {
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleConfig {
    cron: String,
}

/// Checks a trigger's kind and config at `now_ms`.
pub fn check(kind: &str, config: &Value, now: i64) -> Result<Checked> {
    match kind {
        "manual" => {
            if !(config.is_null() || config.as_object().is_some_and(|m| m.is_empty())) {
                return Err(Error::invalid("config", "manual triggers take no config"));
            }
            Ok(Checked {
                config: json!({}),
                webhook_path: None,
                next_run_at: None,
            })
        }
        "webhook" => {
            let c: WebhookConfig = validate::typed("config", config)?;
            let path = normalize_path(&c.path).map_err(|m| Error::invalid("config.path", m))?;
            Ok(Checked {
                config: json!({ "path": path }),
                webhook_path: Some(path),
                next_run_at: None,
            })
        }
        "schedule" => {
            let c: ScheduleConfig = validate::typed("config", config)?;
            let schedule = parse_cron(&c.cron).map_err(|m| Error::invalid("config.cron", m))?;
            let next = next_after(&schedule, now)
                .ok_or_else(|| Error::invalid("config.cron", "never fires after now"))?;
            Ok(Checked {
                config: json!({ "cron": c.cron.trim() }),
                webhook_path: None,
                next_run_at: Some(next),
            })
        }
        other => Err(Error::invalid(
            "kind",
            format!("unknown trigger kind {other:?}; known kinds: manual, webhook, schedule"),
        )),
    }
}

/// Normalises a webhook path: `/github/push/` → `github/push`. Segments are
/// 1–100 characters of `A-Z a-z 0-9 . _ ~ -`, not `.` or `..`; at most 10.
pub fn normalize_path(raw: &str) -> std::result::Result<String, String> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Err("must not be empty".into());
    }
    let segments: Vec<&str> = trimmed.split('/').collect();
    if segments.len() > 10 {
        return Err("at most 10 segments".into());
    }
    for s in &segments {
        if s.is_empty() || *s == "." || *s == ".." || s.len() > 100 {
            return Err(format!("bad segment {s:?}"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
        {
            return Err(format!(
                "segment {s:?} may hold only letters, digits, '.', '_', '~' and '-'"
            ));
        }
    }
    Ok(segments.join("/"))
}

/// Parses a cron expression: 6 fields (with seconds) or the classic 5
/// (seconds = 0), optionally a 7th (years), or `@hourly`/`@daily`/….
pub fn parse_cron(expr: &str) -> std::result::Result<cron::Schedule, String> {
    let expr = expr.trim();
    let full = if !expr.starts_with('@') && expr.split_whitespace().count() == 5 {
        format!("0 {expr}")
    } else {
        expr.to_owned()
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("not a cron expression: {e}"))
}

/// The first run strictly after `now` (ms), in ms.
pub fn next_after(schedule: &cron::Schedule, now: i64) -> Option<i64> {
    let at = chrono::DateTime::from_timestamp_millis(now)?;
    schedule.after(&at).next().map(|t| t.timestamp_millis())
}

async fn fetch(state: &AppState, product: &str, id: &str) -> Result<Row> {
    db::find(&state.db, "triggers", COLUMNS, product, id, "trigger").await
}

/// List triggers (optionally of one agent).
#[utoipa::path(get, operation_id = "triggers_list", path = "/api/agent-base/triggers", tag = "triggers",
    params(PageQuery, ("agent_id" = Option<String>, Query, description = "Only this agent's triggers")),
    responses((status = 200, body = Paginated<Trigger>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TriggerQuery>,
) -> Result<Json<Paginated<Trigger>>> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .page()?;
    let rows = sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM triggers WHERE product = $1 AND ($2 IS NULL OR id < $2) \
         AND ($3 IS NULL OR agent_id = $3) ORDER BY id DESC LIMIT $4"
    ))
    .bind(&caller.product)
    .bind(page.before.clone())
    .bind(q.agent_id)
    .bind(page.limit + 1)
    .fetch_all(&state.db.pool)
    .await?;
    Ok(Json(
        Paginated::from_rows(rows, &page, |r| &r.id).map(Row::into_api),
    ))
}

/// Query of the trigger list.
#[derive(Debug, Deserialize)]
pub struct TriggerQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    agent_id: Option<String>,
}

/// Create a trigger for an agent.
#[utoipa::path(post, operation_id = "triggers_create", path = "/api/agent-base/triggers", tag = "triggers",
    request_body = CreateTrigger,
    responses((status = 201, body = Trigger), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateTrigger>,
) -> Result<(StatusCode, Json<Trigger>)> {
    let name = validate::name("name", &body.name)?;
    let now = now_ms();
    let checked = check(&body.kind, &body.config, now)?;
    if !agents::exists(&state, &caller.product, &body.agent_id).await? {
        return Err(Error::invalid(
            "agent_id",
            format!("no agent {:?}", body.agent_id),
        ));
    }
    let id = new_id("trg");
    let input = if body.input.is_null() {
        json!({})
    } else {
        body.input
    };
    sqlx::query(
        "INSERT INTO triggers (id, product, agent_id, name, kind, config, input, enabled, \
         webhook_path, next_run_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
    )
    .bind(&id)
    .bind(&caller.product)
    .bind(&body.agent_id)
    .bind(name)
    .bind(&body.kind)
    .bind(checked.config.to_string())
    .bind(input.to_string())
    .bind(i64::from(body.enabled))
    .bind(checked.webhook_path)
    .bind(checked.next_run_at)
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(fetch(&state, &caller.product, &id).await?.into_api()),
    ))
}

/// Trigger details.
#[utoipa::path(get, operation_id = "triggers_get", path = "/api/agent-base/triggers/{id}", tag = "triggers",
    params(("id" = String, Path, description = "Trigger id")),
    responses((status = 200, body = Trigger), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Trigger>> {
    Ok(Json(fetch(&state, &caller.product, &id).await?.into_api()))
}

/// Change a trigger's name, config, input or enabled flag.
#[utoipa::path(patch, operation_id = "triggers_patch", path = "/api/agent-base/triggers/{id}", tag = "triggers",
    params(("id" = String, Path, description = "Trigger id")),
    request_body = UpdateTrigger,
    responses((status = 200, body = Trigger), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateTrigger>,
) -> Result<Json<Trigger>> {
    let row = fetch(&state, &caller.product, &id).await?;
    let name = match &body.name {
        Some(n) => validate::name("name", n)?,
        None => row.name.clone(),
    };
    let config = match &body.config {
        Some(c) => c.clone(),
        None => serde_json::from_str(&row.config).unwrap_or(Value::Null),
    };
    let now = now_ms();
    let checked = check(&row.kind, &config, now)?;
    // An unchanged schedule keeps its next run; a changed one restarts from now.
    let next_run_at = if body.config.is_none() {
        row.next_run_at
    } else {
        checked.next_run_at
    };
    let input = body
        .input
        .clone()
        .unwrap_or_else(|| serde_json::from_str(&row.input).unwrap_or(Value::Null));
    let enabled = body.enabled.unwrap_or(row.enabled != 0);
    sqlx::query(
        "UPDATE triggers SET name = $1, config = $2, input = $3, enabled = $4, webhook_path = $5, \
         next_run_at = $6, updated_at = $7 WHERE product = $8 AND id = $9",
    )
    .bind(name)
    .bind(checked.config.to_string())
    .bind(input.to_string())
    .bind(i64::from(enabled))
    .bind(checked.webhook_path)
    .bind(next_run_at)
    .bind(now)
    .bind(&caller.product)
    .bind(&id)
    .execute(&state.db.pool)
    .await?;
    Ok(Json(fetch(&state, &caller.product, &id).await?.into_api()))
}

/// Delete a trigger (its past executions stay with the agent).
#[utoipa::path(delete, operation_id = "triggers_delete", path = "/api/agent-base/triggers/{id}", tag = "triggers",
    params(("id" = String, Path, description = "Trigger id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode> {
    let done = sqlx::query("DELETE FROM triggers WHERE product = $1 AND id = $2")
        .bind(&caller.product)
        .bind(&id)
        .execute(&state.db.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound("trigger"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Execute a trigger now: queues an execution and answers 202 at once.
#[utoipa::path(post, operation_id = "triggers_execute", path = "/api/agent-base/triggers/{id}/execute", tag = "triggers",
    params(("id" = String, Path, description = "Trigger id")),
    request_body(content = Option<ExecuteTrigger>, description = "Optional; `{\"input\": …}` overrides the trigger's input"),
    responses((status = 202, body = Started), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn execute(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse> {
    let body = read_limited(body, state.config.limits.max_json_bytes).await?;
    // The trigger first: a foreign or unknown id is 404 whatever the body.
    let row = fetch(&state, &caller.product, &id).await?;
    let request: ExecuteTrigger = if body.iter().all(u8::is_ascii_whitespace) {
        ExecuteTrigger::default()
    } else if !is_json(headers.get(header::CONTENT_TYPE)) {
        return Err(Error::UnsupportedMediaType(
            "send the body as application/json".into(),
        ));
    } else {
        parse_json(&body)?
    };
    if row.enabled == 0 {
        return Err(Error::Conflict {
            code: "trigger_disabled",
            message: "this trigger is disabled; enable it with PATCH first".into(),
        });
    }
    let input = match request.input {
        Some(v) => v,
        None => serde_json::from_str(&row.input).unwrap_or(Value::Null),
    };
    let mut tx = state.db.begin().await?;
    let execution_id = queue::enqueue(
        &mut tx,
        &caller.product,
        &row.agent_id,
        Some(&row.id),
        &input,
        state.config.queue.max_attempts,
    )
    .await?;
    tx.commit().await?;
    state.queue_wake.notify_one();
    let location = format!("/api/agent-base/{}/executions/{execution_id}", row.agent_id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location.clone())],
        Json(Started {
            execution_id,
            agent_id: row.agent_id,
            trigger_id: row.id,
            status: "queued".into(),
            location,
        }),
    ))
}

#[derive(Debug, sqlx::FromRow)]
struct Due {
    id: String,
    product: String,
    agent_id: String,
    config: String,
    input: String,
    next_run_at: i64,
}

/// Fires due schedules once; returns how many executions were queued.
pub async fn fire_due(state: &AppState) -> Result<usize> {
    let now = now_ms();
    let due = sqlx::query_as::<_, Due>(
        "SELECT id, product, agent_id, config, input, next_run_at FROM triggers \
         WHERE kind = 'schedule' AND enabled = 1 AND next_run_at IS NOT NULL \
         AND next_run_at <= $1 ORDER BY next_run_at LIMIT 100",
    )
    .bind(now)
    .fetch_all(&state.db.pool)
    .await?;
    let mut fired = 0;
    for t in due {
        let cron = serde_json::from_str::<Value>(&t.config)
            .ok()
            .and_then(|c| c.get("cron").and_then(Value::as_str).map(str::to_owned))
            .and_then(|c| parse_cron(&c).ok());
        let next = cron.as_ref().and_then(|s| next_after(s, now));
        let mut tx = state.db.begin().await?;
        let won =
            sqlx::query("UPDATE triggers SET next_run_at = $1 WHERE id = $2 AND next_run_at = $3")
                .bind(next)
                .bind(&t.id)
                .bind(t.next_run_at)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        if won {
            let input: Value = serde_json::from_str(&t.input).unwrap_or(Value::Null);
            queue::enqueue(
                &mut tx,
                &t.product,
                &t.agent_id,
                Some(&t.id),
                &input,
                state.config.queue.max_attempts,
            )
            .await?;
            fired += 1;
        }
        tx.commit().await?;
    }
    if fired > 0 {
        for _ in 0..fired {
            state.queue_wake.notify_one();
        }
    }
    Ok(fired)
}

/// Runs the scheduler until `shutdown`.
pub async fn scheduler(state: AppState, shutdown: CancellationToken) {
    let tick = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        if let Err(e) = fire_due(&state).await {
            tracing::warn!(error = %e, "scheduler tick failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_paths_are_normalised_and_fenced() {
        assert_eq!(normalize_path("/github/push/").unwrap(), "github/push");
        for bad in ["", "/", "a//b", "../etc", "a/./b", "a b", "a/%2e%2e", "x\0"] {
            assert!(normalize_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cron_accepts_five_six_and_shorthand_fields() {
        let now = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:30Z")
            .unwrap()
            .timestamp_millis();
        let five = parse_cron("*/5 * * * *").unwrap();
        assert_eq!(
            rfc3339(next_after(&five, now).unwrap()),
            "2025-01-01T00:05:00.000Z"
        );
        let six = parse_cron("*/10 * * * * *").unwrap();
        assert_eq!(
            rfc3339(next_after(&six, now).unwrap()),
            "2025-01-01T00:00:40.000Z"
        );
        assert!(parse_cron("@hourly").is_ok());
        assert!(parse_cron("every minute").is_err());
        let e = check("schedule", &json!({"cron": "61 * * * * *"}), now).unwrap_err();
        assert!(matches!(e, Error::Invalid { ref field, .. } if field == "config.cron"));
    }

    #[test]
    fn kinds_check_their_config() {
        assert!(check("manual", &json!({"x": 1}), 0).is_err());
        assert_eq!(check("manual", &Value::Null, 0).unwrap().config, json!({}));
        let w = check("webhook", &json!({"path": "/a/b/"}), 0).unwrap();
        assert_eq!(w.webhook_path.as_deref(), Some("a/b"));
        assert!(check("webhook", &json!({}), 0).is_err());
        let e = check("cron", &json!({}), 0).unwrap_err();
        assert!(matches!(e, Error::Invalid { ref field, .. } if field == "kind"));
    }
}
