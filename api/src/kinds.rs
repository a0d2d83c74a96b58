//! Agent kinds: what an agent's `config` means and how an execution runs it.
//!
//! * `http` calls a URL (absolute, or relative to its integration's
//!   `base_url`) with `{{input.x}}` templates in the URL, query, headers and
//!   JSON body, adding the integration's credentials. A non-2xx answer fails
//!   the execution and keeps the response as its output.
//! * `knowledge` answers a question from the product's knowledge base with
//!   cited snippets.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::answer;
use crate::egress;
use crate::error::{Error, Result};
use crate::integrations::{self, Credentials, check_header};
use crate::state::AppState;
use crate::template;
use crate::validate;

/// Kinds an agent may have.
pub const KINDS: [&str; 2] = ["http", "knowledge"];

/// Largest response body an `http` agent keeps.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Config of an `http` agent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// GET (default), POST, PUT, PATCH, DELETE or HEAD.
    #[serde(default = "default_method")]
    pub method: String,
    /// Absolute URL, or a path starting with `/` joined to the integration's base URL.
    pub url: String,
    /// Query parameters (values are templates).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Headers (values are templates).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body template, sent for methods other than GET and HEAD.
    pub body: Option<Value>,
    /// Call timeout in milliseconds (1–300000).
    pub timeout_ms: Option<u64>,
}

fn default_method() -> String {
    "GET".into()
}

/// Config of a `knowledge` agent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeConfig {
    /// The question, a template (default `{{input.question}}`).
    #[serde(default = "default_question")]
    pub question: String,
    /// Documents to cite, 1–20 (default 3).
    #[serde(default = "default_limit")]
    pub limit: u32,
}

fn default_question() -> String {
    "{{input.question}}".into()
}

fn default_limit() -> u32 {
    3
}

/// Checks an agent's kind and config; returns the config to store.
pub fn validate_config(kind: &str, config: &Value, has_integration: bool) -> Result<Value> {
    match kind {
        "http" => {
            let c: HttpConfig = validate::typed("config", config)?;
            let method = c.method.to_ascii_uppercase();
            if !matches!(
                method.as_str(),
                "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD"
            ) {
                return Err(Error::invalid(
                    "config.method",
                    "must be GET, POST, PUT, PATCH, DELETE or HEAD",
                ));
            }
            template::validate(&c.url).map_err(|m| Error::invalid("config.url", m))?;
            if c.url.starts_with('/') {
                if !has_integration {
                    return Err(Error::invalid(
                        "config.url",
                        "a relative URL needs an integration_id to join it to",
                    ));
                }
            } else {
                // Placeholders are checked for syntax above; a sample value
                // lets the rest be checked as a URL.
                let sample = c.url.replace("{{", "").replace("}}", "");
                let url = reqwest::Url::parse(&sample).map_err(|e| {
                    Error::invalid("config.url", format!("not an absolute URL or /path: {e}"))
                })?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(Error::invalid("config.url", "must be an http(s) URL"));
                }
            }
            for (k, v) in &c.query {
                template::validate(v)
                    .map_err(|m| Error::invalid(format!("config.query.{k}"), m))?;
            }
            for (k, v) in &c.headers {
                let field = format!("config.headers.{k}");
                check_header(&field, k, v)?;
                template::validate(v).map_err(|m| Error::invalid(field, m))?;
            }
            if let Some(b) = &c.body {
                template::validate_json(b).map_err(|m| Error::invalid("config.body", m))?;
            }
            if let Some(t) = c.timeout_ms
                && !(1..=300_000).contains(&t)
            {
                return Err(Error::invalid("config.timeout_ms", "must be 1–300000"));
            }
            Ok(config.clone())
        }
        "knowledge" => {
            if config.is_null() {
                return Ok(json!({}));
            }
            let c: KnowledgeConfig = validate::typed("config", config)?;
            template::validate(&c.question).map_err(|m| Error::invalid("config.question", m))?;
            if !(1..=20).contains(&c.limit) {
                return Err(Error::invalid("config.limit", "must be 1–20"));
            }
            Ok(config.clone())
        }
        other => Err(Error::invalid(
            "kind",
            format!(
                "unknown agent kind {other:?}; known kinds: {}",
                KINDS.join(", ")
            ),
        )),
    }
}

/// Why an execution failed: a message and, when there is one, an output.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong (shown as the execution's `error`).
    pub message: String,
    /// Partial output, e.g. the upstream's error response.
    pub output: Option<Value>,
}

impl Failure {
    fn msg(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            output: None,
        }
    }
}

