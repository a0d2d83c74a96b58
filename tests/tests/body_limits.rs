#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The API's body limits (`--max-json-bytes`, `--max-webhook-bytes`,
//! `--max-upload-bytes`) and its other early answers as a client of the
//! real proxy in front of the real API meets them. The client speaks raw
//! TCP the way curl does: with `Expect: 100-continue` it sends the body only
//! after a `100`, and nothing when the final answer comes first. The API
//! often answers before it has read the body; every request here must still
//! end with a final response (`head` fails on a connection that ends
//! without one).
//!
//! - Each limit at the limit, one byte over and 2 MB over, in all four
//!   framings (`Content-Length` or chunked, with or without `Expect`); the
//!   upload limit at 48 KiB so that this is quick.
//! - The API's 415, 400 and 404, given on the head with 2 MB still to come,
//!   reach the client whole; with `Expect` without a `100` and with
//!   `Connection: close`. (Its own 401 and 403 cannot be reached through
//!   the proxy, which refuses first.)
//! - After a 413, the next request, pipelined behind the body, is answered:
//!   on the same connection, or, when the 413 said `Connection: close`, on a
//!   new one once the proxy has ended the first. (Before the API said
//!   `Connection: close` on such answers, the proxy reused a connection the
//!   API was closing, and the next request got a 502.)
//! - An `Expect` upload over the limit: the 413 without a `100`, then the
//!   end of the connection at once.
//! - A 200 MB upload succeeds; one byte more gets the API's 413.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prodgy_crds::{HashedRecord, Token};
use prodgy_tests::local::{binaries, free_ports};

const JSON_LIMIT: usize = 64 * 1024;
const WEBHOOK_LIMIT: usize = 32 * 1024;
/// The upload limit of the 200 MB test.
const UPLOAD_LIMIT: usize = 200_000_000;
/// The upload limit of every other test: small, so that each framing is
/// quick to try.
const SMALL_UPLOAD_LIMIT: usize = 48 * 1024;
/// Far over every limit but the 200 MB one: the API answers while most of
/// such a body is still to come.
const FAR_OVER: usize = 2 * 1024 * 1024;

/// The API and the proxy (file token source), on free loopback ports.
struct Stack {
    procs: Vec<Child>,
    proxy: SocketAddr,
    bearer: String,
    dir: tempfile::TempDir,
}

