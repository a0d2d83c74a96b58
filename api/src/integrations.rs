//! Integrations: connections to outside HTTP services that agents call.
//!
//! Credentials are encrypted at rest (see [`crate::crypto`]) and never
//! returned: responses say only `"credentials": {"set": true}`. Deleting an
//! integration that agents still use is refused with 409.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::crypto::Sealed;
use crate::db::{self, Keyed};
use crate::error::{Error, ErrorBody, Result};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::identity::Caller;
use crate::ids::{PageQuery, Paginated, new_id, now_ms, rfc3339};
use crate::state::AppState;
use crate::validate;

/// An integration as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Integration {
    /// Id, `int_…`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Kind; `http` is the one kind today.
    pub kind: String,
    /// Non-secret settings, e.g. `{"base_url": "https://api.example.com"}`.
    pub config: Value,
    /// Whether credentials are stored (they are never returned).
    pub credentials: CredentialsInfo,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

/// What a client may know about stored credentials.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialsInfo {
    /// Credentials are stored.
    pub set: bool,
}

/// Settings of an `http` integration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpIntegrationConfig {
    /// Base URL that relative agent URLs are joined to.
    pub base_url: String,
    /// Headers sent with every call (not secret; put secrets in credentials).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Credentials of an `http` integration (write-only).
#[derive(Clone, Deserialize, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Credentials {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: String,
    },
    /// HTTP basic authentication.
    Basic {
        /// User.
        username: String,
        /// Password.
        password: String,
    },
    /// A custom header, e.g. `X-Api-Key`.
    Header {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
    },
    /// A query parameter, e.g. `api_key`.
    Query {
        /// Parameter name.
        name: String,
        /// Parameter value.
        value: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// Body of `POST /api/integrations-base`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIntegration {
    /// Display name.
    pub name: String,
    /// `http`.
    pub kind: String,
    /// Settings for the kind.
    #[serde(default)]
    pub config: Value,
    /// Write-only credentials.
    #[schema(value_type = Option<Credentials>)]
    pub credentials: Option<Value>,
}

/// Body of `PUT`/`PATCH /api/integrations-base/{id}`: fields present are
/// changed; `"credentials": null` removes the credentials.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIntegration {
    /// New name.
    pub name: Option<String>,
    /// New kind.
    pub kind: Option<String>,
    /// New settings (replace the old ones).
    pub config: Option<Value>,
    /// New credentials, or `null` to remove them.
    #[serde(default, deserialize_with = "validate::double_option")]
    #[schema(value_type = Option<Credentials>)]
    pub credentials: Option<Option<Value>>,
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    kind: String,
    config: String,
    credentials: Option<String>,
    credentials_key_id: Option<String>,
    created_at: i64,
    updated_at: i64,
}

const COLUMNS: &str =
    "id, name, kind, config, credentials, credentials_key_id, created_at, updated_at";

impl Row {
    fn into_api(self) -> Integration {
        Integration {
            config: serde_json::from_str(&self.config).unwrap_or(Value::Null),
            credentials: CredentialsInfo {
                set: self.credentials.is_some(),
            },
            id: self.id,
            name: self.name,
            kind: self.kind,
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
        }
    }
}

/// An integration with decrypted credentials, for a running agent.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Settings.
    pub config: HttpIntegrationConfig,
    /// Credentials, if any.
    pub credentials: Option<Credentials>,
}

fn aad(product: &str, id: &str) -> String {
    format!("prodgy/integration/{product}/{id}")
}

fn check_kind(kind: &str) -> Result<()> {
    match kind {
        "http" => Ok(()),
        other => Err(Error::invalid(
            "kind",
            format!("unknown integration kind {other:?}; known kinds: http"),
        )),
    }
}

fn check_config(config: &Value) -> Result<Value> {
    let c: HttpIntegrationConfig = validate::typed("config", config)?;
    let url = reqwest::Url::parse(&c.base_url)
        .map_err(|e| Error::invalid("config.base_url", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::invalid(
            "config.base_url",
            "must be an absolute http(s) URL",
        ));
    }
    for (k, v) in &c.headers {
        check_header(&format!("config.headers.{k}"), k, v)?;
    }
    Ok(config.clone())
}

