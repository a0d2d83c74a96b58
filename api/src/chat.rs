//! Assistant chat: answers stream as Server-Sent Events; conversations and
//! their messages are kept per product.
//!
//! Events, in order: `meta` (ids, backend), zero or more `citation`, zero or
//! more `delta` (`{"text": …}`), then exactly one terminal event: `done`
//! (`{"message_id", "finish_reason", "status"}`) or `error`
//! (`{"code", "message"}`). When the client goes away the producer notices,
//! stops reading the model (dropping its connection) and saves what was
//! produced with status `cancelled`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;

use crate::answer::{self, Citation, SseParser};
use crate::config::LlmConfig;
use crate::db::{self, Keyed};
use crate::error::{Error, ErrorBody, Result};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::identity::Caller;
use crate::ids::{PageQuery, Paginated, new_id, now_ms, rfc3339};
use crate::state::AppState;

/// Messages of history sent to a model with a new question.
const HISTORY_TO_MODEL: i64 = 20;
/// Messages returned by the history endpoint.
const HISTORY_LIMIT: i64 = 500;
/// Longest silence from the model before the answer is failed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Body of `POST /api/assistant/chat`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// The user's message (1–32768 bytes).
    pub message: String,
    /// Continue this conversation; omit to start one.
    pub conversation_id: Option<String>,
}

/// A conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Conversation {
    /// Id, `cnv_…`.
    pub id: String,
    /// The start of its first message.
    pub title: String,
    /// Creation time.
    pub created_at: String,
    /// Last message time.
    pub updated_at: String,
}

/// A conversation with its messages, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationHistory {
    /// The conversation.
    #[serde(flatten)]
    pub conversation: Conversation,
    /// Its latest 500 messages, oldest first.
    pub messages: Vec<Message>,
}

/// One message.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    /// Id, `msg_…`.
    pub id: String,
    /// `user` or `assistant`.
    pub role: String,
    /// Text.
    pub content: String,
    /// Sources of an assistant message.
    pub citations: Vec<Citation>,
    /// `complete`, `cancelled` (client left) or `failed`.
    pub status: String,
    /// Time.
    pub created_at: String,
}

#[derive(Debug, sqlx::FromRow)]
struct ConversationRow {
    id: String,
    title: String,
    created_at: i64,
    updated_at: i64,
}