impl Drop for Stack {
    #[allow(clippy::print_stderr)] // a failing test shows what the binaries logged
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        if std::thread::panicking() {
            for name in ["api.log", "proxy.log"] {
                let log = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("----- {name} -----");
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn spawn(bin: &Path, name: &str, args: &[String], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(bin.join(name))
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200")
}

impl Stack {
    /// The stack, the API's upload limit at `upload_limit` bytes.
    fn start(upload_limit: usize) -> Self {
        let bin = binaries().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token = Token::generate("prod").unwrap();
        let record = HashedRecord::active("ns", "limits", "uid-limits", "acme", &token.hash());
        let tokens = dir.path().join("tokens.json");
        std::fs::write(&tokens, serde_json::to_vec(&[record]).unwrap()).unwrap();
        let [api, ops, proxy, metrics] = free_ports().unwrap();
        let mut procs = vec![spawn(
            &bin,
            "prodgy-api",
            &[
                format!("--listen=127.0.0.1:{api}"),
                format!("--ops-listen=127.0.0.1:{ops}"),
                format!("--data-dir={}", dir.path().join("api").display()),
                format!("--max-json-bytes={JSON_LIMIT}"),
                format!("--max-webhook-bytes={WEBHOOK_LIMIT}"),
                format!("--max-upload-bytes={upload_limit}"),
                "--log-format=text".into(),
            ],
            &dir.path().join("api.log"),
        )];
        procs.push(spawn(
            &bin,
            "prodgy-proxy",
            &[
                format!("--listen=127.0.0.1:{proxy}"),
                format!("--upstream=127.0.0.1:{api}"),
                format!("--metrics-addr=127.0.0.1:{metrics}"),
                "--source=file".into(),
                format!("--tokens-path={}", tokens.display()),
                "--log-format=text".into(),
            ],
            &dir.path().join("proxy.log"),
        ));
        let stack = Self {
            procs,
            proxy: format!("127.0.0.1:{proxy}").parse().unwrap(),
            bearer: format!("Bearer {}", token.expose()),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(ready(ops) && ready(metrics)) {
            assert!(
                Instant::now() < deadline,
                "the API and proxy never became ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        stack
    }
}

/// How the body is framed and whether the client asks before sending it.
#[derive(Clone, Copy, Debug)]
struct Framing {
    chunked: bool,
    expect: bool,
}

const PLAIN: Framing = Framing {
    chunked: false,
    expect: false,
};
const EXPECT: Framing = Framing {
    chunked: false,
    expect: true,
};
const CHUNKED: Framing = Framing {
    chunked: true,
    expect: false,
};
const CHUNKED_EXPECT: Framing = Framing {
    chunked: true,
    expect: true,
};
const FRAMINGS: [Framing; 4] = [PLAIN, EXPECT, CHUNKED, CHUNKED_EXPECT];

/// A request target line and the body's content type.
type Endpoint = (&'static str, &'static str);
/// A body: a prefix, padded with a filler byte to a length.
type Body = (&'static [u8], u8, usize);

const AGENTS: Endpoint = ("POST /api/agent-base", "application/json");
const WEBHOOK: Endpoint = ("POST /api/webhook/limits", "application/json");
const UPLOAD: Endpoint = (
    "PUT /api/knowledge-base/storage/big.bin",
    "application/octet-stream",
);

/// A final response as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether the client was invited (`100`) to send the body.
    continued: bool,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Whether the answer says the connection ends after it.
    fn closes(&self) -> bool {
        self.headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"))
    }

    fn text(&self) -> String {
        let flags = [
            (self.continued, " (after a 100)"),
            (self.closes(), " (close)"),
        ];
        let flags: String = flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, f)| *f)
            .collect();
        format!(
            "{} {}{flags}",
            self.status,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// Reads one response head: status and lower-case header lines.
fn head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut status = None;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).unwrap_or(0);
        assert!(n > 0, "the connection ended without a final response");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        match status {
            None => status = line.split(' ').nth(1).and_then(|c| c.parse().ok()),
            Some(_) => {
                if let Some((n, v)) = line.split_once(':') {
                    headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
        }
    }
    (status.expect("a status line"), headers)
}

/// Reads a response body framed by `Content-Length` or chunked encoding.
fn response_body(r: &mut impl BufRead, headers: &[(String, String)]) -> Vec<u8> {
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if let Some(len) = get("content-length") {
        let mut b = vec![0; len.parse().unwrap()];
        r.read_exact(&mut b).expect("the whole response body");
        return b;
    }
    assert!(get("transfer-encoding").is_some(), "unframed response");
    let mut out = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Writes `len` bytes, `prefix` then `fill`, in the given framing; returns
/// `false` when the peer closed first (it answered early).
fn send_body(w: &mut TcpStream, (prefix, fill, len): Body, chunked: bool) -> bool {
    let mut sent = 0;
    while sent < len {
        let n = (len - sent).min(64 * 1024);
        let mut part = vec![fill; n];
        if sent < prefix.len() {
            let k = (prefix.len() - sent).min(n);
            part[..k].copy_from_slice(&prefix[sent..sent + k]);
        }
        sent += n;
        if chunked {
            part = [format!("{n:x}\r\n").as_bytes(), &part, b"\r\n"].concat();
        }
        if w.write_all(&part).is_err() {
            return false;
        }
    }
    !chunked || w.write_all(b"0\r\n\r\n").is_ok()
}

/// A request head: the token, the endpoint's content type, then `lines`
/// (framing and the like, each ending in CRLF).
fn request_head(s: &Stack, (target, content_type): Endpoint, lines: &str) -> String {
    format!(
        "{target} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: {content_type}\r\n{lines}\r\n",
        s.bearer
    )
}

/// A request with a `Content-Length` body, as raw bytes to pipeline.
fn raw(s: &Stack, to: Endpoint, body: &[u8]) -> Vec<u8> {
    let lines = format!("Content-Length: {}\r\n", body.len());
    [request_head(s, to, &lines).as_bytes(), body].concat()
}

/// The framing header lines of a body of `len` bytes.
fn framing_lines(len: usize, f: Framing) -> String {
    let framing = if f.chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {len}")
    };
    let expect = if f.expect {
        "Expect: 100-continue\r\n"
    } else {
        ""
    };
    format!("{framing}\r\n{expect}")
}

/// A client connection to the proxy, its requests one after the other.
struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(s: &Stack) -> Self {
        let stream = TcpStream::connect(s.proxy).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Self {
            r: BufReader::new(stream),
        }
    }

    /// Sends one request, then the raw bytes `then` pipelined behind its
    /// body, and returns its final response. With `Expect` the body (and
    /// `then`) go only after a `100`, as curl sends them; nothing when the
    /// final answer comes first.
    fn send(&mut self, s: &Stack, to: Endpoint, body: Body, f: Framing, then: &[u8]) -> Answer {
        let mut w = self.r.get_ref().try_clone().unwrap();
        let head = request_head(s, to, &framing_lines(body.2, f));
        w.write_all(head.as_bytes()).unwrap();
        let then = then.to_vec();
        let mut start_body = Some(move || {
            std::thread::spawn(move || {
                if send_body(&mut w, body, f.chunked) {
                    let _ = w.write_all(&then);
                }
            })
        });
        let mut writer = if f.expect {
            None
        } else {
            start_body.take().map(|s| s())
        };
        let (mut a, mut continued) = (self.answer(), false);
        while a.status == 100 {
            assert!(f.expect, "100 without Expect");
            continued = true;
            writer = start_body.take().map(|s| s());
            a = self.answer();
        }
        // The writer stops at the proxy's close after an early answer.
        if let Some(w) = writer {
            w.join().unwrap();
        }
        Answer { continued, ..a }
    }

    /// The next response on the connection (a `100` has no body).
    fn answer(&mut self) -> Answer {
        let (status, headers) = head(&mut self.r);
        let body = if status == 100 {
            Vec::new()
        } else {
            response_body(&mut self.r, &headers)
        };
        Answer {
            status,
            headers,
            body,
            continued: false,
        }
    }

    /// Whether the proxy ended the connection (end of stream or reset)
    /// within 2 s, well inside its 5 s linger: it shut its side at once.
    fn ended(&mut self) -> bool {
        let s = self.r.get_ref();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// One request on a fresh connection. Asserts that a final response
/// arrives.
fn request(s: &Stack, to: Endpoint, body: Body, f: Framing) -> Answer {
    Client::connect(s).send(s, to, body, f, b"")
}

fn json_agent(len: usize) -> Body {
    (br#"{"name":"kb","kind":"knowledge"}"#, b' ', len)
}

fn octets(len: usize) -> Body {
    (b"", b'u', len)
}

/// A limit: the endpoint, the limit, the statuses of a body at the limit,
/// and how to build a body of a length.
type Limit = (Endpoint, usize, &'static [u16], fn(usize) -> Body);

#[test]
fn every_limit_answers_through_the_proxy_in_every_framing() {
    let s = Stack::start(SMALL_UPLOAD_LIMIT);
    let mut failures = Vec::new();
    let cases: [Limit; 3] = [
        (AGENTS, JSON_LIMIT, &[201], json_agent),
        (WEBHOOK, WEBHOOK_LIMIT, &[202], |len| (b"{}", b' ', len)),
        // 201 the first time, 200 once it replaces the file.
        (UPLOAD, SMALL_UPLOAD_LIMIT, &[200, 201], octets),
    ];
    for (to, limit, ok, body) in cases {
        for f in FRAMINGS {
            // At the limit, one byte over, and far over (the API answers
            // while most of the body is still to come).
            for (len, want) in [(limit, ok), (limit + 1, &[413][..]), (FAR_OVER, &[413])] {
                let a = request(&s, to, body(len), f);
                let code_ok = !want.contains(&413) || a.code() == "payload_too_large";
                if !want.contains(&a.status) || !code_ok {
                    failures.push(format!(
                        "{} {len} bytes {f:?}: want {want:?}, got {}",
                        to.0,
                        a.text()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_apis_other_early_answers_reach_the_client_in_full() {
    let s = Stack::start(SMALL_UPLOAD_LIMIT);
    // Each answered on the head alone, with 2 MB of body still to come.
    let cases: [(Endpoint, u16, &str); 4] = [
        (
            ("POST /api/agent-base", "text/plain"),
            415,
            "unsupported_media_type",
        ),
        // A name ending in a space; a webhook path segment with one.
        (
            (
                "PUT /api/knowledge-base/storage/bad%20",
                "application/octet-stream",
            ),
            400,
            "invalid_request",
        ),
        (
            ("POST /api/webhook/a%20b", "application/json"),
            400,
            "invalid_request",
        ),
        (
            ("POST /api/no-such-endpoint", "application/json"),
            404,
            "route_not_found",
        ),
    ];
    let mut failures = Vec::new();
    for (to, want, code) in cases {
        for f in FRAMINGS {
            let a = request(&s, to, octets(FAR_OVER), f);
            let message = a.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty());
            // With Expect the body was never sent: the answer says the
            // connection ends after it.
            let expect_ok = !f.expect || (!a.continued && a.closes());
            if (a.status, a.code().as_str()) != (want, code) || !message || !expect_ok {
                failures.push(format!(
                    "{} {f:?}: want {want} {code}, got {}",
                    to.0,
                    a.text()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Sends `first`, which must get a 413, with `next` pipelined behind its
/// body; `next` must then get its 201: on the same connection, or, when the
/// 413 said `Connection: close`, on a new one once the proxy has ended the
/// first (at once). Returns whether the connection went on.
fn after_a_413(
    s: &Stack,
    (to, body): (Endpoint, Body),
    f: Framing,
    next: &[u8],
) -> Result<bool, String> {
    let mut c = Client::connect(s);
    let a = c.send(s, to, body, f, next);
    let kept = !a.closes();
    if !kept && !c.ended() {
        return Err(format!("left open after {}", a.text()));
    }
    let b = if kept {
        c.answer()
    } else {
        request(s, AGENTS, json_agent(100), PLAIN)
    };
    if a.status != 413 || b.status != 201 {
        return Err(format!("got {}, then {}", a.text(), b.text()));
    }
    Ok(kept)
}

#[test]
fn the_next_request_is_answered_after_a_413() {
    let s = Stack::start(SMALL_UPLOAD_LIMIT);
    let next = raw(&s, AGENTS, br#"{"name":"next","kind":"knowledge"}"#);
    let firsts: [(Endpoint, Body); 4] = [
        (AGENTS, json_agent(JSON_LIMIT + 1)),
        (UPLOAD, octets(SMALL_UPLOAD_LIMIT + 1)),
        (AGENTS, json_agent(FAR_OVER)),
        (UPLOAD, octets(FAR_OVER)),
    ];
    let (mut failures, mut kept) = (Vec::new(), 0);
    for round in 0..5 {
        for first in firsts {
            for f in [PLAIN, CHUNKED] {
                match after_a_413(&s, first, f, &next) {
                    Ok(k) => kept += usize::from(k),
                    Err(e) => failures.push(format!(
                        "round {round}, {} {} bytes {f:?}: {e}",
                        first.0.0, first.1.2
                    )),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A body just over the JSON limit is read whole before the answer: its
    // connection goes on.
    assert!(
        kept >= 5,
        "only {kept} client connections outlived their 413"
    );
}

#[test]
fn expect_continue_gets_the_apis_own_answer_before_any_body() {
    let s = Stack::start(SMALL_UPLOAD_LIMIT);
    // An oversized Content-Length: the API refuses on the head alone, so
    // the client is never invited to send the body.
    let mut c = Client::connect(&s);
    let a = c.send(&s, UPLOAD, octets(SMALL_UPLOAD_LIMIT + 1), EXPECT, b"");
    assert_eq!((a.status, a.code().as_str()), (413, "payload_too_large"));
    assert!(!a.continued, "invited to send a body the API refused");
    // The body is still owed: the answer says the connection ends, and the
    // proxy ends it at once rather than leave it half-read.
    assert!(a.closes(), "{:?}", a.headers);
    assert!(c.ended(), "the connection was left open after the answer");
    // A body the API reads: its 100 reaches the client, then its answer.
    let a = request(&s, AGENTS, json_agent(100), EXPECT);
    assert_eq!(a.status, 201, "{}", a.text());
    assert!(a.continued, "the API's 100 was not relayed");
}

#[test]
fn a_200_mb_upload_succeeds_and_one_byte_more_gets_413() {
    let s = Stack::start(UPLOAD_LIMIT);
    let upload = |len: usize, f: Framing| request(&s, UPLOAD, octets(len), f);
    let a = upload(UPLOAD_LIMIT, PLAIN);
    assert!(matches!(a.status, 200 | 201), "{}", a.text());
    let stored: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(stored["size"], UPLOAD_LIMIT, "{stored}");
    for f in [PLAIN, CHUNKED] {
        let a = upload(UPLOAD_LIMIT + 1, f);
        assert_eq!(
            (a.status, a.code().as_str()),
            (413, "payload_too_large"),
            "{f:?}: {}",
            a.text()
        );
    }
}