/// What an execution needs to know about its agent.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Product.
    pub product: String,
    /// Kind.
    pub kind: String,
    /// Config.
    pub config: Value,
    /// Integration.
    pub integration_id: Option<String>,
}

/// Runs an agent on an input.
pub async fn run(
    state: &AppState,
    agent: &AgentSpec,
    input: &Value,
) -> std::result::Result<Value, Failure> {
    match agent.kind.as_str() {
        "http" => run_http(state, agent, input).await,
        "knowledge" => run_knowledge(state, agent, input).await,
        other => Err(Failure::msg(format!("unknown agent kind {other:?}"))),
    }
}

async fn run_http(
    state: &AppState,
    agent: &AgentSpec,
    input: &Value,
) -> std::result::Result<Value, Failure> {
    let c: HttpConfig = serde_json::from_value(agent.config.clone())
        .map_err(|e| Failure::msg(format!("stored config: {e}")))?;
    let integration = match &agent.integration_id {
        Some(id) => Some(resolve_integration(state, &agent.product, id).await?),
        None => None,
    };
    let url = http_url(&c, integration.as_ref(), input)?;
    let method = reqwest::Method::from_bytes(c.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| Failure::msg("bad method"))?;
    if !state.config.queue.allow_private_networks
        && let Some(refusal) = egress::literal_refusal(&url)
    {
        return Err(Failure::msg(refusal));
    }
    let req = http_request(state, &c, integration.as_ref(), &method, &url, input)?;
    let started = std::time::Instant::now();
    let resp = req.send().await.map_err(|e| {
        Failure::msg(format!(
            "calling {} {}: {}",
            method,
            redacted(&url),
            describe(e)
        ))
    })?;
    let status = resp.status();
    let mut output = read_output(resp).await?;
    output["duration_ms"] = json!(started.elapsed().as_millis() as u64);
    if status.is_success() {
        Ok(output)
    } else {
        Err(Failure {
            message: format!("{} {} answered {}", method, redacted(&url), status),
            output: Some(output),
        })
    }
}

async fn resolve_integration(
    state: &AppState,
    product: &str,
    id: &str,
) -> std::result::Result<integrations::Resolved, Failure> {
    integrations::resolve(state, product, id)
        .await
        .map_err(|e| match e {
            Error::NotFound(_) => Failure::msg(format!("integration {id} no longer exists")),
            e => Failure::msg(format!("integration {id}: {e}")),
        })
}

/// The agent's URL with its input rendered in, relative to the
/// integration's base URL, with query parameters (and a query credential).
fn http_url(
    c: &HttpConfig,
    integration: Option<&integrations::Resolved>,
    input: &Value,
) -> std::result::Result<reqwest::Url, Failure> {
    let rendered = template::render_url(&c.url, input).map_err(Failure::msg)?;
    let url = match (integration, rendered.starts_with('/')) {
        (Some(i), true) => format!("{}{rendered}", i.config.base_url.trim_end_matches('/')),
        (None, true) => return Err(Failure::msg("relative URL without an integration")),
        (_, false) => rendered,
    };
    let mut url =
        reqwest::Url::parse(&url).map_err(|e| Failure::msg(format!("url {url:?}: {e}")))?;
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in &c.query {
            pairs.append_pair(k, &template::render_text(v, input).map_err(Failure::msg)?);
        }
        if let Some(Credentials::Query { name, value }) =
            integration.and_then(|i| i.credentials.as_ref())
        {
            pairs.append_pair(name, value);
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(url)
}

/// The request: the integration's headers and credentials, the agent's
/// rendered headers and, for methods that carry one, its rendered body.
fn http_request(
    state: &AppState,
    c: &HttpConfig,
    integration: Option<&integrations::Resolved>,
    method: &reqwest::Method,
    url: &reqwest::Url,
    input: &Value,
) -> std::result::Result<reqwest::RequestBuilder, Failure> {
    let timeout = c
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(state.config.queue.http_timeout);
    let mut req = state
        .agent_http
        .request(method.clone(), url.clone())
        .timeout(timeout);
    if let Some(i) = integration {
        for (k, v) in &i.config.headers {
            req = req.header(k, v);
        }
        match &i.credentials {
            Some(Credentials::Bearer { token }) => req = req.bearer_auth(token),
            Some(Credentials::Basic { username, password }) => {
                req = req.basic_auth(username, Some(password));
            }
            Some(Credentials::Header { name, value }) => req = req.header(name, value),
            Some(Credentials::Query { .. }) | None => {}
        }
    }
    for (k, v) in &c.headers {
        let value = template::render_text(v, input).map_err(Failure::msg)?;
        if value.contains(['\r', '\n']) {
            return Err(Failure::msg(format!("header {k}: value contains CR or LF")));
        }
        req = req.header(k, value);
    }
    if let Some(body) = &c.body
        && *method != reqwest::Method::GET
        && *method != reqwest::Method::HEAD
    {
        req = req.json(&template::render_json(body, input).map_err(Failure::msg)?);
    }
    Ok(req)
}

/// The response as the execution's output: status, content type and body
/// (JSON when it says so and fits, else text; at most
/// [`MAX_RESPONSE_BYTES`]).
async fn read_output(resp: reqwest::Response) -> std::result::Result<Value, Failure> {
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut body = Vec::new();
    let mut truncated = false;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| Failure::msg(format!("reading the response: {}", describe(e))))?;
        let room = MAX_RESPONSE_BYTES - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    let parsed = if content_type.contains("json") && !truncated {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    } else {
        Value::String(String::from_utf8_lossy(&body).into_owned())
    };
    Ok(json!({
        "status": status.as_u16(),
        "content_type": content_type,
        "body": parsed,
        "truncated": truncated,
    }))
}