/// Checks a header name and value.
pub fn check_header(field: &str, name: &str, value: &str) -> Result<()> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| Error::invalid(field, "not a valid header name"))?;
    if value.contains(['\r', '\n', '\0']) {
        return Err(Error::invalid(
            field,
            "header values must not contain CR, LF or NUL",
        ));
    }
    Ok(())
}

fn check_credentials(value: &Value) -> Result<Credentials> {
    let c: Credentials = validate::typed("credentials", value)?;
    match &c {
        Credentials::Header { name, value } => check_header("credentials.name", name, value)?,
        Credentials::Bearer { token } if token.contains(['\r', '\n']) => {
            return Err(Error::invalid(
                "credentials.token",
                "must not contain CR or LF",
            ));
        }
        _ => {}
    }
    Ok(c)
}

fn seal(state: &AppState, product: &str, id: &str, c: &Credentials) -> Result<Sealed> {
    let plain = serde_json::to_vec(c).map_err(|e| Error::Internal(e.to_string()))?;
    state.keyring.seal(&plain, &aad(product, id))
}

impl Keyed for Row {
    fn key(&self) -> &str {
        &self.id
    }
}

async fn fetch(state: &AppState, product: &str, id: &str) -> Result<Row> {
    db::find(
        &state.db,
        "integrations",
        COLUMNS,
        product,
        id,
        "integration",
    )
    .await
}

