//! Many replicas, many tokens: a fresh `prodgy-proxy` against the Kubernetes
//! API test server holding N hashed Secrets. Measures how long the proxy
//! takes to be ready, its memory, and what its list and watch cost the API
//! server (requests, pages, bytes), then checks that a change arrives over
//! the watch, from the list's resourceVersion, without a relist.
//!
//! The proxy talks to the API server through a counting TCP relay, so every
//! byte it asks for is seen; the test server logs each request line (with
//! its query: `limit`, `continue`, `resourceVersion`). Prints one
//! `key value` line per figure for `bench/kube.sh` to tabulate.
#![expect(clippy::print_stdout, reason = "the figures are this program's output")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use prodgy_crds::{HashedRecord, Token};
use prodgy_kube_fake::FakeApiServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAMESPACE: &str = prodgy_crds::hashed::DEFAULT_NAMESPACE;

/// Fresh-proxy load measurement against the Kubernetes API test server.
#[derive(Debug, Parser)]
struct Args {
    /// Hashed Secrets stored before the proxy starts.
    #[arg(long, default_value_t = 100_000)]
    secrets: usize,
    /// The proxy binary.
    #[arg(long)]
    proxy: PathBuf,
    /// CPU the proxy is pinned to (`taskset`), as a 1-CPU sidecar.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Working directory (kubeconfig, logs).
    #[arg(long)]
    work: PathBuf,
    /// How long to watch the idle proxy's API traffic after it is ready.
    #[arg(long, default_value = "12")]
    idle_secs: u64,
    /// Rounds of deactivate, activate and regenerate timed on one token.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

/// Bytes relayed each way, summed over connections.
#[derive(Debug, Default)]
struct Traffic {
    to_api: AtomicU64,
    from_api: AtomicU64,
    connections: AtomicU64,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<Traffic>,
    up: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        let c = if up { &count.to_api } else { &count.from_api };
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

/// A TCP relay to `api` on a loopback port, counting bytes.
async fn relay(api: SocketAddr, count: Arc<Traffic>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(api).await else {
                continue;
            };
            count.connections.fetch_add(1, Ordering::Relaxed);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, count.clone(), true));
            tokio::spawn(pump(sr, cw, count.clone(), false));
        }
    });
    Ok(addr)
}

/// Request lines the test server logged (`GET /api/v1/...?...`).
#[derive(Clone, Debug, Default)]
struct Requests(Arc<Mutex<Vec<String>>>);

