//! Storage: files streamed in and out, never held whole in memory.
//!
//! A file is addressed by its name (unique per product, one path segment);
//! its bytes live in the blob store under a generated key, so a name can
//! never point outside the store. An upload streams into a new blob while
//! hashing and counting; only when the blob is complete is the row switched
//! to it (a replace is atomic for readers) and the old blob deleted. Text
//! files (text/*, JSON, markdown, …) have their first `--max-index-bytes`
//! indexed into the knowledge base.

use std::ops::Range;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::db::{self, Keyed, Tx, is_unique_violation};
use crate::error::{Error, ErrorBody, Result};
use crate::extract::{ApiPath, ApiQuery};
use crate::identity::Caller;
use crate::ids::{PageQuery, Paginated, new_id, now_ms, rfc3339};
use crate::knowledge::{self, NewDocument};
use crate::state::AppState;

/// A stored file.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredFile {
    /// Id, `fil_…` (kept when the file is replaced).
    pub id: String,
    /// Name, unique within the product.
    pub name: String,
    /// Media type given at upload.
    pub content_type: String,
    /// Size in bytes.
    pub size: i64,
    /// SHA-256 of the content (hex); also the download's ETag.
    pub sha256: String,
    /// The knowledge-base document made from it (text files).
    pub document_id: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Last replacement.
    pub updated_at: String,
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    content_type: String,
    size: i64,
    sha256: String,
    blob_key: String,
    document_id: Option<String>,
    created_at: i64,
    updated_at: i64,
}

const COLUMNS: &str =
    "id, name, content_type, size, sha256, blob_key, document_id, created_at, updated_at";

impl Keyed for Row {
    fn key(&self) -> &str {
        &self.id
    }
}

impl Row {
    fn into_api(self) -> StoredFile {
        StoredFile {
            id: self.id,
            name: self.name,
            content_type: self.content_type,
            size: self.size,
            sha256: self.sha256,
            document_id: self.document_id,
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
        }
    }
}

/// Checks a file name: one path segment of 1–255 bytes, not `.`/`..`, no
/// `/` or `\`, no NUL or other control characters, no surrounding spaces.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1–255 bytes".into());
    }
    if name == "." || name == ".." {
        return Err("must not be . or ..".into());
    }
    if name.contains(['/', '\\']) {
        return Err("must not contain / or \\ (names are a single segment)".into());
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain NUL or control characters".into());
    }
    if name.trim() != name {
        return Err("must not start or end with whitespace".into());
    }
    Ok(())
}

/// A media type for a name when none was given.
pub fn guess_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" | "text" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "json" => "application/json",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "xml" => "application/xml",
        "yaml" | "yml" => "application/yaml",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// Whether a file's text is indexed.
pub fn is_text(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/x-ndjson"
                | "application/xml"
                | "application/yaml"
                | "application/x-yaml"
                | "application/markdown"
        )
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
}

/// The media type to store: the one sent, or one guessed from the name when
/// none (or only `application/octet-stream`) was sent.
fn content_type_for(name: &str, sent: Option<&str>) -> Result<String> {
    match sent.map(str::trim) {
        None | Some("") | Some("application/octet-stream") => Ok(guess_type(name).to_owned()),
        Some(ct) => check_content_type(ct),
    }
}

fn check_content_type(v: &str) -> Result<String> {
    let v = v.trim();
    if v.is_empty()
        || v.len() > 200
        || !v.bytes().all(|b| (0x20..0x7f).contains(&b))
        || !v.contains('/')
    {
        return Err(Error::invalid("content-type", "not a media type"));
    }
    Ok(v.to_owned())
}

/// A `Range` that starts past the end of the object (416).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Parses a single `Range: bytes=…` against an object of `size` bytes.
/// `Ok(None)`: serve the whole object (no header, several ranges, or a
/// header we ignore as the RFC allows).
pub fn parse_range(
    header: Option<&str>,
    size: u64,
) -> std::result::Result<Option<Range<u64>>, Unsatisfiable> {
    let Some(h) = header else { return Ok(None) };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 {
            return Err(Unsatisfiable);
        }
        size.saturating_sub(n)..size
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            size
        } else {
            let Ok(last) = b.parse::<u64>() else {
                return Ok(None);
            };
            if last < start {
                return Ok(None);
            }
            last.saturating_add(1).min(size)
        };
        start..end
    };
    if range.start >= size {
        return Err(Unsatisfiable);
    }
    Ok(Some(range))
}

fn disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        utf8_percent_encode(name, NON_ALPHANUMERIC)
    )
}

async fn fetch(state: &AppState, product: &str, name: &str) -> Result<Row> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM files WHERE product = $1 AND name = $2"
    ))
    .bind(product)
    .bind(name)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or(Error::NotFound("file"))
}