/// Whether an integration exists for the product.
pub async fn exists(state: &AppState, product: &str, id: &str) -> Result<bool> {
    match fetch(state, product, id).await {
        Ok(_) => Ok(true),
        Err(Error::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Loads an integration and decrypts its credentials (for agents).
pub async fn resolve(state: &AppState, product: &str, id: &str) -> Result<Resolved> {
    let row = fetch(state, product, id).await?;
    let config: HttpIntegrationConfig = serde_json::from_str(&row.config)
        .map_err(|e| Error::Internal(format!("stored integration config: {e}")))?;
    let credentials = match (row.credentials, row.credentials_key_id) {
        (Some(data), Some(key_id)) => {
            let plain = state
                .keyring
                .open(&Sealed { key_id, data }, &aad(product, id))?;
            Some(
                serde_json::from_slice(&plain)
                    .map_err(|e| Error::Internal(format!("stored credentials: {e}")))?,
            )
        }
        _ => None,
    };
    Ok(Resolved {
        config,
        credentials,
    })
}

/// List integrations.
#[utoipa::path(get, operation_id = "integrations_list", path = "/api/integrations-base", tag = "integrations",
    params(PageQuery),
    responses((status = 200, body = Paginated<Integration>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Paginated<Integration>>> {
    let page = q.page()?;
    let rows: Paginated<Row> =
        db::page_of(&state.db, "integrations", COLUMNS, &caller.product, &page).await?;
    Ok(Json(rows.map(Row::into_api)))
}

/// Create an integration.
#[utoipa::path(post, operation_id = "integrations_create", path = "/api/integrations-base", tag = "integrations",
    request_body = CreateIntegration,
    responses((status = 201, body = Integration), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateIntegration>,
) -> Result<(StatusCode, Json<Integration>)> {
    let name = validate::name("name", &body.name)?;
    check_kind(&body.kind)?;
    let config = check_config(&body.config)?;
    let credentials = body
        .credentials
        .as_ref()
        .map(check_credentials)
        .transpose()?;
    let id = new_id("int");
    let sealed = credentials
        .as_ref()
        .map(|c| seal(&state, &caller.product, &id, c))
        .transpose()?;
    let now = now_ms();
    sqlx::query(
        "INSERT INTO integrations (id, product, name, kind, config, credentials, \
         credentials_key_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
    )
    .bind(&id)
    .bind(&caller.product)
    .bind(&name)
    .bind(&body.kind)
    .bind(config.to_string())
    .bind(sealed.as_ref().map(|s| s.data.clone()))
    .bind(sealed.as_ref().map(|s| s.key_id.clone()))
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    let row = fetch(&state, &caller.product, &id).await?;
    Ok((StatusCode::CREATED, Json(row.into_api())))
}

/// Get one integration.
#[utoipa::path(get, operation_id = "integrations_get", path = "/api/integrations-base/{id}", tag = "integrations",
    params(("id" = String, Path, description = "Integration id")),
    responses((status = 200, body = Integration), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Integration>> {
    Ok(Json(fetch(&state, &caller.product, &id).await?.into_api()))
}

/// Update an integration (fields present are changed).
#[utoipa::path(patch, operation_id = "integrations_patch", path = "/api/integrations-base/{id}", tag = "integrations",
    params(("id" = String, Path, description = "Integration id")),
    request_body = UpdateIntegration,
    responses((status = 200, body = Integration), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateIntegration>,
) -> Result<Json<Integration>> {
    update(state, caller, id, body).await
}

/// Replace an integration (same body as PATCH; `name`, `kind` and `config`
/// are required).
#[utoipa::path(put, operation_id = "integrations_put", path = "/api/integrations-base/{id}", tag = "integrations",
    params(("id" = String, Path, description = "Integration id")),
    request_body = UpdateIntegration,
    responses((status = 200, body = Integration), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateIntegration>,
) -> Result<Json<Integration>> {
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
    body: UpdateIntegration,
) -> Result<Json<Integration>> {
    let row = fetch(&state, &caller.product, &id).await?;
    let name = match &body.name {
        Some(n) => validate::name("name", n)?,
        None => row.name.clone(),
    };
    let kind = body.kind.clone().unwrap_or(row.kind.clone());
    check_kind(&kind)?;
    let config = match &body.config {
        Some(c) => check_config(c)?.to_string(),
        None => row.config.clone(),
    };
    let (data, key_id) = match &body.credentials {
        None => (row.credentials.clone(), row.credentials_key_id.clone()),
        Some(None) => (None, None),
        Some(Some(v)) => {
            let s = seal(&state, &caller.product, &id, &check_credentials(v)?)?;
            (Some(s.data), Some(s.key_id))
        }
    };
    sqlx::query(
        "UPDATE integrations SET name = $1, kind = $2, config = $3, credentials = $4, \
         credentials_key_id = $5, updated_at = $6 WHERE product = $7 AND id = $8",
    )
    .bind(name)
    .bind(kind)
    .bind(config)
    .bind(data)
    .bind(key_id)
    .bind(now_ms())
    .bind(&caller.product)
    .bind(&id)
    .execute(&state.db.pool)
    .await?;
    Ok(Json(fetch(&state, &caller.product, &id).await?.into_api()))
}

/// Delete an integration (409 while agents use it).
#[utoipa::path(delete, operation_id = "integrations_delete", path = "/api/integrations-base/{id}", tag = "integrations",
    params(("id" = String, Path, description = "Integration id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode> {
    let mut tx = state.db.begin().await?;
    let users: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM agents WHERE product = $1 AND integration_id = $2 ORDER BY id LIMIT 5",
    )
    .bind(&caller.product)
    .bind(&id)
    .fetch_all(&mut *tx)
    .await?;
    if !users.is_empty() {
        let ids: Vec<String> = users.into_iter().map(|(i,)| i).collect();
        return Err(Error::Conflict {
            code: "integration_in_use",
            message: format!(
                "agents still use this integration: {}; change or delete them first",
                ids.join(", ")
            ),
        });
    }
    let done = sqlx::query("DELETE FROM integrations WHERE product = $1 AND id = $2")
        .bind(&caller.product)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound("integration"));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Re-encrypts every credential not sealed with the primary key; returns how
/// many were rewritten. Safe to run while the API serves: each row is
/// swapped only if it still holds the ciphertext that was read.
pub async fn reencrypt(state: &AppState) -> Result<u64> {
    let primary = state.keyring.primary_id().to_owned();
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT id, product, credentials, credentials_key_id FROM integrations \
         WHERE credentials IS NOT NULL AND credentials_key_id <> $1",
    )
    .bind(&primary)
    .fetch_all(&state.db.pool)
    .await?;
    let mut done = 0;
    for (id, product, data, key_id) in rows {
        let a = aad(&product, &id);
        let plain = state.keyring.open(
            &Sealed {
                key_id: key_id.clone(),
                data: data.clone(),
            },
            &a,
        )?;
        let fresh = state.keyring.seal(&plain, &a)?;
        done += sqlx::query(
            "UPDATE integrations SET credentials = $1, credentials_key_id = $2 \
             WHERE id = $3 AND credentials = $4",
        )
        .bind(fresh.data)
        .bind(fresh.key_id)
        .bind(&id)
        .bind(&data)
        .execute(&state.db.pool)
        .await?
        .rows_affected();
    }
    Ok(done)
}