impl Requests {
    fn snapshot(&self) -> Vec<String> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

struct Recorder(Requests);

impl std::io::Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        if let (Some(m), Some(u)) = (field(&line, "method="), field(&line, "uri="))
            && let Ok(mut v) = (self.0).0.lock()
        {
            v.push(format!("{m} {u}"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    Some(rest.split_whitespace().next().unwrap_or(rest))
}

fn record(i: usize, t: &Token) -> HashedRecord {
    HashedRecord::active(
        &format!("team-{}", i % 100),
        &format!("token-{i}"),
        &uid(i),
        "acme",
        &t.hash(),
    )
}

fn secret(i: usize, t: &Token) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::to_value(record(i, t).to_secret(NAMESPACE)?)?)
}

/// Milliseconds from writing `r` to the API server until `token` gets an
/// answer other than `before` from the proxy.
async fn propagate(
    api: &FakeApiServer,
    url: &str,
    r: &HashedRecord,
    token: &Token,
    before: u16,
) -> anyhow::Result<f64> {
    api.put_object("secrets", serde_json::to_value(r.to_secret(NAMESPACE)?)?)?;
    let written = Instant::now();
    while code(url, Some(token)).await == before {
        if written.elapsed() > Duration::from_secs(30) {
            bail!("a change of {} never reached the proxy", r.name);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(written.elapsed().as_secs_f64() * 1000.0)
}

/// The owner's changes, as the operator writes them, reaching a proxy that
/// holds every other token too: deactivate, activate and regenerate
/// `rounds` times on token `i`, then revoke it. Prints the median and the
/// slowest of each (what the 1 s propagation target is about).
async fn propagation(
    api: &FakeApiServer,
    url: &str,
    i: usize,
    first: Token,
    rounds: usize,
) -> anyhow::Result<()> {
    const ACCEPTED: u16 = 200; // accepted, and the upstream answers
    let mut times: [(&str, Vec<f64>); 3] = [
        ("deactivate", vec![]),
        ("activate", vec![]),
        ("regenerate", vec![]),
    ];
    let mut token = first;
    for _ in 0..rounds {
        let mut r = record(i, &token);
        r.state = prodgy_crds::RecordState::Inactive;
        times[0]
            .1
            .push(propagate(api, url, &r, &token, ACCEPTED).await?);
        r.state = prodgy_crds::RecordState::Active;
        times[1].1.push(propagate(api, url, &r, &token, 401).await?);
        let fresh = Token::generate("prod")?;
        times[2]
            .1
            .push(propagate(api, url, &record(i, &fresh), &token, ACCEPTED).await?);
        token = fresh;
    }
    let mut r = record(i, &token);
    r.state = prodgy_crds::RecordState::Revoked;
    let revoke = propagate(api, url, &r, &token, ACCEPTED).await?;
    for (what, mut ms) in times {
        ms.sort_by(f64::total_cmp);
        let (median, max) = (ms[ms.len() / 2], ms[ms.len() - 1]);
        println!("propagation_{what}_ms median {median:.1} max {max:.1} rounds {rounds}");
    }
    println!("propagation_revoke_ms {revoke:.1}");
    Ok(())
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

async fn code(url: &str, token: Option<&Token>) -> u16 {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t.expose());
    }
    req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// The proxy's upstream: answers every request on a connection with an
/// empty 200, so an accepted poll costs one loopback round trip.
async fn upstream() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            // Without it, Nagle holds an answer until the proxy's delayed
            // ACK of the previous one: 40 ms per poll, not the proxy's.
            let _ = conn.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                // Requests here have no body: one read is one request head.
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if conn.write_all(ok).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn spawn_proxy(
    args: &Args,
    kubeconfig: &std::path::Path,
    upstream: SocketAddr,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(args.work.join("proxy.log"))?;
    Command::new("taskset")
        .arg("-c")
        .arg(args.cpu.to_string())
        .arg(&args.proxy)
        .args([
            "--source",
            "kubernetes",
            "--hashed-secret-namespace",
            NAMESPACE,
        ])
        .args([
            "--listen",
            "127.0.0.1:18600",
            "--metrics-addr",
            "127.0.0.1:18601",
        ])
        .args([
            "--upstream",
            &upstream.to_string(),
            "--threads",
            "1",
            "--log-format",
            "json",
        ])
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("start the proxy")
}

fn count(lines: &[String], pred: impl Fn(&str) -> bool) -> usize {
    lines.iter().filter(|l| pred(l)).count()
}

fn param<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let query = line.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// A page of the Secret list (the one-item probes excluded).
fn is_list(l: &str) -> bool {
    l.contains("/secrets") && param(l, "watch").is_none() && param(l, "limit") != Some("1")
}

/// The API reachability probe (`limit=1`, metadata only).
fn is_probe(l: &str) -> bool {
    l.contains("/secrets") && param(l, "watch").is_none() && param(l, "limit") == Some("1")
}

fn is_watch(l: &str) -> bool {
    l.contains("/secrets") && param(l, "watch") == Some("true")
}

fn uid(i: usize) -> String {
    format!("{i:08x}-0000-4000-8000-{i:012x}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;
    let requests = Requests::default();
    let rec = requests.clone();
    tracing_subscriber::fmt()
        .with_env_filter("prodgy_kube_fake=debug")
        .with_ansi(false)
        .with_writer(move || Recorder(rec.clone()))
        .init();

    let api = FakeApiServer::builder().start_blocking()?;
    let started = Instant::now();
    let mut tokens = Vec::new();
    for i in 0..args.secrets {
        let t = Token::generate("prod")?;
        api.put_object("secrets", secret(i, &t)?)?;
        if i < 3 {
            tokens.push(t);
        }
    }
    println!("secrets {}", args.secrets);
    println!("store_secs {:.2}", started.elapsed().as_secs_f64());

    let traffic = Arc::new(Traffic::default());
    let via = relay(api.addr(), traffic.clone()).await?;
    let kubeconfig = args.work.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        api.kubeconfig_yaml()
            .replace(&api.url(), &format!("http://{via}")),
    )?;
    let before = requests.snapshot().len();
    let start = Instant::now();
    let mut child = spawn_proxy(&args, &kubeconfig, upstream().await?)?;
    let pid = child.id();
    let ready = loop {
        if code("http://127.0.0.1:18601/readyz", None).await == 200 {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(120) || child.try_wait()?.is_some() {
            let _ = child.kill();
            bail!(
                "the proxy did not become ready (see {})",
                args.work.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let at_ready = requests.snapshot()[before..].to_vec();
    println!("ready_secs {:.2}", ready.as_secs_f64());
    println!("proxy_cpu_secs_at_ready {:.2}", cpu_secs(pid));
    println!(
        "rss_mb_ready {:.1}",
        status_kb(pid, "VmRSS:") as f64 / 1024.0
    );
    println!("list_requests {}", count(&at_ready, is_list));
    if let Some(limit) = at_ready
        .iter()
        .find(|l| is_list(l))
        .and_then(|l| param(l, "limit"))
    {
        println!("page_limit {limit}");
    }
    println!("watch_requests_at_ready {}", count(&at_ready, is_watch));
    println!(
        "bytes_from_api {}",
        traffic.from_api.load(Ordering::Relaxed)
    );
    println!("bytes_to_api {}", traffic.to_api.load(Ordering::Relaxed));
    if let Some(first) = at_ready.iter().find(|l| is_list(l)) {
        println!("first_list {first}");
    }
    if let Some(last) = at_ready.iter().rfind(|l| is_list(l)) {
        println!("last_list {last}");
    }

    // The tokens are accepted (the upstream answers 200), an unknown one is not.
    let url = "http://127.0.0.1:18600/api/agent-base";
    println!("known_token_status {}", code(url, Some(&tokens[0])).await);
    let stranger = Token::generate("prod")?;
    println!("unknown_token_status {}", code(url, Some(&stranger)).await);

    // A new Secret arrives over the watch, without a relist.
    let lists_before = count(&requests.snapshot()[before..], is_list);
    let added = Instant::now();
    api.put_object("secrets", secret(args.secrets, &stranger)?)?;
    while code(url, Some(&stranger)).await == 401 {
        if added.elapsed() > Duration::from_secs(30) {
            bail!("the new Secret never reached the proxy");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("watch_add_ms {}", added.elapsed().as_millis());
    // The watch breaks: it resumes from its last resourceVersion.
    api.close_watches();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = &tokens[1];
    api.delete_object(
        "secrets",
        Some(NAMESPACE),
        &HashedRecord::secret_name(&uid(1)),
    );
    let deleted = Instant::now();
    while code(url, Some(t)).await != 401 {
        if deleted.elapsed() > Duration::from_secs(30) {
            bail!("the deletion never reached the proxy");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "delete_after_reconnect_ms {}",
        deleted.elapsed().as_millis()
    );
    let third = tokens.pop().context("three tokens kept")?;
    propagation(&api, url, 2, third, args.rounds).await?;

    let idle_from = requests.snapshot().len();
    let bytes_idle = traffic.from_api.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let all = requests.snapshot();
    let idle = &all[idle_from..];
    println!(
        "relists_after_ready {}",
        count(&all[before..], is_list) - lists_before
    );
    println!("idle_secs {}", args.idle_secs);
    println!("idle_requests {}", idle.len());
    println!("idle_probes {}", count(idle, is_probe));
    println!(
        "idle_bytes_from_api {}",
        traffic.from_api.load(Ordering::Relaxed) - bytes_idle
    );
    for w in all[before..].iter().filter(|l| is_watch(l)) {
        println!("watch {w}");
    }
    println!("rss_mb_end {:.1}", status_kb(pid, "VmRSS:") as f64 / 1024.0);
    println!("hwm_mb {:.1}", status_kb(pid, "VmHWM:") as f64 / 1024.0);
    println!(
        "connections {}",
        traffic.connections.load(Ordering::Relaxed)
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
