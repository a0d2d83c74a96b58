//! Calls through the proxy, with or without a bearer token.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::{Method, StatusCode};

/// An HTTP client bound to the proxy's base URL.
#[derive(Clone, Debug)]
pub struct Caller {
    base: String,
    client: reqwest::Client,
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// `WWW-Authenticate`, when present.
    pub www_authenticate: Option<String>,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// Reads a response to its end (an SSE stream until the server closes it).
    pub async fn read(resp: reqwest::Response) -> Result<Self> {
        let status = resp.status();
        let www_authenticate = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.text().await.context("reading the body")?;
        Ok(Self {
            status,
            www_authenticate,
            body,
        })
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `error.code` of a JSON error body, if any.
    pub fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_owned)
    }
}

impl Caller {
    /// A caller for `base`, e.g. `http://127.0.0.1:8000`.
    pub fn new(base: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            client,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request. `body` is sent as JSON when given.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        Reply::read(resp)
            .await
            .with_context(|| format!("{method} {path}"))
    }

    /// `GET path` with a token.
    pub async fn get(&self, path: &str, token: &str) -> Result<Reply> {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// Sends a request built by `build` (raw bodies, custom headers).
    pub async fn raw(
        &self,
        build: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        build(&self.client, &self.base)
            .send()
            .await
            .context("sending the request")
    }
}
