//! Test support: a real API on loopback over a fresh SQLite file or a fresh
//! PostgreSQL database, and a client that speaks as the proxy would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use prodgy_api::config::Secret;
use prodgy_api::{Config, Server};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

pub mod s3;

/// Which database a test runs on.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// PostgreSQL when `PRODGY_TEST_DATABASE_URL` is set.
    pub fn postgres() -> Option<Backend> {
        std::env::var("PRODGY_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .map(Backend::Postgres)
    }
}

/// Runs a case on SQLite and, when configured, on PostgreSQL.
#[macro_export]
macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$case($crate::support::Backend::Sqlite).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    match $crate::support::Backend::postgres() {
                        Some(b) => super::$case(b).await,
                        None => eprintln!("skipped: set PRODGY_TEST_DATABASE_URL to run on PostgreSQL"),
                    }
                }
            }
        )*
    };
}

/// Where file bytes go.
#[derive(Clone, Copy, Debug)]
pub enum Store {
    /// `<data-dir>/blobs`.
    Disk,
    /// A bucket on a real S3 server ([`s3::Moto`]).
    S3,
}

/// Runs a storage case on local disk (SQLite, and PostgreSQL when
/// configured) and on a real S3 server (SQLite).
#[macro_export]
macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                use $crate::support::{Backend, Store};
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn disk_sqlite() {
                    super::$case(Backend::Sqlite, Store::Disk).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn disk_postgres() {
                    match Backend::postgres() {
                        Some(b) => super::$case(b, Store::Disk).await,
                        None => eprintln!("skipped: set PRODGY_TEST_DATABASE_URL to run on PostgreSQL"),
                    }
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn s3_sqlite() {
                    super::$case(Backend::Sqlite, Store::S3).await;
                }
            }
        )*
    };
}

/// The key prefix the S3 cases store under, as `--s3-prefix` would.
pub const S3_PREFIX: &str = "tenant-x";

/// A data directory and database that outlive servers started on them.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub database_url: String,
    pg: Option<(String, String)>,
    pub key: String,
    /// The S3 server the bytes go to; local disk when `None`.
    pub s3: Option<s3::Moto>,
}

impl Env {
    /// An environment whose bytes go to `store`.
    pub async fn on(backend: &Backend, store: Store) -> Env {
        let mut env = Env::new(backend).await;
        if let Store::S3 = store {
            env.s3 = Some(s3::Moto::start().await);
        }
        env
    }

    /// Every stored blob's key relative to the store's root
    /// (`files/blb_…`), read from the disk or the bucket itself.
    pub async fn blobs(&self) -> Vec<String> {
        if let Some(moto) = &self.s3 {
            let prefix = format!("{S3_PREFIX}/");
            return moto
                .keys(&prefix)
                .await
                .into_iter()
                .map(|k| k.strip_prefix(&prefix).unwrap_or(&k).to_owned())
                .collect();
        }
        let root = self.data_dir().join("blobs");
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(&root).unwrap().to_owned();
                    out.push(rel.display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    pub async fn new(backend: &Backend) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let key = prodgy_api::crypto::random_key_base64().unwrap();
        match backend {
            Backend::Sqlite => Env {
                database_url: prodgy_api::db::Db::sqlite_url(dir.path()),
                dir,
                pg: None,
                key,
                s3: None,
            },
            Backend::Postgres(admin) => {
                let name = format!(
                    "prodgy_test_{}",
                    prodgy_api::ids::new_id("t").to_lowercase().replace('_', "")
                );
                let pool = sqlx::PgPool::connect(admin)
                    .await
                    .expect("connect to PostgreSQL");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                let mut url = reqwest::Url::parse(admin).unwrap();
                url.set_path(&name);
                Env {
                    database_url: url.to_string(),
                    dir,
                    pg: Some((admin.clone(), name)),
                    key,
                    s3: None,
                }
            }
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// A config on this environment with short queue timings.
    pub fn config(&self) -> Config {
        let mut c = Config::for_data_dir(self.dir.path());
        c.database_url = Secret(self.database_url.clone());
        c.encryption_key = Some(Secret(self.key.clone()));
        c.queue.workers = 2;
        c.queue.poll_interval = Duration::from_millis(100);
        // Test upstreams listen on loopback.
        c.queue.allow_private_networks = true;
        c.queue.lease = Duration::from_secs(2);
        if let Some(moto) = &self.s3 {
            c.store = moto.store(S3_PREFIX);
        }
        c
    }

    pub async fn start(&self) -> Running {
        self.start_with(self.config()).await
    }

    pub async fn start_with(&self, config: Config) -> Running {
        let server = Server::start(config).await.expect("server starts");
        Running {
            base: format!("http://{}", server.addr),
            ops: format!("http://{}", server.ops_addr),
            server: Some(server),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            // Drop runs outside async code; a private runtime on a thread
            // removes the database even when the test failed.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(pool) = sqlx::PgPool::connect(&admin).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&pool)
                                .await;
                    }
                });
            })
            .join();
        }
    }
}

/// A started server.
pub struct Running {
    pub base: String,
    pub ops: String,
    pub server: Option<Server>,
}

impl Running {
    pub fn client(&self, product: &str) -> Api {
        Api {
            base: self.base.clone(),
            http: reqwest::Client::new(),
            product: Some(product.to_owned()),
            scopes: "*".into(),
        }
    }

    pub fn state(&self) -> &prodgy_api::AppState {
        self.server.as_ref().unwrap().state()
    }

    /// The ops port's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.ops);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// Stops as a crash would.
    pub fn kill(mut self) {
        if let Some(s) = self.server.take() {
            s.kill();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.kill();
        }
    }
}

/// A client that sends the identity headers the proxy injects.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub product: Option<String>,
    pub scopes: String,
}

