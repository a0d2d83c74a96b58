//! Pipelined requests (RFC 9112 §9.3): written back to back on one
//! connection, each answered, in order, and decided on its own — a verified
//! identity never carries over to the next request on the connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

fn get(path: &str, auth: Option<&str>) -> String {
    let auth = auth.map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n")
}

/// Writes `requests` in one write and reads one response per request.
async fn pipelined(proxy: &Proxy, requests: Vec<String>) -> Vec<(u16, Vec<String>, String)> {
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let mut c = Conn::connect(addr);
        c.send(requests.concat().as_bytes());
        (0..requests.len()).map(|_| c.response()).collect()
    })
    .await
    .unwrap()
}

async fn fixture(records: &[&prodgy_crds::HashedRecord]) -> (Upstream, Proxy, tempfile::TempDir) {
    let up = Upstream::start().await;
    let (proxy, dir) = file_proxy(up.addr, records).await;
    (up, proxy, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_does_not_carry_over_to_the_next_pipelined_request() {
    let t = issue("ns", "pipe", "acme");
    let (up, proxy, _dir) = fixture(&[&t.record]).await;
    let bearer = t.bearer();
    let valid_then_none = pipelined(
        &proxy,
        vec![
            get("/api/agent-base/1", Some(&bearer)),
            get("/api/agent-base/2", None),
        ],
    )
    .await;
    let none_then_valid = pipelined(
        &proxy,
        vec![
            get("/api/agent-base/3", None),
            get("/api/agent-base/4", Some(&bearer)),
        ],
    )
    .await;
    let statuses = |r: &[(u16, Vec<String>, String)]| r.iter().map(|x| x.0).collect::<Vec<_>>();
    assert_eq!(statuses(&valid_then_none), [200, 401]);
    assert_eq!(statuses(&none_then_valid), [401, 200]);
    assert!(valid_then_none[1].2.contains("missing_token"));
    let paths: Vec<String> = up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/api/agent-base/1", "/api/agent-base/4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_pipelined_requests_are_answered_in_order() {
    let a = issue("ns", "alpha", "acme");
    let b = issue("ns", "beta", "acme");
    let (up, proxy, _dir) = fixture(&[&a.record, &b.record]).await;
    let unknown = format!(
        "Bearer {}",
        prodgy_crds::Token::generate("prod").unwrap().expose()
    );
    // Who should be seen for request i: Some(token name) or None (refused).
    let plan: Vec<(Option<String>, Option<&str>)> = (0..100)
        .map(|i| match i % 4 {
            0 => (Some(a.bearer()), Some("ns/alpha")),
            1 => (None, None),
            2 => (Some(b.bearer()), Some("ns/beta")),
            _ => (Some(unknown.clone()), None),
        })
        .collect();
    let requests = plan
        .iter()
        .enumerate()
        .map(|(i, (auth, _))| get(&format!("/api/agent-base/{i}"), auth.as_deref()))
        .collect();
    let answers = pipelined(&proxy, requests).await;
    for (i, ((status, _, body), (_, who))) in answers.iter().zip(&plan).enumerate() {
        let want = if who.is_some() { 200 } else { 401 };
        assert_eq!(*status, want, "request {i}: {body}");
    }
    let seen = up.seen();
    let expected: Vec<(String, &str)> = plan
        .iter()
        .enumerate()
        .filter_map(|(i, (_, who))| who.map(|w| (format!("/api/agent-base/{i}"), w)))
        .collect();
    let got: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.path.clone(), s.one("x-prodgy-token")))
        .collect();
    assert_eq!(got.len(), expected.len());
    for ((path, token), (want_path, want_token)) in got.iter().zip(&expected) {
        assert_eq!(
            (path.as_str(), token.as_str()),
            (want_path.as_str(), *want_token)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_after_a_refused_one_with_a_body_is_answered() {
    let t = issue("ns", "after", "acme");
    let (up, proxy, _dir) = fixture(&[&t.record]).await;
    let bearer = t.bearer();
    let refused_post = "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    let answers = pipelined(
        &proxy,
        vec![
            refused_post.to_owned(),
            get("/api/agent-base/after", Some(&bearer)),
            format!(
                "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\nContent-Length: 2\r\n\r\n{{}}"
            ),
            get("/api/agent-base/last", None),
        ],
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [401, 200, 200, 401]);
    let paths: Vec<String> = up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/api/agent-base/after", "/api/agent-base"]);

    // A refused body too large (or too open-ended) to read: the refusal
    // says `Connection: close` and the connection ends after it; nothing
    // behind it is forwarded.
    let big = "x".repeat(200 * 1024);
    let cases = [
        format!("POST /api/agent-base HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{big}", big.len()),
        "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_owned(),
    ];
    let addr = proxy.addr;
    for refused in cases {
        let next = get("/api/agent-base/behind", Some(&bearer));
        let (status, head, closed) = tokio::task::spawn_blocking(move || {
            let mut c = Conn::connect(addr);
            c.send(format!("{refused}{next}").as_bytes());
            let (status, head, _) = c.response();
            (status, head, c.closed())
        })
        .await
        .unwrap();
        assert_eq!(status, 401);
        assert!(
            head.iter()
                .any(|l| l.eq_ignore_ascii_case("connection: close")),
            "{head:?}"
        );
        assert!(closed, "the connection stayed open after an unread body");
    }
    assert_eq!(
        up.count(),
        2,
        "a request behind an unread body was forwarded"
    );
}
