//! The knowledge base: documents (the text of uploaded files) and ranked
//! full-text search with highlighted snippets.
//!
//! SQLite uses FTS5 (porter stemming, BM25 with the name weighted ×5);
//! PostgreSQL a stored `tsvector` (English, name weighted A) with
//! `ts_rank_cd` and `ts_headline`. Queries are reduced to plain terms before
//! they reach either engine, so no query syntax can be injected.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::{self, Dialect, Keyed, Tx};
use crate::error::{Error, ErrorBody, Result};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::identity::Caller;
use crate::ids::{PageQuery, Paginated, new_id, now_ms, rfc3339};
use crate::state::AppState;

/// Snippet highlight markers.
pub const MARK_START: &str = "<mark>";
/// End of a highlight.
pub const MARK_END: &str = "</mark>";

/// A document (without its text).
#[derive(Debug, Serialize, ToSchema)]
pub struct Document {
    /// Id, `doc_…`.
    pub id: String,
    /// Name (the file name for uploads).
    pub name: String,
    /// `upload`.
    pub source: String,
    /// The stored file it was made from.
    pub file_id: Option<String>,
    /// Media type.
    pub content_type: String,
    /// Size of the source in bytes.
    pub size: i64,
    /// Bytes of text indexed.
    pub indexed_bytes: i64,
    /// Whether only a prefix was indexed (`--max-index-bytes`).
    pub truncated: bool,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

/// A document with its indexed text.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentWithContent {
    /// Metadata.
    #[serde(flatten)]
    pub document: Document,
    /// The indexed text.
    pub content: String,
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    source: String,
    file_id: Option<String>,
    content_type: String,
    size: i64,
    indexed_bytes: i64,
    truncated: i64,
    created_at: i64,
    updated_at: i64,
}

const COLUMNS: &str = "id, name, source, file_id, content_type, size, indexed_bytes, truncated, \
     created_at, updated_at";

impl Keyed for Row {
    fn key(&self) -> &str {
        &self.id
    }
}

impl Row {
    fn into_api(self) -> Document {
        Document {
            id: self.id,
            name: self.name,
            source: self.source,
            file_id: self.file_id,
            content_type: self.content_type,
            size: self.size,
            indexed_bytes: self.indexed_bytes,
            truncated: self.truncated != 0,
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
        }
    }
}

/// Text to index for a file.
#[derive(Debug)]
pub struct NewDocument<'a> {
    /// Product.
    pub product: &'a str,
    /// Name.
    pub name: &'a str,
    /// Source file.
    pub file_id: &'a str,
    /// Media type.
    pub content_type: &'a str,
    /// Size of the file.
    pub size: i64,
    /// The text (already bounded).
    pub content: String,
    /// Whether the text is a prefix.
    pub truncated: bool,
}