/// A URL without its query string (which may carry a credential).
fn redacted(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

fn describe(e: reqwest::Error) -> String {
    // The innermost cause says why (e.g. an address refused by the egress
    // policy); reqwest's own text would repeat the URL.
    let mut root: &dyn std::error::Error = &e;
    while let Some(next) = root.source() {
        root = next;
    }
    let cause = root.to_string();
    if cause.starts_with("blocked: ") {
        cause
    } else if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else if e.is_redirect() {
        format!("redirect refused: {cause}")
    } else {
        // Without the URL: its query may hold a credential.
        e.without_url().to_string()
    }
}

async fn run_knowledge(
    state: &AppState,
    agent: &AgentSpec,
    input: &Value,
) -> std::result::Result<Value, Failure> {
    let c: KnowledgeConfig = if agent.config.is_null() {
        KnowledgeConfig {
            question: default_question(),
            limit: default_limit(),
        }
    } else {
        serde_json::from_value(agent.config.clone())
            .map_err(|e| Failure::msg(format!("stored config: {e}")))?
    };
    let question = template::render_text(&c.question, input).map_err(Failure::msg)?;
    if question.trim().is_empty() {
        return Err(Failure::msg("the question is empty"));
    }
    let answer = answer::builtin(state, &agent.product, &question, c.limit)
        .await
        .map_err(|e| Failure::msg(format!("knowledge base: {e}")))?;
    Ok(json!({
        "question": question,
        "answer": answer.text,
        "citations": answer.citations,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: Error) -> String {
        match e {
            Error::Invalid { field, .. } => field,
            other => panic!("not invalid: {other}"),
        }
    }

    #[test]
    fn bad_configs_name_their_field() {
        let cases = [
            ("robot", json!({}), "kind"),
            ("http", json!({}), "config"),
            ("http", json!({"url": "ftp://x/"}), "config.url"),
            ("http", json!({"url": "/x"}), "config.url"),
            ("http", json!({"url": "https://h/{{secret}}"}), "config.url"),
            (
                "http",
                json!({"url": "https://h/", "method": "BREW"}),
                "config.method",
            ),
            (
                "http",
                json!({"url": "https://h/", "timeout_ms": 0}),
                "config.timeout_ms",
            ),
            (
                "http",
                json!({"url": "https://h/", "headers": {"bad name": "v"}}),
                "config.headers.bad name",
            ),
            (
                "http",
                json!({"url": "https://h/", "timeout_ms": "x"}),
                "config.timeout_ms",
            ),
            (
                "http",
                json!({"url": "https://h/", "extra": 1}),
                "config.extra",
            ),
            ("knowledge", json!({"limit": 0}), "config.limit"),
            (
                "knowledge",
                json!({"question": "{{nope}}"}),
                "config.question",
            ),
        ];
        for (kind, config, field) in cases {
            let e = validate_config(kind, &config, false).unwrap_err();
            assert_eq!(field_of(e), field, "{kind} {config}");
        }
    }

    #[test]
    fn good_configs_pass() {
        validate_config("http", &json!({"url": "https://h/u/{{input.id}}", "method": "post", "body": {"a": "{{input}}"}}), false).unwrap();
        validate_config("http", &json!({"url": "/u/{{input.id}}"}), true).unwrap();
        validate_config("knowledge", &Value::Null, false).unwrap();
        validate_config(
            "knowledge",
            &json!({"question": "what is {{input.topic}}?", "limit": 5}),
            false,
        )
        .unwrap();
    }
}