impl ConversationRow {
    fn into_api(self) -> Conversation {
        Conversation {
            id: self.id,
            title: self.title,
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct MessageRow {
    id: String,
    role: String,
    content: String,
    citations: String,
    status: String,
    created_at: i64,
}

const CONVERSATION_COLUMNS: &str = "id, title, created_at, updated_at";

impl Keyed for ConversationRow {
    fn key(&self) -> &str {
        &self.id
    }
}

async fn conversation(state: &AppState, product: &str, id: &str) -> Result<ConversationRow> {
    db::find(
        &state.db,
        "conversations",
        CONVERSATION_COLUMNS,
        product,
        id,
        "conversation",
    )
    .await
}

/// A message to store.
struct NewMessage<'a> {
    product: &'a str,
    conversation_id: &'a str,
    id: &'a str,
    role: &'a str,
    content: &'a str,
    citations: &'a [Citation],
    status: &'a str,
}

async fn save_message(state: &AppState, m: NewMessage<'_>) -> Result<()> {
    let NewMessage {
        product,
        conversation_id,
        id,
        role,
        content,
        citations,
        status,
    } = m;
    let now = now_ms();
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, product, role, content, citations, status, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(conversation_id)
    .bind(product)
    .bind(role)
    .bind(content.replace('\0', ""))
    .bind(serde_json::to_string(citations).unwrap_or_else(|_| "[]".into()))
    .bind(status)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE conversations SET updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(conversation_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Chat: streams the answer as Server-Sent Events.
#[utoipa::path(post, operation_id = "chat_chat", path = "/api/assistant/chat", tag = "assistant",
    request_body = ChatRequest,
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
         description = "Events: meta, citation*, delta*, then done or error"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn chat(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ChatRequest>,
) -> Result<Response> {
    if body.message.trim().is_empty() {
        return Err(Error::invalid("message", "must not be empty"));
    }
    if body.message.len() > 32 * 1024 {
        return Err(Error::invalid("message", "must be at most 32768 bytes"));
    }
    let product = caller.product.clone();
    let conversation_id = match &body.conversation_id {
        Some(id) => conversation(&state, &product, id).await?.id,
        None => {
            let id = new_id("cnv");
            let title: String = body.message.trim().chars().take(80).collect();
            let now = now_ms();
            sqlx::query(
                "INSERT INTO conversations (id, product, title, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(&id)
            .bind(&product)
            .bind(title.replace('\0', ""))
            .bind(now)
            .execute(&state.db.pool)
            .await?;
            id
        }
    };
    let history = match &state.config.llm {
        Some(_) => recent_history(&state, &conversation_id).await?,
        None => Vec::new(),
    };
    save_message(
        &state,
        NewMessage {
            product: &product,
            conversation_id: &conversation_id,
            id: &new_id("msg"),
            role: "user",
            content: &body.message,
            citations: &[],
            status: "complete",
        },
    )
    .await?;
    let citations = answer::retrieve(&state, &product, &body.message, 3).await?;
    let (tx, rx) = mpsc::channel(32);
    let job = Job {
        state: state.clone(),
        product,
        conversation_id,
        message_id: new_id("msg"),
        question: body.message,
        history,
        citations,
        tx,
    };
    tokio::spawn(job.run());
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

async fn recent_history(state: &AppState, conversation_id: &str) -> Result<Vec<(String, String)>> {
    let mut rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT role, content FROM messages WHERE conversation_id = $1 AND status = 'complete' \
         ORDER BY id DESC LIMIT $2",
    )
    .bind(conversation_id)
    .bind(HISTORY_TO_MODEL)
    .fetch_all(&state.db.pool)
    .await?;
    rows.reverse();
    Ok(rows)
}

struct Job {
    state: AppState,
    product: String,
    conversation_id: String,
    message_id: String,
    question: String,
    history: Vec<(String, String)>,
    citations: Vec<Citation>,
    tx: mpsc::Sender<std::result::Result<Event, Infallible>>,
}

/// How the producer ended.
enum End {
    Done(String),
    Failed(&'static str, String),
    ClientGone,
}

fn event(name: &str, data: &Value) -> std::result::Result<Event, Infallible> {
    Ok(Event::default().event(name).data(data.to_string()))
}

impl Job {
    async fn send(&self, name: &str, data: Value) -> bool {
        self.tx.send(event(name, &data)).await.is_ok()
    }

    async fn run(self) {
        let metrics = self.state.metrics.clone();
        metrics.chat_streams.inc();
        let mut text = String::new();
        let end = self.produce(&mut text).await;
        metrics.chat_streams.dec();
        let (status, terminal) = match &end {
            End::Done(reason) => (
                "complete",
                Some((
                    "done",
                    json!({"message_id": self.message_id, "finish_reason": reason, "status": "complete"}),
                )),
            ),
            End::Failed(code, message) => (
                "failed",
                Some(("error", json!({"code": code, "message": message}))),
            ),
            End::ClientGone => ("cancelled", None),
        };
        let saved = save_message(
            &self.state,
            NewMessage {
                product: &self.product,
                conversation_id: &self.conversation_id,
                id: &self.message_id,
                role: "assistant",
                content: &text,
                citations: &self.citations,
                status,
            },
        )
        .await;
        if let Err(e) = saved {
            tracing::warn!(error = %e, "could not save the assistant's message");
        }
        if matches!(end, End::ClientGone) {
            tracing::info!(conversation = %self.conversation_id, "chat client left; stopped");
        }
        if let Some((name, data)) = terminal {
            self.send(name, data).await;
        }
    }

    async fn produce(&self, text: &mut String) -> End {
        let backend = if self.state.config.llm.is_some() {
            "openai"
        } else {
            "builtin"
        };
        let meta = json!({
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
            "backend": backend,
            "model": self.state.config.llm.as_ref().map(|l| l.model.clone()),
        });
        if !self.send("meta", meta).await {
            return End::ClientGone;
        }
        for c in &self.citations {
            if !self.send("citation", json!(c)).await {
                return End::ClientGone;
            }
        }
        match &self.state.config.llm {
            None => {
                for piece in answer::pieces(&answer::compose(&self.question, &self.citations)) {
                    text.push_str(&piece);
                    if !self.send("delta", json!({ "text": piece })).await {
                        return End::ClientGone;
                    }
                }
                End::Done("stop".into())
            }
            Some(llm) => self.stream_model(llm, text).await,
        }
    }

    async fn stream_model(&self, llm: &LlmConfig, text: &mut String) -> End {
        match self.open_model_stream(llm).await {
            Ok(resp) => self.relay_model_stream(resp, text).await,
            Err(end) => end,
        }
    }

    /// Sends the conversation to the model and returns its streaming answer.
    async fn open_model_stream(
        &self,
        llm: &LlmConfig,
    ) -> std::result::Result<reqwest::Response, End> {
        let mut messages =
            vec![json!({"role": "system", "content": answer::system_prompt(&self.citations)})];
        for (role, content) in &self.history {
            messages.push(json!({"role": role, "content": content}));
        }
        messages.push(json!({"role": "user", "content": self.question}));
        let mut req = self
            .state
            .http
            .post(format!("{}/chat/completions", llm.base_url))
            .json(&json!({"model": llm.model, "stream": true, "messages": messages}));
        if let Some(key) = &llm.api_key {
            req = req.bearer_auth(key.expose());
        }
        let resp = tokio::select! {
            r = req.send() => r,
            () = self.tx.closed() => return Err(End::ClientGone),
        };
        let resp = resp.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out".to_owned()
            } else {
                e.without_url().to_string()
            };
            End::Failed(
                "upstream_unreachable",
                format!("the assistant backend could not be reached: {why}"),
            )
        })?;
        if !resp.status().is_success() {
            return Err(End::Failed(
                "upstream_error",
                format!("the assistant backend answered {}", resp.status()),
            ));
        }
        Ok(resp)
    }

    /// Relays the model's server-sent events to the client as deltas.
    async fn relay_model_stream(&self, resp: reqwest::Response, text: &mut String) -> End {
        let mut body = resp.bytes_stream();
        let mut parser = SseParser::default();
        let mut finish_reason = String::from("stop");
        loop {
            let chunk = tokio::select! {
                c = tokio::time::timeout(IDLE_TIMEOUT, body.next()) => c,
                () = self.tx.closed() => return End::ClientGone,
            };
            let bytes = match chunk {
                Err(_) => {
                    return End::Failed(
                        "upstream_timeout",
                        "the assistant backend went silent".into(),
                    );
                }
                Ok(None) => return End::Done(finish_reason),
                Ok(Some(Err(e))) => {
                    return End::Failed(
                        "upstream_error",
                        format!("reading the backend's stream: {}", e.without_url()),
                    );
                }
                Ok(Some(Ok(b))) => b,
            };
            for ev in parser.feed(&bytes) {
                if let Some(end) = self.model_event(&ev.data, text, &mut finish_reason).await {
                    return end;
                }
            }
        }
    }

    /// One event of the model's stream; `Some` when the answer ends with it.
    async fn model_event(&self, data: &str, text: &mut String, finish: &mut String) -> Option<End> {
        if data.trim() == "[DONE]" {
            return Some(End::Done(finish.clone()));
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return None;
        };
        if let Some(err) = v.get("error") {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error");
            return Some(End::Failed(
                "upstream_error",
                format!("the assistant backend failed: {msg}"),
            ));
        }
        let choice = &v["choices"][0];
        if let Some(piece) = choice["delta"]["content"].as_str()
            && !piece.is_empty()
        {
            text.push_str(piece);
            if !self.send("delta", json!({ "text": piece })).await {
                return Some(End::ClientGone);
            }
        }
        if let Some(r) = choice["finish_reason"].as_str() {
            *finish = r.to_owned();
        }
        None
    }
}

/// List conversations, newest first.
#[utoipa::path(get, operation_id = "chat_list", path = "/api/assistant/chat", tag = "assistant",
    params(PageQuery),
    responses((status = 200, body = Paginated<Conversation>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Paginated<Conversation>>> {
    let page = q.page()?;
    let rows: Paginated<ConversationRow> = db::page_of(
        &state.db,
        "conversations",
        CONVERSATION_COLUMNS,
        &caller.product,
        &page,
    )
    .await?;
    Ok(Json(rows.map(ConversationRow::into_api)))
}

/// A conversation's history.
#[utoipa::path(get, operation_id = "chat_history", path = "/api/assistant/chat/{conversation_id}", tag = "assistant",
    params(("conversation_id" = String, Path, description = "Conversation id")),
    responses((status = 200, body = ConversationHistory), (status = 404, body = ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ConversationHistory>> {
    let conversation = conversation(&state, &caller.product, &id).await?;
    let mut rows = sqlx::query_as::<_, MessageRow>(
        "SELECT id, role, content, citations, status, created_at FROM messages \
         WHERE product = $1 AND conversation_id = $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(&caller.product)
    .bind(&id)
    .bind(HISTORY_LIMIT)
    .fetch_all(&state.db.pool)
    .await?;
    rows.reverse();
    Ok(Json(ConversationHistory {
        conversation: conversation.into_api(),
        messages: rows
            .into_iter()
            .map(|m| Message {
                citations: serde_json::from_str(&m.citations).unwrap_or_default(),
                id: m.id,
                role: m.role,
                content: m.content,
                status: m.status,
                created_at: rfc3339(m.created_at),
            })
            .collect(),
    }))
}

/// Delete a conversation and its messages.
#[utoipa::path(delete, operation_id = "chat_delete", path = "/api/assistant/chat/{conversation_id}", tag = "assistant",
    params(("conversation_id" = String, Path, description = "Conversation id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode> {
    db::delete_with_children(
        &state.db,
        "conversations",
        &caller.product,
        &id,
        &[("messages", "conversation_id")],
        "conversation",
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
