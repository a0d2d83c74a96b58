//! Test harness: a recording upstream, the real `prodgy-proxy` binary on
//! loopback ports, token helpers and a raw TCP client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use prodgy_crds::{HashedRecord, RateLimit, RecordState, Scope, Token};

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Header names (lower-case) and raw values, in order, repeats kept.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Seen {
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }
    pub fn one(&self, name: &str) -> String {
        let v = self.all(name);
        assert_eq!(v.len(), 1, "header {name}: {v:?} in {:?}", self.headers);
        v[0].clone()
    }
}

/// A tiny HTTP server that records every request and answers 200 with a
/// small JSON body; `?delay_ms=N` answers after N ms.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(State(seen): State<Arc<Mutex<Vec<Seen>>>>, req: Request) -> Response {
    let delay = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")))
        .and_then(|v| v.parse::<u64>().ok());
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
    });
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(r#"{"ok":true}"#))
        .unwrap()
}

impl Upstream {
    pub async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(record).with_state(seen.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, seen, task }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free loopback ports: all are held until the last is
/// picked, so two calls to `bind(0)` cannot hand out the same one twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held = [(); N].map(|()| TcpListener::bind("127.0.0.1:0").unwrap());
    held.map(|l| l.local_addr().unwrap().port())
}

/// A token and its record, ready to tweak.
pub struct Issued {
    pub token: Token,
    pub record: HashedRecord,
}

pub fn issue(namespace: &str, name: &str, product: &str) -> Issued {
    let token = Token::generate("prod").unwrap();
    let uid = format!("uid-{name}-{}", &token.hash().to_hex()[..8]);
    let record = HashedRecord::active(namespace, name, &uid, product, &token.hash());
    Issued { token, record }
}

impl Issued {
    pub fn scopes(mut self, s: &[Scope]) -> Self {
        self.record.scopes = s.to_vec();
        self
    }
    pub fn state(mut self, s: RecordState) -> Self {
        self.record.state = s;
        self
    }
    pub fn expires(mut self, at: DateTime<Utc>) -> Self {
        self.record.expires_at = Some(at);
        self
    }
    pub fn rate(mut self, rps: u32, burst: u32) -> Self {
        self.record.rate_limit = Some(RateLimit {
            requests_per_second: rps,
            burst: Some(burst),
        });
        self
    }
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }
    pub fn secret(&self) -> plain::Secret {
        self.record.to_secret("prodgy-tokens").unwrap()
    }
}

pub mod plain {
    pub use k8s_openapi::api::core::v1::Secret;
}