/// Stores a document for a file, replacing the file's previous one.
pub async fn upsert_for_file(tx: &mut Tx, doc: NewDocument<'_>) -> Result<String> {
    delete_for_file(tx, doc.product, doc.file_id).await?;
    let id = new_id("doc");
    let now = now_ms();
    // PostgreSQL text cannot hold NUL.
    let content = doc.content.replace('\0', " ");
    sqlx::query(
        "INSERT INTO documents (id, product, name, source, file_id, content_type, size, \
         indexed_bytes, truncated, content, created_at, updated_at) \
         VALUES ($1, $2, $3, 'upload', $4, $5, $6, $7, $8, $9, $10, $10)",
    )
    .bind(&id)
    .bind(doc.product)
    .bind(doc.name)
    .bind(doc.file_id)
    .bind(doc.content_type)
    .bind(doc.size)
    .bind(content.len() as i64)
    .bind(i64::from(doc.truncated))
    .bind(content)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// Removes the document of a file, if any.
pub async fn delete_for_file(tx: &mut Tx, product: &str, file_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM documents WHERE product = $1 AND file_id = $2")
        .bind(product)
        .bind(file_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// List documents.
#[utoipa::path(get, operation_id = "knowledge_list", path = "/api/knowledge-base", tag = "knowledge-base",
    params(PageQuery),
    responses((status = 200, body = Paginated<Document>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Paginated<Document>>> {
    let page = q.page()?;
    let rows: Paginated<Row> =
        db::page_of(&state.db, "documents", COLUMNS, &caller.product, &page).await?;
    Ok(Json(rows.map(Row::into_api)))
}

/// Get a document with its text.
#[utoipa::path(get, operation_id = "knowledge_get", path = "/api/knowledge-base/{id}", tag = "knowledge-base",
    params(("id" = String, Path, description = "Document id")),
    responses((status = 200, body = DocumentWithContent), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DocumentWithContent>> {
    let row: Row = db::find(
        &state.db,
        "documents",
        COLUMNS,
        &caller.product,
        &id,
        "document",
    )
    .await?;
    let content: String =
        sqlx::query_scalar("SELECT content FROM documents WHERE product = $1 AND id = $2")
            .bind(&caller.product)
            .bind(&id)
            .fetch_one(&state.db.pool)
            .await?;
    Ok(Json(DocumentWithContent {
        document: row.into_api(),
        content,
    }))
}

/// Search parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words to look for.
    pub q: Option<String>,
    /// Results, 1–50 (default 10).
    pub limit: Option<u32>,
    /// `all` (default): every word must match; `any`: at least one.
    pub mode: Option<String>,
}

/// Search results.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    /// The query as understood: its terms.
    pub terms: Vec<String>,
    /// Best first.
    pub results: Vec<Hit>,
}

/// One search hit.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Hit {
    /// Document id.
    pub document_id: String,
    /// Document name.
    pub name: String,
    /// The file it came from.
    pub file_id: Option<String>,
    /// Text around the match, matches wrapped in `<mark>…</mark>`.
    pub snippet: String,
    /// Relevance; higher is better (comparable within one response).
    pub score: f64,
}

/// Splits a query into at most 32 lowercase terms of letters and digits.
pub fn terms(q: &str) -> Vec<String> {
    q.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .take(32)
        .collect()
}

/// Builds the engine query from terms. Terms hold only letters and digits,
/// so quoting them (FTS5) or joining them (tsquery) is safe.
pub fn engine_query(dialect: Dialect, terms: &[String], any: bool) -> String {
    match dialect {
        Dialect::Sqlite => {
            let quoted: Vec<String> = terms.iter().map(|t| format!("\"{t}\"")).collect();
            quoted.join(if any { " OR " } else { " " })
        }
        Dialect::Postgres => terms.join(if any { " | " } else { " & " }),
    }
}

#[derive(Debug, sqlx::FromRow)]
struct HitRow {
    id: String,
    name: String,
    file_id: Option<String>,
    snippet: Option<String>,
    score: f64,
}

/// Ranked search over a product's documents.
pub async fn search_terms(
    state: &AppState,
    product: &str,
    terms: &[String],
    any: bool,
    limit: u32,
) -> Result<Vec<Hit>> {
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    let query = engine_query(state.db.dialect, terms, any);
    let sql = match state.db.dialect {
        Dialect::Sqlite => format!(
            "SELECT d.id AS id, d.name AS name, d.file_id AS file_id, \
             CAST(snippet(documents_fts, 1, '{MARK_START}', '{MARK_END}', '…', 24) AS TEXT) AS snippet, \
             CAST(-bm25(documents_fts, 5.0, 1.0) AS REAL) AS score \
             FROM documents_fts JOIN documents d ON d.seq = documents_fts.rowid \
             WHERE documents_fts MATCH $1 AND d.product = $2 \
             ORDER BY bm25(documents_fts, 5.0, 1.0), d.id LIMIT $3"
        ),
        Dialect::Postgres => format!(
            "SELECT id, name, file_id, \
             ts_headline('english', content, q, 'StartSel={MARK_START}, StopSel={MARK_END}, \
                          MaxWords=30, MinWords=10, MaxFragments=1') AS snippet, \
             CAST(ts_rank_cd(tsv, q) AS DOUBLE PRECISION) AS score \
             FROM documents, to_tsquery('english', $1) AS q \
             WHERE product = $2 AND tsv @@ q ORDER BY score DESC, id LIMIT $3"
        ),
    };
    let rows = sqlx::query_as::<_, HitRow>(&sql)
        .bind(query)
        .bind(product)
        .bind(i64::from(limit))
        .fetch_all(&state.db.pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Hit {
            document_id: r.id,
            name: r.name,
            file_id: r.file_id,
            snippet: r.snippet.unwrap_or_default(),
            score: r.score,
        })
        .collect())
}

async fn search_impl(state: &AppState, caller: &Caller, q: SearchQuery) -> Result<SearchResults> {
    let text = q.q.unwrap_or_default();
    if text.trim().is_empty() {
        return Err(Error::invalid("q", "is required"));
    }
    if text.len() > 1000 {
        return Err(Error::invalid("q", "must be at most 1000 bytes"));
    }
    let limit = q.limit.unwrap_or(10);
    if !(1..=50).contains(&limit) {
        return Err(Error::invalid("limit", "must be between 1 and 50"));
    }
    let any = match q.mode.as_deref() {
        None | Some("all") => false,
        Some("any") => true,
        Some(_) => return Err(Error::invalid("mode", "must be all or any")),
    };
    let terms = terms(&text);
    let results = search_terms(state, &caller.product, &terms, any, limit).await?;
    Ok(SearchResults { terms, results })
}

/// Full-text search (query string).
#[utoipa::path(get, operation_id = "knowledge_search", path = "/api/knowledge-base/search", tag = "knowledge-base",
    params(SearchQuery),
    responses((status = 200, body = SearchResults), (status = 400, body = ErrorBody)))]
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<Json<SearchResults>> {
    Ok(Json(search_impl(&state, &caller, q).await?))
}

/// Full-text search (JSON body with the same fields).
#[utoipa::path(post, operation_id = "knowledge_search_post", path = "/api/knowledge-base/search", tag = "knowledge-base",
    request_body = SearchQuery,
    responses((status = 200, body = SearchResults), (status = 400, body = ErrorBody)))]
pub async fn search_post(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(q): ApiJson<SearchQuery>,
) -> Result<Json<SearchResults>> {
    Ok(Json(search_impl(&state, &caller, q).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_reduced_to_safe_terms() {
        let t = terms("Deploy \"rollback\" OR NEAR(x) -- é!");
        assert_eq!(t, vec!["deploy", "rollback", "or", "near", "x", "é"]);
        assert_eq!(
            engine_query(Dialect::Sqlite, &t[..2], false),
            "\"deploy\" \"rollback\""
        );
        assert_eq!(
            engine_query(Dialect::Postgres, &t[..2], true),
            "deploy | rollback"
        );
        assert!(terms("*** ---").is_empty());
    }
}