/// Streams `body` into the store as `name`, creating or replacing it.
async fn receive<S, E>(
    state: &AppState,
    product: &str,
    name: &str,
    content_type: &str,
    mut body: S,
) -> Result<(bool, StoredFile)>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let max = state.config.limits.max_upload_bytes;
    let index_limit = state.config.limits.max_index_bytes;
    let index = is_text(content_type) && index_limit > 0;
    let blob_key = state.blobs.key(&new_id("blb"));
    let mut writer = state.blobs.writer(&blob_key).await?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut text: Vec<u8> = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                writer.abort().await;
                return Err(Error::invalid("body", format!("upload interrupted: {e}")));
            }
        };
        size += chunk.len() as u64;
        if size > max {
            writer.abort().await;
            return Err(Error::PayloadTooLarge(max));
        }
        hasher.update(&chunk);
        if index {
            let room = index_limit.saturating_sub(text.len());
            text.extend_from_slice(&chunk[..room.min(chunk.len())]);
            truncated |= chunk.len() > room;
        }
        if let Err(e) = writer.write(&chunk).await {
            writer.abort().await;
            return Err(e);
        }
    }
    writer.finish().await?;
    state
        .metrics
        .upload_bytes
        .with_label_values(&["in"])
        .inc_by(size);
    let sha256 = hex::encode(hasher.finalize());
    let blob = StoredBlob {
        product,
        name,
        content_type,
        size,
        sha256: &sha256,
        blob_key: &blob_key,
    };
    let committed = commit(state, &blob, index.then_some((text, truncated))).await;
    match committed {
        Ok((created, old_blob, row)) => {
            if let Some(old) = old_blob
                && let Err(e) = state.blobs.delete(&old).await
            {
                tracing::warn!(error = %e, "could not delete a replaced blob");
            }
            Ok((created, row.into_api()))
        }
        Err(e) => {
            if let Err(e) = state.blobs.delete(&blob_key).await {
                tracing::warn!(error = %e, "could not delete an orphan blob");
            }
            Err(e)
        }
    }
}

/// A complete blob and what the file's row says of it.
struct StoredBlob<'a> {
    product: &'a str,
    name: &'a str,
    content_type: &'a str,
    size: u64,
    sha256: &'a str,
    blob_key: &'a str,
}

/// Points the file's row at a complete blob, in one transaction with its
/// knowledge-base document; returns (created, old blob, row).
async fn commit(
    state: &AppState,
    blob: &StoredBlob<'_>,
    text: Option<(Vec<u8>, bool)>,
) -> Result<(bool, Option<String>, Row)> {
    let mut tx = state.db.begin().await?;
    let old: Option<(String, String)> =
        sqlx::query_as("SELECT id, blob_key FROM files WHERE product = $1 AND name = $2")
            .bind(blob.product)
            .bind(blob.name)
            .fetch_optional(&mut *tx)
            .await?;
    let (id, created) = match &old {
        Some((id, _)) => (id.clone(), false),
        None => (new_id("fil"), true),
    };
    let document_id = index_text(&mut tx, blob, &id, text).await?;
    write_row(&mut tx, blob, &id, created, document_id).await?;
    let row = sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM files WHERE product = $1 AND id = $2"
    ))
    .bind(blob.product)
    .bind(&id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((created, old.map(|(_, blob)| blob), row))
}

/// Makes the file's text searchable (or removes its old document when the
/// new content is not text); returns the document's id.
async fn index_text(
    tx: &mut Tx,
    blob: &StoredBlob<'_>,
    file_id: &str,
    text: Option<(Vec<u8>, bool)>,
) -> Result<Option<String>> {
    match text {
        Some((bytes, truncated)) if !looks_binary(&bytes) => {
            let doc = NewDocument {
                product: blob.product,
                name: blob.name,
                file_id,
                content_type: blob.content_type,
                size: blob.size as i64,
                content: decode_prefix(&bytes, truncated),
                truncated,
            };
            Ok(Some(knowledge::upsert_for_file(tx, doc).await?))
        }
        _ => {
            knowledge::delete_for_file(tx, blob.product, file_id).await?;
            Ok(None)
        }
    }
}