impl Api {
    pub fn with_scopes(&self, scopes: &str) -> Api {
        Api {
            scopes: scopes.into(),
            ..self.clone()
        }
    }

    pub fn anonymous(&self) -> Api {
        Api {
            product: None,
            ..self.clone()
        }
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(p) = &self.product {
            r = r
                .header("x-prodgy-product", p)
                .header("x-prodgy-scopes", &self.scopes)
                .header("x-prodgy-token", format!("{p}/test-token"))
                .header("x-prodgy-token-uid", "uid-1");
        }
        r
    }

    pub async fn send(&self, r: RequestBuilder) -> (StatusCode, Value) {
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.req(Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.req(Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.req(Method::POST, path).json(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.req(Method::PUT, path).json(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.req(Method::PATCH, path).json(body)).await
    }

    /// Polls an execution until it leaves queued/running.
    pub async fn wait_execution(&self, agent: &str, execution: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, body) = self
                .get(&format!("/api/agent-base/{agent}/executions/{execution}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let s = body["status"].as_str().unwrap().to_owned();
            if s == "succeeded" || s == "failed" {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "execution still {s} after {within:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Asserts an error body of the documented shape and returns its code.
/// `request` with the identity the proxy injects for an unrestricted token
/// of the product `acme`.
pub fn as_acme(request: RequestBuilder) -> RequestBuilder {
    request
        .header("x-prodgy-product", "acme")
        .header("x-prodgy-scopes", "*")
}

pub fn error_code(body: &Value) -> &str {
    let e = &body["error"];
    assert!(e["message"].is_string(), "no error message in {body}");
    e["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

/// A request an upstream test server received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

/// A local HTTP server that records requests. `/fail/*` answers 500,
/// `/hang/*` never answers the first call (then answers 200), everything else
/// echoes the request as JSON.
pub struct Upstream {
    pub base: String,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        use axum::extract::Request;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let hangs = Arc::new(AtomicUsize::new(0));
        let (s, h) = (seen.clone(), hangs.clone());
        let app = axum::Router::new().fallback(move |req: Request| {
            let (seen, hangs) = (s.clone(), h.clone());
            async move {
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let path = parts.uri.path().to_owned();
                let record = Seen {
                    method: parts.method.to_string(),
                    path: path.clone(),
                    query: parts.uri.query().map(str::to_owned),
                    headers: parts.headers.clone(),
                    body: body.clone(),
                };
                seen.lock().unwrap().push(record);
                if path.starts_with("/fail") {
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        axum::Json(serde_json::json!({"oops": true})),
                    );
                }
                if path.starts_with("/hang") && hangs.fetch_add(1, Ordering::SeqCst) == 0 {
                    std::future::pending::<()>().await;
                }
                (
                    StatusCode::OK,
                    axum::Json(serde_json::json!({
                        "method": parts.method.to_string(),
                        "path": path,
                        "body": body,
                    })),
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Upstream { base, seen, task }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub async fn wait_requests(&self, n: usize, within: Duration) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let r = self.requests();
            if r.len() >= n {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "upstream saw {} requests, wanted {n}",
                r.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Installs an agent and a manual trigger; returns (agent id, trigger id).
pub async fn agent_with_trigger(api: &Api, agent: Value) -> (String, String) {
    let (s, a) = api.post("/api/agent-base", &agent).await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    let agent_id = a["id"].as_str().unwrap().to_owned();
    let (s, t) = api
        .post(
            "/api/agent-base/triggers",
            &serde_json::json!({"agent_id": agent_id, "name": "run", "kind": "manual"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    (agent_id, t["id"].as_str().unwrap().to_owned())
}

/// Executes a trigger; returns the execution id.
pub async fn execute(api: &Api, trigger: &str, input: Value) -> String {
    let (s, b) = api
        .post(
            &format!("/api/agent-base/triggers/{trigger}/execute"),
            &serde_json::json!({ "input": input }),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    b["execution_id"].as_str().unwrap().to_owned()
}

/// Sends a request byte for byte (no URL normalisation) with the identity
/// of `product`; returns the status and body.
pub async fn raw(
    base: &str,
    product: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nx-prodgy-product: {product}\r\n\
         x-prodgy-scopes: *\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

impl Api {
    /// Uploads `body` as `name` with PUT.
    pub async fn put_file(
        &self,
        name: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .req(Method::PUT, &format!("/api/knowledge-base/storage/{name}"))
            .body(body);
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        self.send(r).await
    }

    /// Requests a stored file with extra headers.
    pub async fn file(
        &self,
        method: Method,
        name: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut r = self.req(method, &format!("/api/knowledge-base/storage/{name}"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.unwrap()
    }
}

/// A port free at the time of asking.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports: all are held until the last is picked, so
/// two calls to `bind(0)` cannot hand out the same one twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held = [(); N].map(|()| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    held.map(|l| l.local_addr().unwrap().port())
}

/// The `prodgy-api` binary on free loopback ports, once `/readyz` answers.
pub struct Binary {
    pub child: std::process::Child,
    pub data: String,
    pub ops: String,
}

impl Binary {
    pub async fn start(mut command: std::process::Command) -> Binary {
        let [port, ops_port] = free_ports();
        let child = command
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--ops-listen",
                &format!("127.0.0.1:{ops_port}"),
            ])
            .spawn()
            .unwrap();
        let bin = Binary {
            child,
            data: format!("http://127.0.0.1:{port}"),
            ops: format!("http://127.0.0.1:{ops_port}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/readyz", bin.ops)).await
                && r.status().is_success()
            {
                return bin;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the binary did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn command() -> std::process::Command {
        std::process::Command::new(env!("CARGO_BIN_EXE_prodgy-api"))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
