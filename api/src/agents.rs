//! Agents and their executions.
//!
//! Deleting an agent deletes its triggers and its executions in one
//! transaction; a worker running one of them notices at its next heartbeat
//! (or when it finishes) that the row is gone and drops the result.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::db::{self, Keyed};
use crate::error::{Error, ErrorBody, Result};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::identity::Caller;
use crate::ids::{PageQuery, Paginated, new_id, now_ms, rfc3339, rfc3339_opt};
use crate::integrations;
use crate::kinds;
use crate::state::AppState;
use crate::validate;

/// An installed agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Agent {
    /// Id, `agt_…`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// `http` or `knowledge`.
    pub kind: String,
    /// Kind-specific settings.
    pub config: Value,
    /// Integration whose base URL and credentials an `http` agent uses.
    pub integration_id: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

/// Body of `POST /api/agent-base` (install an agent).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallAgent {
    /// Display name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// `http` or `knowledge`.
    pub kind: String,
    /// Kind-specific settings.
    #[serde(default)]
    pub config: Value,
    /// Integration to use.
    pub integration_id: Option<String>,
}

/// Body of `PUT`/`PATCH /api/agent-base/{id}`: fields present are changed;
/// `"integration_id": null` detaches the integration.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New kind (the config is checked against it).
    pub kind: Option<String>,
    /// New config (replaces the old one).
    pub config: Option<Value>,
    /// New integration, or `null`.
    #[serde(default, deserialize_with = "validate::double_option")]
    #[schema(value_type = Option<String>)]
    pub integration_id: Option<Option<String>>,
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    description: String,
    kind: String,
    config: String,
    integration_id: Option<String>,
    created_at: i64,
    updated_at: i64,
}

const COLUMNS: &str = "id, name, description, kind, config, integration_id, created_at, updated_at";

impl Row {
    fn into_api(self) -> Agent {
        Agent {
            config: serde_json::from_str(&self.config).unwrap_or(Value::Null),
            id: self.id,
            name: self.name,
            description: self.description,
            kind: self.kind,
            integration_id: self.integration_id,
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
        }
    }
}

impl Keyed for Row {
    fn key(&self) -> &str {
        &self.id
    }
}

async fn fetch(state: &AppState, product: &str, id: &str) -> Result<Row> {
    db::find(&state.db, "agents", COLUMNS, product, id, "agent").await
}