/// Inserts or updates the file's row; a concurrent upload of the same name
/// that committed first is a conflict.
async fn write_row(
    tx: &mut Tx,
    blob: &StoredBlob<'_>,
    id: &str,
    created: bool,
    document_id: Option<String>,
) -> Result<()> {
    let now = now_ms();
    let result = if created {
        sqlx::query(
            "INSERT INTO files (id, product, name, content_type, size, sha256, blob_key, \
             document_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(id)
        .bind(blob.product)
        .bind(blob.name)
        .bind(blob.content_type)
        .bind(blob.size as i64)
        .bind(blob.sha256)
        .bind(blob.blob_key)
        .bind(document_id)
        .bind(now)
        .execute(&mut **tx)
        .await
    } else {
        sqlx::query(
            "UPDATE files SET content_type = $1, size = $2, sha256 = $3, blob_key = $4, \
             document_id = $5, updated_at = $6 WHERE product = $7 AND id = $8",
        )
        .bind(blob.content_type)
        .bind(blob.size as i64)
        .bind(blob.sha256)
        .bind(blob.blob_key)
        .bind(document_id)
        .bind(now)
        .bind(blob.product)
        .bind(id)
        .execute(&mut **tx)
        .await
    };
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(Error::Conflict {
            code: "concurrent_upload",
            message: "another upload of this name finished first; retry".into(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Binary content posing as text is not indexed.
fn looks_binary(bytes: &[u8]) -> bool {
    bytes.iter().take(8192).any(|&b| b == 0)
}

/// UTF-8 text of a (possibly cut) prefix.
fn decode_prefix(bytes: &[u8], truncated: bool) -> String {
    let text = String::from_utf8_lossy(bytes).into_owned();
    if truncated {
        text.trim_end_matches('\u{FFFD}').to_owned()
    } else {
        text
    }
}

fn content_length_check(headers: &HeaderMap, max: u64) -> Result<()> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max
    {
        return Err(Error::PayloadTooLarge(max));
    }
    Ok(())
}

fn uploaded(created: bool, file: StoredFile) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(file)).into_response()
}

/// Upload query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// File name (required for a raw body; overrides a multipart file name).
    pub name: Option<String>,
}

/// Upload a file: `multipart/form-data` (the first part with a file name)
/// or any other body as the raw content with `?name=`.
#[utoipa::path(post, operation_id = "storage_upload", path = "/api/knowledge-base/storage", tag = "storage",
    params(UploadQuery),
    request_body(content = Vec<u8>, description = "Raw bytes (with ?name=) or multipart/form-data", content_type = "application/octet-stream"),
    responses((status = 201, body = StoredFile), (status = 200, body = StoredFile, description = "Replaced a file of the same name"),
              (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<UploadQuery>,
    req: Request,
) -> Result<Response> {
    content_length_check(req.headers(), state.config.limits.max_upload_bytes)?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        let mut multipart = Multipart::from_request(req, &state)
            .await
            .map_err(|e| Error::invalid("body", e.body_text()))?;
        loop {
            let field = multipart
                .next_field()
                .await
                .map_err(|e| Error::invalid("body", e.body_text()))?
                .ok_or_else(|| Error::invalid("body", "no file part in the multipart body"))?;
            let Some(file_name) = field.file_name().map(str::to_owned) else {
                continue;
            };
            let name = q.name.clone().unwrap_or(file_name);
            let sent = field.content_type().map(str::to_owned);
            return store(&state, &caller.product, &name, sent.as_deref(), field).await;
        }
    }
    let name = q
        .name
        .ok_or_else(|| Error::invalid("name", "is required for a raw upload (?name=…)"))?;
    let stream = req.into_body().into_data_stream();
    store(&state, &caller.product, &name, Some(&content_type), stream).await
}

/// Stores `body` as the file `name` (checked) with the content type the
/// client sent, or one guessed from the name; the upload's answer.
async fn store<S, E>(
    state: &AppState,
    product: &str,
    name: &str,
    sent: Option<&str>,
    body: S,
) -> Result<Response>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    check_name(name).map_err(|m| Error::invalid("name", m))?;
    let ct = content_type_for(name, sent)?;
    let (created, file) = receive(state, product, name, &ct, body).await?;
    Ok(uploaded(created, file))
}