pub fn write_records(path: &Path, records: &[&HashedRecord]) {
    // Write then rename, as a config-map volume update would: the proxy
    // never sees a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(records).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The proxy binary, running.
pub struct Proxy {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct ProxyBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    upstream: SocketAddr,
    wait_ready: bool,
    /// The listen host (`127.0.0.1`; `[::1]` or `[::]` for IPv6).
    host: String,
}

impl ProxyBuilder {
    pub fn file(upstream: SocketAddr, tokens: &Path) -> Self {
        Self {
            args: vec![
                "--source=file".into(),
                format!("--tokens-path={}", tokens.display()),
                "--reload-interval=100ms".into(),
            ],
            env: vec![],
            upstream,
            wait_ready: true,
            host: "127.0.0.1".into(),
        }
    }
    pub fn kube(upstream: SocketAddr, kubeconfig: &Path) -> Self {
        Self {
            args: vec![
                "--source=kubernetes".into(),
                "--hashed-secret-namespace=prodgy-tokens".into(),
                "--sync-probe-interval=200ms".into(),
            ],
            env: vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
            upstream,
            wait_ready: true,
            host: "127.0.0.1".into(),
        }
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Listens on `host` (e.g. `[::1]`) instead of `127.0.0.1`.
    pub fn listen_host(mut self, host: &str) -> Self {
        self.host = host.into();
        self
    }
    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    pub fn start(self) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("proxy.log");
        // A port picked here may be taken before the proxy binds it; retry.
        for _ in 0..5 {
            let [p, m] = free_ports();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_prodgy-proxy"));
            cmd.args(&self.args)
                .arg(format!("--listen={}:{p}", self.host))
                .arg(format!("--metrics-addr=127.0.0.1:{m}"))
                .arg(format!("--upstream={}", self.upstream))
                .arg("--threads=2")
                .arg("--log-format=json")
                .env_remove("KUBECONFIG")
                .env("RUST_LOG", "debug")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            for (k, v) in &self.env {
                cmd.env(k, v);
            }
            let child = cmd.spawn().unwrap();
            let mut proxy = Proxy {
                child: Some(child),
                addr: format!("{}:{p}", self.host.replace("[::]", "[::1]"))
                    .parse()
                    .unwrap(),
                metrics: format!("127.0.0.1:{m}").parse().unwrap(),
                log: log.clone(),
                _dir: None,
            };
            if proxy.wait_up(Duration::from_secs(10)) {
                if self.wait_ready {
                    proxy.wait_ready(Duration::from_secs(10));
                }
                proxy._dir = Some(dir);
                return proxy;
            }
            if let Some(mut c) = proxy.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        panic!(
            "proxy did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Both ports answer.
    fn wait_up(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(c) = self.child.as_mut()
                && c.try_wait().unwrap().is_some()
            {
                return false;
            }
            if ops_get(self.metrics, "/healthz").map(|(s, _)| s) == Some(200)
                && TcpStream::connect(self.addr).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    pub fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.readyz() == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("proxy never became ready: {}", self.logs());
    }

    pub fn readyz(&self) -> u16 {
        ops_get(self.metrics, "/readyz").map_or(0, |(s, _)| s)
    }

    pub fn metrics_text(&self) -> String {
        ops_get(self.metrics, "/metrics").unwrap().1
    }

    /// A metric sample's value (exact series match), or None.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric(&self.metrics_text(), series)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.pid();
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        let mut child = self.child.take()?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// A plain GET on the ops port: `(status, body)`.
pub fn ops_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let resp = raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    Some((resp.status?, resp.body))
}

/// A parsed raw response.
#[derive(Debug, Default)]
pub struct RawResponse {
    pub status: Option<u16>,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// Sends bytes over a fresh connection and reads until close or 3 s.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Option<RawResponse> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(bytes).ok()?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok());
    Some(RawResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// An HTTP client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `GET /api/agent-base` through the proxy with `auth` as the Authorization
/// header: `"ok"` for a 200, otherwise the refusal's `error.code`.
pub async fn code(p: &Proxy, auth: &str) -> String {
    let resp = client()
        .get(p.url("/api/agent-base"))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    if resp.status() == 200 {
        return "ok".into();
    }
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    v["error"]["code"].as_str().unwrap_or("").to_owned()
}

/// Polls `f` until it returns true or `limit` passes; returns the time taken.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The `Content-Length` among head lines (0 without one).
pub fn content_length(head: &[String]) -> usize {
    head.iter()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0)
}

/// One client keep-alive connection, requests sent one after the other.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        Self {
            reader: BufReader::new(s),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    /// Sends `bytes`; `false` when the connection is gone (or the write
    /// stalled for 5 s).
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.reader.get_mut().write_all(bytes).is_ok()
    }

    /// Reads one response: status, head lines, body (by Content-Length).
    pub fn response(&mut self) -> (u16, Vec<String>, String) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            assert!(self.reader.read_line(&mut line).unwrap() > 0, "closed");
            let line = line.trim_end().to_owned();
            if line.is_empty() {
                break;
            }
            lines.push(line);
        }
        let status = lines[0].split(' ').nth(1).unwrap().parse().unwrap();
        let mut body = vec![0; content_length(&lines)];
        self.reader.read_exact(&mut body).unwrap();
        (status, lines, String::from_utf8(body).unwrap())
    }

    pub fn get(&mut self, bearer: &str) -> u16 {
        self.send(
            format!("GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\n\r\n")
                .as_bytes(),
        );
        self.response().0
    }

    pub fn post(&mut self, bearer: &str, body: &str) -> u16 {
        self.send(
            format!(
                "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        self.response().0
    }
}

impl Conn {
    /// Whether the other side closed the connection without sending more.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}

/// The proxy with a file source holding `records`, in front of `upstream`;
/// the directory holding the file lives as long as the returned guard.
pub async fn file_proxy(
    upstream: SocketAddr,
    records: &[&HashedRecord],
) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    write_records(&path, records);
    let b = ProxyBuilder::file(upstream, &path);
    let proxy = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();
    (proxy, dir)
}