/// Whether an agent exists for the product.
pub async fn exists(state: &AppState, product: &str, id: &str) -> Result<bool> {
    match fetch(state, product, id).await {
        Ok(_) => Ok(true),
        Err(Error::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn check_integration(state: &AppState, product: &str, id: Option<&str>) -> Result<()> {
    if let Some(id) = id
        && !integrations::exists(state, product, id).await?
    {
        return Err(Error::invalid(
            "integration_id",
            format!("no integration {id:?}"),
        ));
    }
    Ok(())
}

/// List agents.
#[utoipa::path(get, operation_id = "agents_list", path = "/api/agent-base", tag = "agents",
    params(PageQuery),
    responses((status = 200, body = Paginated<Agent>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Paginated<Agent>>> {
    let page = q.page()?;
    let rows: Paginated<Row> =
        db::page_of(&state.db, "agents", COLUMNS, &caller.product, &page).await?;
    Ok(Json(rows.map(Row::into_api)))
}

/// Install an agent from a definition.
#[utoipa::path(post, operation_id = "agents_install", path = "/api/agent-base", tag = "agents",
    request_body = InstallAgent,
    responses((status = 201, body = Agent), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn install(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<InstallAgent>,
) -> Result<(StatusCode, Json<Agent>)> {
    let name = validate::name("name", &body.name)?;
    let description = validate::text("description", &body.description, 2000)?;
    let config = kinds::validate_config(&body.kind, &body.config, body.integration_id.is_some())?;
    check_integration(&state, &caller.product, body.integration_id.as_deref()).await?;
    let id = new_id("agt");
    sqlx::query(
        "INSERT INTO agents (id, product, name, description, kind, config, integration_id, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
    )
    .bind(&id)
    .bind(&caller.product)
    .bind(name)
    .bind(description)
    .bind(&body.kind)
    .bind(config.to_string())
    .bind(body.integration_id.clone())
    .bind(now_ms())
    .execute(&state.db.pool)
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(fetch(&state, &caller.product, &id).await?.into_api()),
    ))
}

/// Get one agent.
#[utoipa::path(get, operation_id = "agents_get", path = "/api/agent-base/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 200, body = Agent), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Agent>> {
    Ok(Json(fetch(&state, &caller.product, &id).await?.into_api()))
}

/// Update an agent (fields present are changed).
#[utoipa::path(patch, operation_id = "agents_patch", path = "/api/agent-base/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    request_body = UpdateAgent,
    responses((status = 200, body = Agent), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateAgent>,
) -> Result<Json<Agent>> {
    update(state, caller, id, body).await
}

/// Replace an agent (`name`, `kind` and `config` required).
#[utoipa::path(put, operation_id = "agents_put", path = "/api/agent-base/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    request_body = UpdateAgent,
    responses((status = 200, body = Agent), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateAgent>,
) -> Result<Json<Agent>> {
    validate::required_by_put(&[
        ("name", body.name.is_some()),
        ("kind", body.kind.is_some()),
        ("config", body.config.is_some()),
    ])?;
    update(state, caller, id, body).await
}

async fn update(
    state: AppState,
    caller: Caller,
    id: String,
    body: UpdateAgent,
) -> Result<Json<Agent>> {
    let row = fetch(&state, &caller.product, &id).await?;
    let name = match &body.name {
        Some(n) => validate::name("name", n)?,
        None => row.name.clone(),
    };
    let description = match &body.description {
        Some(d) => validate::text("description", d, 2000)?,
        None => row.description.clone(),
    };
    let kind = body.kind.clone().unwrap_or_else(|| row.kind.clone());
    let integration_id = match body.integration_id.clone() {
        Some(v) => v,
        None => row.integration_id.clone(),
    };
    let config = match &body.config {
        Some(c) => c.clone(),
        None => serde_json::from_str(&row.config).unwrap_or(Value::Null),
    };
    let config = kinds::validate_config(&kind, &config, integration_id.is_some())?;
    check_integration(&state, &caller.product, integration_id.as_deref()).await?;
    sqlx::query(
        "UPDATE agents SET name = $1, description = $2, kind = $3, config = $4, \
         integration_id = $5, updated_at = $6 WHERE product = $7 AND id = $8",
    )
    .bind(name)
    .bind(description)
    .bind(kind)
    .bind(config.to_string())
    .bind(integration_id)
    .bind(now_ms())
    .bind(&caller.product)
    .bind(&id)
    .execute(&state.db.pool)
    .await?;
    Ok(Json(fetch(&state, &caller.product, &id).await?.into_api()))
}

/// Delete an agent with its triggers and executions.
#[utoipa::path(delete, operation_id = "agents_delete", path = "/api/agent-base/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode> {
    db::delete_with_children(
        &state.db,
        "agents",
        &caller.product,
        &id,
        &[("triggers", "agent_id"), ("executions", "agent_id")],
        "agent",
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One run of an agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Execution {
    /// Id, `exe_…`.
    pub id: String,
    /// The agent.
    pub agent_id: String,
    /// The trigger that started it.
    pub trigger_id: Option<String>,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub status: String,
    /// The input.
    pub input: Value,
    /// The result (or, for a failed `http` call, the upstream's answer).
    pub output: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// Claims by a worker so far (a retry after a crash adds one).
    pub attempts: i64,
    /// Claims allowed before it is failed.
    pub max_attempts: i64,
    /// When it was queued.
    pub created_at: String,
    /// When its latest attempt started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct ExecutionRow {
    id: String,
    agent_id: String,
    trigger_id: Option<String>,
    status: String,
    input: String,
    output: Option<String>,
    error: Option<String>,
    attempts: i64,
    max_attempts: i64,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

const EXECUTION_COLUMNS: &str = "id, agent_id, trigger_id, status, input, output, error, \
     attempts, max_attempts, created_at, started_at, finished_at";

impl ExecutionRow {
    fn into_api(self) -> Execution {
        Execution {
            input: serde_json::from_str(&self.input).unwrap_or(Value::Null),
            output: self.output.and_then(|o| serde_json::from_str(&o).ok()),
            id: self.id,
            agent_id: self.agent_id,
            trigger_id: self.trigger_id,
            status: self.status,
            error: self.error,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            created_at: rfc3339(self.created_at),
            started_at: rfc3339_opt(self.started_at),
            finished_at: rfc3339_opt(self.finished_at),
        }
    }
}

/// Filters of the executions list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecutionQuery {
    /// Items per page, 1–200 (default 50).
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
    /// Only this status.
    pub status: Option<String>,
}

/// List an agent's executions, newest first.
#[utoipa::path(get, operation_id = "agents_list_executions", path = "/api/agent-base/{id}/executions", tag = "executions",
    params(("id" = String, Path, description = "Agent id"), ExecutionQuery),
    responses((status = 200, body = Paginated<Execution>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_executions(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExecutionQuery>,
) -> Result<Json<Paginated<Execution>>> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .page()?;
    if let Some(s) = &q.status
        && !matches!(s.as_str(), "queued" | "running" | "succeeded" | "failed")
    {
        return Err(Error::invalid(
            "status",
            "must be queued, running, succeeded or failed",
        ));
    }
    if !exists(&state, &caller.product, &id).await? {
        return Err(Error::NotFound("agent"));
    }
    let rows = sqlx::query_as::<_, ExecutionRow>(&format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions WHERE product = $1 AND agent_id = $2 \
         AND ($3 IS NULL OR id < $3) AND ($4 IS NULL OR status = $4) ORDER BY id DESC LIMIT $5"
    ))
    .bind(&caller.product)
    .bind(&id)
    .bind(page.before.clone())
    .bind(q.status)
    .bind(page.limit + 1)
    .fetch_all(&state.db.pool)
    .await?;
    Ok(Json(
        Paginated::from_rows(rows, &page, |r| &r.id).map(ExecutionRow::into_api),
    ))
}

/// Get one execution.
#[utoipa::path(get, operation_id = "agents_get_execution", path = "/api/agent-base/{id}/executions/{execution_id}", tag = "executions",
    params(("id" = String, Path, description = "Agent id"), ("execution_id" = String, Path, description = "Execution id")),
    responses((status = 200, body = Execution), (status = 404, body = ErrorBody)))]
pub async fn get_execution(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, execution_id)): ApiPath<(String, String)>,
) -> Result<Json<Execution>> {
    let row = sqlx::query_as::<_, ExecutionRow>(&format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions WHERE product = $1 AND agent_id = $2 AND id = $3"
    ))
    .bind(&caller.product)
    .bind(&id)
    .bind(&execution_id)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or(Error::NotFound("execution"))?;
    Ok(Json(row.into_api()))
}