/// Upload or replace the file `name` with the raw body.
#[utoipa::path(put, operation_id = "storage_put", path = "/api/knowledge-base/storage/{name}", tag = "storage",
    params(("name" = String, Path, description = "File name (one segment)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = StoredFile), (status = 200, body = StoredFile, description = "Replaced"),
              (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    check_name(&name).map_err(|m| Error::invalid("name", m))?;
    content_length_check(&headers, state.config.limits.max_upload_bytes)?;
    let sent = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    store(
        &state,
        &caller.product,
        &name,
        sent,
        body.into_data_stream(),
    )
    .await
}

/// List files, newest first.
#[utoipa::path(get, operation_id = "storage_list", path = "/api/knowledge-base/storage", tag = "storage",
    params(PageQuery),
    responses((status = 200, body = Paginated<StoredFile>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Paginated<StoredFile>>> {
    let page = q.page()?;
    let rows: Paginated<Row> =
        db::page_of(&state.db, "files", COLUMNS, &caller.product, &page).await?;
    Ok(Json(rows.map(Row::into_api)))
}

/// Download a file (streamed; single `Range` supported).
#[utoipa::path(get, operation_id = "storage_download", path = "/api/knowledge-base/storage/{name}", tag = "storage",
    params(("name" = String, Path, description = "File name")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
              (status = 206, description = "Partial content"),
              (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response> {
    check_name(&name).map_err(|m| Error::invalid("name", m))?;
    let row = fetch(&state, &caller.product, &name).await?;
    let size = row.size.max(0) as u64;
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    )
    .map_err(|Unsatisfiable| Error::RangeNotSatisfiable(size))?;
    let (status, span) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.clone()),
        None => (StatusCode::OK, 0..size),
    };
    let body = if span.is_empty() {
        Body::empty()
    } else {
        let store_range = if span == (0..size) {
            None
        } else {
            Some(span.clone())
        };
        let counter = state.metrics.upload_bytes.with_label_values(&["out"]);
        let stream = state.blobs.read(&row.blob_key, store_range).await?;
        Body::from_stream(stream.inspect_ok(move |b| counter.inc_by(b.len() as u64)))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let hv = |s: &str| HeaderValue::from_str(s).map_err(|e| Error::Internal(e.to_string()));
    h.insert(header::CONTENT_TYPE, hv(&row.content_type)?);
    h.insert(
        header::CONTENT_LENGTH,
        hv(&(span.end - span.start).to_string())?,
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, hv(&format!("\"{}\"", row.sha256))?);
    h.insert(header::CONTENT_DISPOSITION, hv(&disposition(&row.name))?);
    if range.is_some() {
        h.insert(
            header::CONTENT_RANGE,
            hv(&format!(
                "bytes {}-{}/{size}",
                span.start,
                span.end.saturating_sub(1)
            ))?,
        );
    }
    Ok(resp)
}

/// Delete a file (and its knowledge-base document).
#[utoipa::path(delete, operation_id = "storage_delete", path = "/api/knowledge-base/storage/{name}", tag = "storage",
    params(("name" = String, Path, description = "File name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode> {
    check_name(&name).map_err(|m| Error::invalid("name", m))?;
    let mut tx = state.db.begin().await?;
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT id, blob_key FROM files WHERE product = $1 AND name = $2")
            .bind(&caller.product)
            .bind(&name)
            .fetch_optional(&mut *tx)
            .await?;
    let (id, blob_key) = row.ok_or(Error::NotFound("file"))?;
    knowledge::delete_for_file(&mut tx, &caller.product, &id).await?;
    sqlx::query("DELETE FROM files WHERE product = $1 AND id = $2")
        .bind(&caller.product)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    // After the commit: a reader that already holds the old key may still
    // be streaming; on local disk the open file survives the unlink.
    state.blobs.delete(&blob_key).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_or_hide() {
        for bad in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "C:\\x",
            "a\0b",
            "a\nb",
            "a\u{7f}",
            " lead",
            "trail ",
            &"x".repeat(256),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["report.txt", "..hidden", "a..b", "résumé 2024.pdf", "x"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn ranges() {
        let r = |h: &str| parse_range(Some(h), 100);
        assert_eq!(r("bytes=0-9"), Ok(Some(0..10)));
        assert_eq!(r("bytes=90-"), Ok(Some(90..100)));
        assert_eq!(r("bytes=-10"), Ok(Some(90..100)));
        assert_eq!(r("bytes=95-500"), Ok(Some(95..100)));
        assert_eq!(r("bytes=-500"), Ok(Some(0..100)));
        assert_eq!(r("bytes=100-"), Err(Unsatisfiable));
        assert_eq!(r("bytes=-0"), Err(Unsatisfiable));
        assert_eq!(r("bytes=5-1"), Ok(None));
        assert_eq!(r("bytes=0-1,5-6"), Ok(None));
        assert_eq!(r("items=0-1"), Ok(None));
        assert_eq!(r("bytes=x-y"), Ok(None));
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-"), 0), Err(Unsatisfiable));
    }

    #[test]
    fn text_detection_and_decoding() {
        assert!(is_text("text/plain; charset=utf-8"));
        assert!(is_text("application/json"));
        assert!(is_text("application/vnd.api+json"));
        assert!(!is_text("image/png"));
        assert_eq!(guess_type("README.MD"), "text/markdown");
        assert!(looks_binary(b"ab\0c"));
        // A cut inside "é" does not leave a replacement character.
        assert_eq!(decode_prefix(&"aé".as_bytes()[..2], true), "a");
        assert!(disposition("a\"b.txt").starts_with("attachment; filename=\"a_b.txt\""));
    }
}
