#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The API's body limits (`--max-json-bytes`, `--max-webhook-bytes`,
//! `--max-upload-bytes`) as a client of the real proxy in front of the real
//! API meets them: with and without `Expect: 100-continue`, with
//! `Content-Length` and chunked bodies, a body at the limit accepted and one
//! byte more refused with the API's own 413 JSON. The API often answers
//! before it has read the body; every request here must still end with a
//! final response, which the client reads over raw TCP the way curl does
//! (with `Expect` it waits for the `100` before sending the body, and sends
//! nothing when the final answer comes first).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prodgy_crds::{HashedRecord, Token};
use prodgy_tests::local::{binaries, free_port};

const JSON_LIMIT: usize = 64 * 1024;
const WEBHOOK_LIMIT: usize = 32 * 1024;
const UPLOAD_LIMIT: usize = 200_000_000;

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
    fn start() -> Self {
        let bin = binaries().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token = Token::generate("prod").unwrap();
        let record = HashedRecord::active("ns", "limits", "uid-limits", "acme", &token.hash());
        let tokens = dir.path().join("tokens.json");
        std::fs::write(&tokens, serde_json::to_vec(&[record]).unwrap()).unwrap();
        let [api, ops, proxy, metrics] = [(); 4].map(|()| free_port().unwrap());
        let mut procs = vec![spawn(
            &bin,
            "prodgy-api",
            &[
                format!("--listen=127.0.0.1:{api}"),
                format!("--ops-listen=127.0.0.1:{ops}"),
                format!("--data-dir={}", dir.path().join("api").display()),
                format!("--max-json-bytes={JSON_LIMIT}"),
                format!("--max-webhook-bytes={WEBHOOK_LIMIT}"),
                format!("--max-upload-bytes={UPLOAD_LIMIT}"),
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

const FRAMINGS: [Framing; 4] = [
    Framing {
        chunked: false,
        expect: false,
    },
    Framing {
        chunked: false,
        expect: true,
    },
    Framing {
        chunked: true,
        expect: false,
    },
    Framing {
        chunked: true,
        expect: true,
    },
];

/// A final response as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    /// Whether the client was invited (`100`) to send the body.
    continued: bool,
}

impl Answer {
    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        v["error"]["code"].as_str().unwrap_or("").to_owned()
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
fn body(r: &mut impl BufRead, headers: &[(String, String)]) -> Vec<u8> {
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

/// Writes `len` bytes, `prefix` then `fill`, in the given framing; stops
/// quietly when the peer closes (it answered early).
fn send_body(mut w: TcpStream, prefix: &[u8], fill: u8, len: usize, chunked: bool) {
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
            return;
        }
    }
    if chunked {
        let _ = w.write_all(b"0\r\n\r\n");
    }
}

/// One request on a fresh connection: the body is `prefix` padded with
/// `fill` to `len` bytes. Asserts that a final response arrives.
fn request(
    s: &Stack,
    target: &str,
    content_type: &str,
    (prefix, fill, len): (&[u8], u8, usize),
    f: Framing,
) -> Answer {
    let stream = TcpStream::connect(s.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
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
    let head_bytes = format!(
        "{target} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: {content_type}\r\n{framing}\r\n{expect}\r\n",
        s.bearer
    );
    let mut w = stream.try_clone().unwrap();
    w.write_all(head_bytes.as_bytes()).unwrap();
    let mut r = BufReader::new(stream);
    let prefix = prefix.to_vec();
    let start_body =
        move || std::thread::spawn(move || send_body(w, &prefix, fill, len, f.chunked));
    let (mut continued, mut writer) = (false, None);
    let mut start_body = Some(start_body);
    if !f.expect {
        writer = start_body.take().map(|s| s());
    }
    loop {
        let (status, headers) = head(&mut r);
        if status == 100 {
            assert!(f.expect, "100 without Expect");
            continued = true;
            writer = start_body.take().map(|s| s());
            continue;
        }
        let body = body(&mut r, &headers);
        // The writer stops at the proxy's close after an early answer.
        drop(r);
        if let Some(w) = writer {
            w.join().unwrap();
        }
        return Answer {
            status,
            body,
            continued,
        };
    }
}

/// A body: a prefix, padded with a filler byte to a length.
type Body = (&'static [u8], u8, usize);
/// A limit: the endpoint, the limit, the status of a body at the limit, and
/// how to build a body of a length.
type Limit = (&'static str, usize, u16, fn(usize) -> Body);

fn json_agent(len: usize) -> Body {
    (br#"{"name":"kb","kind":"knowledge"}"#, b' ', len)
}

#[test]
fn json_and_webhook_limits_answer_through_the_proxy() {
    let s = Stack::start();
    let mut failures = Vec::new();
    let cases: [Limit; 2] = [
        ("POST /api/agent-base", JSON_LIMIT, 201, json_agent),
        ("POST /api/webhook/limits", WEBHOOK_LIMIT, 202, |len| {
            (b"{}", b' ', len)
        }),
    ];
    for (target, limit, ok, body) in cases {
        for f in FRAMINGS {
            // At the limit, one byte over, and far over (the API answers
            // while most of the body is still to come).
            for (len, want) in [(limit, ok), (limit + 1, 413), (2 * 1024 * 1024, 413)] {
                let a = request(&s, target, "application/json", body(len), f);
                let code_ok = want != 413 || a.code() == "payload_too_large";
                if a.status != want || !code_ok {
                    failures.push(format!(
                        "{target} {len} bytes {f:?}: want {want}, got {} {}",
                        a.status,
                        String::from_utf8_lossy(&a.body)
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn expect_continue_gets_the_apis_own_answer_before_any_body() {
    let s = Stack::start();
    // An oversized Content-Length: the API refuses on the head alone, so
    // the client is never invited to send the body.
    let f = Framing {
        chunked: false,
        expect: true,
    };
    let a = request(
        &s,
        "PUT /api/knowledge-base/storage/big.bin",
        "application/octet-stream",
        (b"", b'x', UPLOAD_LIMIT + 1),
        f,
    );
    assert_eq!((a.status, a.code().as_str()), (413, "payload_too_large"));
    assert!(!a.continued, "invited to send a body the API refused");
    // A body the API reads: its 100 reaches the client, then its answer.
    let a = request(
        &s,
        "POST /api/agent-base",
        "application/json",
        json_agent(100),
        f,
    );
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert!(a.continued, "the API's 100 was not relayed");
}

#[test]
fn a_200_mb_upload_succeeds_and_one_byte_more_gets_413() {
    let s = Stack::start();
    let upload = |len: usize, f: Framing| {
        request(
            &s,
            "PUT /api/knowledge-base/storage/big.bin",
            "application/octet-stream",
            (b"", b'u', len),
            f,
        )
    };
    let plain = Framing {
        chunked: false,
        expect: false,
    };
    let a = upload(UPLOAD_LIMIT, plain);
    assert!(
        matches!(a.status, 200 | 201),
        "{} {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    let stored: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(stored["size"], UPLOAD_LIMIT, "{stored}");
    for f in [
        plain,
        Framing {
            chunked: true,
            expect: false,
        },
    ] {
        let a = upload(UPLOAD_LIMIT + 1, f);
        assert_eq!(
            (a.status, a.code().as_str()),
            (413, "payload_too_large"),
            "{f:?}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
}
