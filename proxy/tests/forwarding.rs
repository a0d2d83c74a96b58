//! How the proxy forwards: one upstream connection per client connection, a
//! stale upstream connection retried or avoided, `Expect: 100-continue`
//! forwarded and the upstream's 100 relayed, hop-by-hop headers kept on their
//! hop, early answers relayed while the body is still coming, and the bounds
//! on what a client still sends after one. The upstream here is a raw TCP
//! server, so the test sees connections, not just requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prodgy_proxy::proxy::{LINGER, LINGER_BYTES};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// A request as the raw upstream saw it: head lines and body.
type Seen = (Vec<String>, Vec<u8>);

/// An upstream speaking just enough HTTP/1.1: it records each request (head
/// lines and body), answers `Expect: 100-continue` with a 100, answers `200 ok`, and either keeps the connection or
/// closes it after one response without saying so (as a server whose idle
/// timeout fires does).
struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Connections the proxy closed.
    closed: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(close_after_each: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (c, r, gone) = (connections.clone(), requests.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let (r, gone) = (r.clone(), gone.clone());
                tokio::spawn(async move {
                    let mut sock = tokio::io::BufReader::new(sock);
                    loop {
                        let mut lines = Vec::new();
                        loop {
                            let mut line = String::new();
                            if sock.read_line(&mut line).await.unwrap_or(0) == 0 {
                                gone.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            let line = line.trim_end().to_owned();
                            if line.is_empty() {
                                break;
                            }
                            lines.push(line);
                        }
                        // An answer before the body, the connection kept: a
                        // body sent anyway would be read as the next head.
                        if lines
                            .iter()
                            .any(|l| l.eq_ignore_ascii_case("x-answer-early: yes"))
                        {
                            r.lock().unwrap().push((lines, Vec::new()));
                            let out = sock.get_mut();
                            out.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 7\r\n\r\ntoo big")
                                .await
                                .unwrap();
                            continue;
                        }
                        if lines
                            .iter()
                            .any(|l| l.eq_ignore_ascii_case("expect: 100-continue"))
                        {
                            let out = sock.get_mut();
                            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                                .await
                                .unwrap();
                        }
                        let body = read_body(&mut sock, &lines).await;
                        r.lock().unwrap().push((lines, body));
                        let out = sock.get_mut();
                        out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .unwrap();
                        if close_after_each {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            closed,
            requests,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_keeps_its_upstream_connection() {
    let t = issue("ns", "keeper", "acme");
    let up = RawUpstream::start(false).await;
    let (proxy, _dir) = file_proxy(up.addr, &[&t.record]).await;
    let bearer = t.bearer();
    let addr = proxy.addr;
    let statuses = tokio::task::spawn_blocking(move || {
        let mut c = Conn::connect(addr);
        let mut s: Vec<u16> = (0..5).map(|_| c.get(&bearer)).collect();
        s.push(c.post(&bearer, "hello"));
        s
    })
    .await
    .unwrap();
    assert_eq!(statuses, [200; 6]);
    assert_eq!(up.requests().len(), 6);
    assert_eq!(
        up.connections(),
        1,
        "one upstream connection for one client connection"
    );
    assert_eq!(up.requests()[5].1, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_closed_while_idle_is_not_an_error() {
    let t = issue("ns", "stale", "acme");
    let up = RawUpstream::start(true).await;
    let (proxy, _dir) = file_proxy(up.addr, &[&t.record]).await;
    let bearer = t.bearer();
    let addr = proxy.addr;
    let statuses = tokio::task::spawn_blocking(move || {
        let mut c = Conn::connect(addr);
        let mut s = Vec::new();
        for i in 0..6 {
            // Let the upstream's close arrive before the next request.
            std::thread::sleep(Duration::from_millis(50));
            // Without a body: sent on the kept connection, then retried on
            // a fresh one. With a body: the close is noticed before sending.
            s.push(if i % 2 == 0 {
                c.get(&bearer)
            } else {
                c.post(&bearer, "data")
            });
        }
        s
    })
    .await
    .unwrap();
    assert_eq!(statuses, [200; 6]);
    let seen = up.requests();
    assert_eq!(seen.len(), 6, "each request reached the upstream once");
    assert!(seen.iter().skip(1).step_by(2).all(|(_, b)| b == b"data"));
    assert!(up.connections() >= 6);
    assert_eq!(
        proxy.metric(r#"prodgy_proxy_upstream_errors_total{kind="other"}"#),
        Some(0.0)
    );
}

/// The body after `head`: by Content-Length, or decoded from its chunks
/// (without trailers), each checked to end in CRLF.
async fn read_body(sock: &mut (impl tokio::io::AsyncBufRead + Unpin), head: &[String]) -> Vec<u8> {
    let chunked = head
        .iter()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    if !chunked {
        let mut body = vec![0; content_length(head)];
        sock.read_exact(&mut body).await.unwrap();
        return body;
    }
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        sock.read_line(&mut size).await.unwrap();
        let n = usize::from_str_radix(size.trim_end(), 16).unwrap();
        let mut data = vec![0; n + 2];
        sock.read_exact(&mut data).await.unwrap();
        assert_eq!(&data[n..], b"\r\n", "a chunk not ended by CRLF");
        if n == 0 {
            return body;
        }
        body.extend_from_slice(&data[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_cut_anywhere_goes_up_whole_and_once() {
    let t = issue("ns", "chunks", "acme");
    let up = RawUpstream::start(false).await;
    let (proxy, _dir) = file_proxy(up.addr, &[&t.record]).await;
    let bearer = t.bearer();
    let addr = proxy.addr;
    // Written one by one, 30 ms apart, as a slow or busy client's reads
    // come: a chunk-size line alone, data cut in two, a CRLF alone, the
    // terminator cut after its size line.
    let pieces: [&[u8]; 7] = [
        b"5\r\n",
        b"hel",
        b"lo",
        b"\r\n",
        b"6\r\n world\r\n",
        b"0\r\n",
        b"\r\n",
    ];
    let answers = tokio::task::spawn_blocking(move || {
        let mut c = Conn::connect(addr);
        c.send(
            format!(
                "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\n\
                 Transfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        );
        for p in pieces {
            std::thread::sleep(Duration::from_millis(30));
            c.send(p);
        }
        let first = c.response().0;
        // Both connections are still in step: the next request is answered.
        (first, c.get(&bearer))
    })
    .await
    .unwrap();
    assert_eq!(answers, (200, 200));
    let seen = up.requests();
    let firsts: Vec<&str> = seen.iter().map(|(h, _)| h[0].as_str()).collect();
    assert_eq!(
        firsts,
        [
            "POST /api/agent-base HTTP/1.1",
            "GET /api/agent-base HTTP/1.1"
        ]
    );
    assert_eq!(seen[0].1, b"hello world");
    assert_eq!(up.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_goes_upstream_and_hop_by_hop_headers_stay_behind() {
    let t = issue("ns", "hops", "acme");
    let up = RawUpstream::start(false).await;
    let (proxy, _dir) = file_proxy(up.addr, &[&t.record]).await;
    let bearer = t.bearer();
    let addr = proxy.addr;
    let (interim, last, next) = tokio::task::spawn_blocking(move || {
        let mut c = Conn::connect(addr);
        c.send(
            format!(
                "POST /api/agent-base/a%20b?q=%E2%9C%93&x=1 HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\n\
                 Expect: 100-continue\r\nContent-Length: 5\r\nConnection: keep-alive, Upgrade\r\n\
                 Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\
                 Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n"
            )
            .as_bytes(),
        );
        // The upstream's 100, relayed: the body is asked for only after
        // the token was accepted and the upstream wants it.
        let interim = c.response().0;
        c.send(b"hello");
        let last = c.response();
        // The connection is still usable after an Expect exchange.
        (interim, last, c.get(&bearer))
    })
    .await
    .unwrap();
    assert_eq!(interim, 100);
    assert_eq!((last.0, last.2.as_str()), (200, "ok"));
    assert_eq!(next, 200);
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    let (head, body) = &seen[0];
    assert_eq!(body, b"hello");
    assert_eq!(
        head[0],
        "POST /api/agent-base/a%20b?q=%E2%9C%93&x=1 HTTP/1.1"
    );
    let names: Vec<String> = head[1..]
        .iter()
        .map(|l| l.split(':').next().unwrap().to_ascii_lowercase())
        .collect();
    assert!(names.iter().any(|n| n == "expect"), "{head:?}");
    for hop in [
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "http2-settings",
        "proxy-connection",
        "authorization",
    ] {
        assert!(!names.iter().any(|n| n == hop), "{hop} forwarded: {head:?}");
    }
    assert!(names.iter().any(|n| n == "x-kept"), "{head:?}");
    assert!(names.iter().any(|n| n == "x-prodgy-token"), "{head:?}");

    // A refused request with Expect gets its refusal, not a 100.
    let refused = tokio::task::spawn_blocking(move || {
        let mut c = Conn::connect(addr);
        c.send(b"POST /api/agent-base HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
        c.response().0
    })
    .await
    .unwrap();
    assert_eq!(refused, 401);
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_reaches_the_client_and_neither_connection_is_reused() {
    let t = issue("ns", "early", "acme");
    let up = RawUpstream::start(false).await;
    let (proxy, _dir) = file_proxy(up.addr, &[&t.record]).await;
    let bearer = t.bearer();
    let addr = proxy.addr;
    let (answer, closed, next) = tokio::task::spawn_blocking(move || {
        let mut c = Conn::connect(addr);
        // Part of a 100 KB body: the upstream answers on the head alone.
        c.send(
            format!(
                "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\n\
                 X-Answer-Early: yes\r\nContent-Length: 100000\r\n\r\n{}",
                "x".repeat(1000)
            )
            .as_bytes(),
        );
        let answer = c.response();
        let closed = c.closed();
        (answer, closed, Conn::connect(addr).get(&bearer))
    })
    .await
    .unwrap();
    let (status, head, body) = answer;
    assert_eq!((status, body.as_str()), (413, "too big"));
    assert!(
        head.iter()
            .any(|l| l.eq_ignore_ascii_case("connection: close")),
        "{head:?}"
    );
    assert!(closed, "the client connection was left half-read");
    assert_eq!(next, 200);
    // The upstream connection holding the unsent body is closed, not
    // pooled.
    let gone = eventually(Duration::from_secs(3), || async {
        up.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        gone.is_some(),
        "the out-of-step upstream connection was kept"
    );
    // The next request went on a fresh upstream connection, not after the
    // unsent body on the old one.
    assert_eq!(up.connections(), 2);
    let firsts: Vec<String> = up
        .requests()
        .into_iter()
        .map(|(h, _)| h[0].clone())
        .collect();
    assert_eq!(
        firsts,
        [
            "POST /api/agent-base HTTP/1.1",
            "GET /api/agent-base HTTP/1.1"
        ]
    );
}

/// Sends a request the upstream answers on its head, then goes on sending
/// `block` every `pause` as if the answer had not come; returns what was
/// sent after the answer and how long until the proxy ended the connection.
fn send_until_cut_off(
    addr: SocketAddr,
    bearer: &str,
    block: usize,
    pause: Duration,
) -> (usize, Duration) {
    let mut c = Conn::connect(addr);
    c.send(
        format!(
            "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\n\
             X-Answer-Early: yes\r\nContent-Length: {}\r\n\r\n",
            1u64 << 40
        )
        .as_bytes(),
    );
    let (status, _, body) = c.response();
    assert_eq!((status, body.as_str()), (413, "too big"));
    let (start, block, mut sent) = (Instant::now(), vec![b'x'; block], 0);
    while c.try_send(&block) {
        sent += block.len();
        assert!(
            start.elapsed() < 3 * LINGER,
            "still open after {sent} bytes"
        );
        std::thread::sleep(pause);
    }
    (sent, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_sending_after_an_early_answer_is_cut_off_within_the_bounds() {
    let t = issue("ns", "linger", "acme");
    let up = RawUpstream::start(false).await;
    let (proxy, _dir) = file_proxy(up.addr, &[&t.record]).await;
    let (addr, fast_bearer, slow_bearer) = (proxy.addr, t.bearer(), t.bearer());
    // As fast as it can: the byte bound ends it, long before the time bound.
    let fast = tokio::task::spawn_blocking(move || {
        send_until_cut_off(addr, &fast_bearer, 64 * 1024, Duration::ZERO)
    });
    // A byte every 50 ms never reaches the byte bound: the time bound ends it.
    let slow = tokio::task::spawn_blocking(move || {
        send_until_cut_off(addr, &slow_bearer, 1, Duration::from_millis(50))
    });
    let (fast, slow) = (fast.await.unwrap(), slow.await.unwrap());
    // Beyond the 1 MiB the proxy reads, only what fits in the client's send
    // buffer and the proxy's receive buffer (at most 4 and 32 MiB here) is
    // sent; 5 s would carry gigabytes.
    let fast_ok = LINGER_BYTES..LINGER_BYTES + (64 << 20);
    assert!(
        fast_ok.contains(&fast.0) && fast.1 < LINGER / 2,
        "fast sender: {fast:?}"
    );
    let slow_ok = LINGER - Duration::from_millis(500)..LINGER + Duration::from_secs(2);
    assert!(slow_ok.contains(&slow.1), "slow sender: {slow:?}");
}
