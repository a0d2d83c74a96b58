//! The real proxy binary on loopback in front of a recording upstream:
//! every status and reason, header stripping and injection, expiry, scopes,
//! products, rate limits and a corpus of malformed requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use prodgy_crds::{HashEntry, RecordState, Scope, Token};
use support::*;

struct Fixture {
    up: Upstream,
    proxy: Proxy,
    _dir: tempfile::TempDir,
}

async fn fixture(records: &[&prodgy_crds::HashedRecord], extra: &[&str]) -> Fixture {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    write_records(&path, records);
    let mut b = ProxyBuilder::file(up.addr, &path);
    for a in extra {
        b = b.arg(*a);
    }
    let proxy = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();
    Fixture {
        up,
        proxy,
        _dir: dir,
    }
}

async fn call(
    f: &Fixture,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = client().request(method.parse().unwrap(), f.proxy.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// Asserts a refusal: status, JSON code, challenge, and nothing forwarded.
async fn refused(resp: reqwest::Response, status: u16, code: &str, challenge: Option<&str>) {
    assert_eq!(resp.status().as_u16(), status, "{code}");
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/json", "{code}");
    assert_eq!(h["cache-control"], "no-store", "{code}");
    let www = h
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    match challenge {
        Some(c) => assert_eq!(www.as_deref(), Some(c), "{code}"),
        None => assert!(www.is_none(), "{code}: unexpected challenge {www:?}"),
    }
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

fn invalid_token(desc: &str) -> String {
    format!(r#"Bearer realm="prodgy", error="invalid_token", error_description="{desc}""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_requests_carry_only_the_verified_identity() {
    let t = issue("team-a", "ci-bot", "acme").scopes(&[Scope::StorageWrite, Scope::AgentsRead]);
    let f = fixture(&[&t.record], &[]).await;
    let resp = call(
        &f,
        "GET",
        "/api/agent-base?page=2",
        &[
            ("authorization", &t.bearer()),
            ("X-Prodgy-Product", "evil"),
            ("x-prodgy-product", "evil-2"),
            ("X-PRODGY-TOKEN", "team-b/admin"),
            ("x-prodgy-token-uid", "forged"),
            ("x-Prodgy-Scopes", "*"),
            ("x-prodgy-anything-else", "1"),
            ("x-other", "kept"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), r#"{"ok":true}"#);
    let seen = f.up.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        (s.method.as_str(), s.path.as_str()),
        ("GET", "/api/agent-base")
    );
    assert!(s.all("authorization").is_empty(), "credential forwarded");
    assert_eq!(s.one("x-prodgy-product"), "acme");
    assert_eq!(s.one("x-prodgy-token"), "team-a/ci-bot");
    assert_eq!(s.one("x-prodgy-token-uid"), t.record.uid);
    assert_eq!(s.one("x-prodgy-scopes"), "agents:read,storage:write");
    assert!(s.all("x-prodgy-anything-else").is_empty());
    assert_eq!(s.one("x-other"), "kept");
    for (_, v) in &s.headers {
        assert!(!String::from_utf8_lossy(v).contains(t.token.expose()));
    }

    // An unrestricted token gets `*`; `bearer` in lower case is accepted
    // (RFC 7235: the scheme is case-insensitive).
    let u = issue("team-a", "admin", "acme");
    let f = fixture(&[&u.record], &[]).await;
    let lower = format!("bearer {}", u.token.expose());
    assert_eq!(
        call(
            &f,
            "DELETE",
            "/api/agent-base/a1",
            &[("authorization", &lower)]
        )
        .await
        .status(),
        200
    );
    assert_eq!(f.up.seen()[0].one("x-prodgy-scopes"), "*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_code_and_challenge() {
    let good = issue("ns", "good", "acme");
    let scoped = issue("ns", "scoped", "acme").scopes(&[Scope::AgentsRead]);
    let inactive = issue("ns", "inactive", "acme").state(RecordState::Inactive);
    let revoked = issue("ns", "revoked", "acme").state(RecordState::Revoked);
    let expired = issue("ns", "expired", "acme").expires(Utc::now() - chrono::Duration::seconds(5));
    // Revoked wins over expired and inactive.
    let all_bad = issue("ns", "all-bad", "acme")
        .state(RecordState::Revoked)
        .expires(Utc::now() - chrono::Duration::seconds(5));
    let other = issue("ns", "other", "beta");
    let f = fixture(
        &[
            &good.record,
            &scoped.record,
            &inactive.record,
            &revoked.record,
            &expired.record,
            &all_bad.record,
            &other.record,
        ],
        &["--products=acme"],
    )
    .await;
    let unknown = format!("Bearer {}", Token::generate("prod").unwrap().expose());
    let mut bad_sum = good.bearer().into_bytes();
    let last = bad_sum.len() - 1;
    bad_sum[last] = if bad_sum[last] == b'A' { b'B' } else { b'A' };
    let bad_sum = String::from_utf8(bad_sum).unwrap();
    let plain = r#"Bearer realm="prodgy""#;

    let p = "/api/agent-base";
    refused(
        call(&f, "GET", p, &[]).await,
        401,
        "missing_token",
        Some(plain),
    )
    .await;
    refused(
        call(&f, "GET", p, &[("authorization", "Basic dXNlcjpwYXNz")]).await,
        401,
        "unsupported_scheme",
        Some(plain),
    )
    .await;
    refused(
        call(&f, "GET", p, &[("authorization", "Bearer not-a-token")]).await,
        401,
        "malformed_token",
        Some(&invalid_token("the bearer value is not an API token")),
    )
    .await;
    refused(
        call(&f, "GET", p, &[("authorization", &bad_sum)]).await,
        401,
        "bad_checksum",
        Some(&invalid_token("token checksum mismatch")),
    )
    .await;
    refused(
        call(&f, "GET", p, &[("authorization", &unknown)]).await,
        401,
        "unknown_token",
        Some(&invalid_token("unknown token")),
    )
    .await;
    refused(
        call(&f, "GET", p, &[("authorization", &inactive.bearer())]).await,
        401,
        "inactive_token",
        Some(&invalid_token("token is deactivated")),
    )
    .await;
    refused(
        call(&f, "GET", p, &[("authorization", &expired.bearer())]).await,
        401,
        "expired_token",
        Some(&invalid_token("token has expired")),
    )
    .await;
    refused(
        call(&f, "GET", p, &[("authorization", &revoked.bearer())]).await,
        401,
        "revoked_token",
        Some(&invalid_token("token has been revoked")),
    )
    .await;
    refused(
        call(&f, "GET", p, &[("authorization", &all_bad.bearer())]).await,
        401,
        "revoked_token",
        Some(&invalid_token("token has been revoked")),
    )
    .await;
    refused(
        call(&f, "GET", p, &[("authorization", &other.bearer())]).await,
        403,
        "wrong_product",
        None,
    )
    .await;
    refused(call(&f, "POST", p, &[("authorization", &scoped.bearer())]).await, 403, "insufficient_scope",
        Some(r#"Bearer realm="prodgy", error="insufficient_scope", error_description="the token lacks the agents:write scope", scope="agents:write""#)).await;
    // Paths outside the route table are for unrestricted tokens only.
    refused(call(&f, "GET", "/internal/debug", &[("authorization", &scoped.bearer())]).await, 403, "insufficient_scope",
        Some(r#"Bearer realm="prodgy", error="insufficient_scope", error_description="this path is open to unrestricted tokens only""#)).await;
    let invalid_request = |d: &str| {
        format!(r#"Bearer realm="prodgy", error="invalid_request", error_description="{d}""#)
    };
    refused(
        call(
            &f,
            "GET",
            p,
            &[
                ("authorization", &good.bearer()),
                ("authorization", &good.bearer()),
            ],
        )
        .await,
        400,
        "duplicate_authorization",
        Some(&invalid_request("send exactly one Authorization header")),
    )
    .await;
    let tabbed = format!("Bearer\t{}", good.token.expose());
    refused(
        call(&f, "GET", p, &[("authorization", &tabbed)]).await,
        400,
        "invalid_authorization",
        Some(&invalid_request("malformed Authorization header")),
    )
    .await;
    let long = format!("Bearer {}", "a".repeat(600));
    refused(
        call(&f, "GET", p, &[("authorization", &long)]).await,
        400,
        "authorization_too_long",
        Some(&invalid_request("Authorization header too long")),
    )
    .await;
    // Raw TCP: an HTTP client library would resolve the dot segments itself.
    let (addr, auth) = (f.proxy.addr, good.bearer());
    let r = tokio::task::spawn_blocking(move || {
        raw(addr, format!("GET /api/knowledge-base/%2e%2e/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").as_bytes())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status, Some(400));
    assert!(r.body.contains(r#""code":"invalid_path""#), "{r:?}");
    assert_eq!(f.up.count(), 0, "a refused request reached the upstream");

    // The same tokens where they are allowed.
    assert_eq!(
        call(&f, "GET", p, &[("authorization", &scoped.bearer())])
            .await
            .status(),
        200
    );
    assert_eq!(
        call(
            &f,
            "GET",
            "/internal/debug",
            &[("authorization", &good.bearer())]
        )
        .await
        .status(),
        200
    );
    assert_eq!(f.up.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_enforced_at_the_exact_instant_without_a_reload() {
    // Expires on a whole second 3-4 s from now.
    let at = (Utc::now() + chrono::Duration::seconds(4)).trunc_subsecs(0);
    let t = issue("ns", "short", "acme").expires(at);
    let f = fixture(&[&t.record], &[]).await;
    let auth = [("authorization", t.bearer())];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut before = 0;
    while Utc::now() < at - chrono::Duration::milliseconds(150) {
        let resp = call(&f, "GET", "/api/agent-base", &auth).await;
        // Re-check the clock after the answer: a slow answer may straddle.
        if Utc::now() < at - chrono::Duration::milliseconds(50) {
            assert_eq!(resp.status(), 200, "refused before expiry");
            before += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(before > 0);
    let wait = (at - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(20);
    tokio::time::sleep(wait).await;
    refused(
        call(&f, "GET", "/api/agent-base", &auth).await,
        401,
        "expired_token",
        Some(&invalid_token("token has expired")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_token_works_until_its_grace_period_ends() {
    let mut t = issue("ns", "rotated", "acme");
    let old = Token::generate("prod").unwrap();
    let until = (Utc::now() + chrono::Duration::seconds(3)).trunc_subsecs(0);
    t.record.hashes.push(HashEntry {
        sha256: old.hash().to_hex(),
        regeneration: 0,
        not_after: Some(until),
    });
    t.record.hashes[0].regeneration = 1;
    let f = fixture(&[&t.record], &[]).await;
    let old_auth = format!("Bearer {}", old.expose());
    assert_eq!(
        call(
            &f,
            "GET",
            "/api/agent-base",
            &[("authorization", &old_auth)]
        )
        .await
        .status(),
        200
    );
    tokio::time::sleep(
        (until - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(20),
    )
    .await;
    refused(
        call(
            &f,
            "GET",
            "/api/agent-base",
            &[("authorization", &old_auth)],
        )
        .await,
        401,
        "expired_token",
        Some(&invalid_token("token has expired")),
    )
    .await;
    assert_eq!(
        call(
            &f,
            "GET",
            "/api/agent-base",
            &[("authorization", &t.bearer())]
        )
        .await
        .status(),
        200
    );
    // Both were the same ApiToken.
    for s in f.up.seen() {
        assert_eq!(s.one("x-prodgy-token"), "ns/rotated");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_limit_gets_429_with_retry_after() {
    let t = issue("ns", "limited", "acme").rate(1, 2);
    let f = fixture(&[&t.record], &[]).await;
    let auth = t.bearer();
    let h = [("authorization", auth.as_str())];
    assert_eq!(call(&f, "GET", "/api/agent-base", &h).await.status(), 200);
    assert_eq!(call(&f, "GET", "/api/agent-base", &h).await.status(), 200);
    let resp = call(&f, "GET", "/api/agent-base", &h).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    refused(resp, 429, "rate_limited", None).await;
    assert_eq!(f.up.count(), 2);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(call(&f, "GET", "/api/agent-base", &h).await.status(), 200);
}

/// Requests that must never be forwarded as authenticated, with the status
/// expected when it is certain (None: any 4xx or a closed connection).
fn corpus(
    valid: &str,
    unknown: &str,
    revoked: &str,
    scoped: &str,
) -> Vec<(&'static str, Vec<u8>, Option<u16>)> {
    let get = |auth: &str| {
        format!("GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let with = |head: &str| format!("{head}\r\nConnection: close\r\n\r\n").into_bytes();
    let mut changed = valid.as_bytes().to_vec();
    changed[10] = if changed[10] == b'a' { b'b' } else { b'a' };
    let changed = String::from_utf8(changed).unwrap();
    let mut v: Vec<(&'static str, Vec<u8>, Option<u16>)> = vec![
        (
            "no authorization",
            with("GET /api/agent-base HTTP/1.1\r\nHost: x"),
            Some(401),
        ),
        ("empty value", get(""), Some(400)),
        ("scheme only", get("Bearer"), Some(400)),
        ("scheme and spaces", get("Bearer    "), Some(400)),
        ("basic", get("Basic dXNlcjpwYXNz"), Some(401)),
        ("tab separator", get(&format!("Bearer\t{valid}")), Some(400)),
        (
            "tab inside",
            get(&format!("Bearer {}\t{}", &valid[..10], &valid[10..])),
            Some(400),
        ),
        ("vertical tab", get(&format!("Bearer\x0b{valid}")), None),
        (
            "nbsp separator",
            [
                b"GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\xc2\xa0"
                    .as_slice(),
                valid.as_bytes(),
                b"\r\nConnection: close\r\n\r\n",
            ]
            .concat(),
            Some(400),
        ),
        (
            "non-utf8 in token",
            [
                b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer prod_\xff\xfe".as_slice(),
                b"\r\nConnection: close\r\n\r\n",
            ]
            .concat(),
            Some(400),
        ),
        (
            "non-ascii in token",
            get(&format!("Bearer {}é", &valid[..valid.len() - 1])),
            Some(400),
        ),
        (
            "nul in token",
            [
                b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ".as_slice(),
                &valid.as_bytes()[..10],
                b"\0",
                &valid.as_bytes()[11..],
                b"\r\nConnection: close\r\n\r\n",
            ]
            .concat(),
            Some(400),
        ),
        (
            "duplicate valid",
            with(&format!(
                "GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}\r\nAuthorization: Bearer {valid}"
            )),
            Some(400),
        ),
        (
            "duplicate mixed case",
            with(&format!(
                "GET /api/agent-base HTTP/1.1\r\nHost: x\r\nauthorization: Bearer {valid}\r\nAUTHORIZATION: Bearer {valid}"
            )),
            Some(400),
        ),
        (
            "valid then invalid",
            with(&format!(
                "GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}\r\nAuthorization: Basic x"
            )),
            Some(400),
        ),
        (
            "empty then valid",
            with(&format!(
                "GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization:\r\nAuthorization: Bearer {valid}"
            )),
            Some(400),
        ),
        (
            "obs-fold",
            with(&format!(
                "GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\r\n {valid}"
            )),
            Some(400),
        ),
        (
            "space before colon",
            with(&format!(
                "GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization : Bearer {valid}"
            )),
            Some(400),
        ),
        (
            "oversized authorization",
            get(&format!("Bearer {}", "a".repeat(4_000))),
            Some(400),
        ),
        (
            "oversized valid-looking",
            get(&format!("Bearer {valid}{}", "A".repeat(600))),
            Some(400),
        ),
        (
            "too many headers for the parser",
            with(&format!(
                "GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}{}",
                "\r\nX-A: b".repeat(300)
            )),
            Some(431),
        ),
        (
            "97 headers",
            with(&format!(
                "GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}{}",
                "\r\nX-A: b".repeat(94)
            )),
            Some(431),
        ),
        (
            "one 64 KiB header",
            with(&format!(
                "GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}\r\nX-Pad: {}",
                "p".repeat(64 * 1024)
            )),
            Some(431),
        ),
        (
            "http/0.9",
            b"GET /api/agent-base\r\n\r\n".to_vec(),
            Some(400),
        ),
        (
            "pipelined refusals",
            [
                with("GET /api/agent-base HTTP/1.1\r\nHost: x"),
                get(&format!("Bearer {unknown}")),
            ]
            .concat(),
            Some(401),
        ),
        (
            "trailing parameter",
            get(&format!("Bearer {valid}, realm=\"x\"")),
            Some(400),
        ),
        (
            "two tokens",
            get(&format!("Bearer {valid} {valid}")),
            Some(400),
        ),
        ("padding", get(&format!("Bearer {valid}=")), Some(401)),
        (
            "truncated",
            get(&format!("Bearer {}", &valid[..valid.len() - 1])),
            Some(401),
        ),
        (
            "one character changed",
            get(&format!("Bearer {changed}")),
            Some(401),
        ),
        (
            "unknown token",
            get(&format!("Bearer {unknown}")),
            Some(401),
        ),
        (
            "revoked token",
            get(&format!("Bearer {revoked}")),
            Some(401),
        ),
        ("other scheme", get(&format!("Token {valid}")), Some(401)),
        (
            "scheme with colon",
            get(&format!("Bearer: {valid}")),
            Some(401),
        ),
        ("scheme glued", get(&format!("Bearer{valid}")), Some(401)),
        (
            "lowercase with tab",
            get(&format!("bearer\t{valid}")),
            Some(400),
        ),
        (
            "token in query only",
            with(&format!(
                "GET /api/agent-base?access_token={valid} HTTP/1.1\r\nHost: x"
            )),
            Some(401),
        ),
        (
            "token in cookie only",
            with(&format!(
                "GET /api/agent-base HTTP/1.1\r\nHost: x\r\nCookie: token={valid}"
            )),
            Some(401),
        ),
        (
            "identity spoof without token",
            with(
                "GET /api/agent-base HTTP/1.1\r\nHost: x\r\nX-Prodgy-Product: acme\r\nX-Prodgy-Token: ns/good\r\nX-Prodgy-Scopes: *",
            ),
            Some(401),
        ),
        (
            "proxy-authorization only",
            with(&format!(
                "GET /api/agent-base HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {valid}"
            )),
            Some(401),
        ),
        (
            "cl and te with valid token",
            with(&format!(
                "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )),
            Some(400),
        ),
        (
            "te and cl with valid token",
            with(&format!(
                "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-length: 0\r\nAuthorization: Bearer {valid}\r\n\r\n0\r\n\r\n"
            )),
            Some(400),
        ),
        (
            "cl and te without token",
            with(
                "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x",
            ),
            Some(400),
        ),
        (
            "conflicting content lengths",
            with(&format!(
                "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
            )),
            Some(400),
        ),
        (
            "non-chunked final te",
            with(&format!(
                "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}\r\nTransfer-Encoding: gzip\r\n\r\nabcd"
            )),
            Some(400),
        ),
        (
            "http/1.0 with te",
            with(&format!(
                "POST /api/agent-base HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {valid}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )),
            Some(400),
        ),
        (
            "dot segments",
            with(&format!(
                "GET /api/knowledge-base/../agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {scoped}"
            )),
            None,
        ),
        (
            "encoded dot segments",
            with(&format!(
                "GET /api/knowledge-base/%2E%2e/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}"
            )),
            Some(400),
        ),
        (
            "single dot segment",
            with(&format!(
                "GET /api/./agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}"
            )),
            None,
        ),
        (
            "scoped token, other path",
            with(&format!(
                "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {scoped}"
            )),
            Some(403),
        ),
        (
            "scoped token, write",
            with(&format!(
                "DELETE /api/agent-base/a1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {scoped}"
            )),
            Some(403),
        ),
        ("garbage request line", with("GARBAGE"), Some(400)),
        (
            "bad method token",
            with(&format!(
                "G@T /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}\r\nX: y"
            )),
            None,
        ),
        (
            "bad version",
            with(&format!(
                "GET /api/agent-base HTTP/9.9\r\nHost: x\r\nAuthorization: Bearer {valid}"
            )),
            None,
        ),
        (
            "absolute form without token",
            with("GET http://evil.example/api/agent-base HTTP/1.1\r\nHost: x"),
            None,
        ),
        (
            "no host without token",
            with("GET /api/agent-base HTTP/1.1\r\nX: y"),
            Some(401),
        ),
        (
            "long uri without token",
            with(&format!(
                "GET /api/agent-base/{} HTTP/1.1\r\nHost: x",
                "a".repeat(60_000)
            )),
            None,
        ),
        (
            "expect continue without token",
            with(
                "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10",
            ),
            Some(401),
        ),
        (
            "bad chunk without token",
            with(
                "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            ),
            Some(401),
        ),
        (
            "header without name",
            with(&format!(
                "GET /api/agent-base HTTP/1.1\r\nHost: x\r\n: Bearer {valid}"
            )),
            Some(400),
        ),
        (
            "cr only line endings",
            format!("GET /api/agent-base HTTP/1.1\rHost: x\rAuthorization: Bearer {valid}\r\r")
                .into_bytes(),
            None,
        ),
        (
            "nul in header name",
            [
                b"GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthor\0ization: Bearer ".as_slice(),
                valid.as_bytes(),
                b"\r\nConnection: close\r\n\r\n",
            ]
            .concat(),
            Some(400),
        ),
        (
            "authorization in trailer only",
            with(
                "POST /api/agent-base HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: Authorization\r\n\r\n0\r\nAuthorization: Bearer x\r\n",
            ),
            Some(401),
        ),
    ];
    // Huge header block (past pingora's limit) with a valid token at the end.
    v.push((
        "header block over 1 MiB",
        format!("GET /api/agent-base HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nAuthorization: Bearer {valid}\r\n\r\n", "p".repeat(1_100_000)).into_bytes(),
        Some(431),
    ));
    v
}

/// A GET with a valid token whose head is exactly `bytes` long and has
/// `headers` header fields (Host, Authorization, Connection and padding).
fn head_of(bearer: &str, bytes: usize, headers: usize) -> Vec<u8> {
    let mut head =
        format!("GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\n");
    for i in 0..headers - 4 {
        head.push_str(&format!("X-{i}: v\r\n"));
    }
    let end = "Connection: close\r\n\r\n";
    let pad = bytes - head.len() - end.len() - "X-Pad: \r\n".len();
    head.push_str(&format!("X-Pad: {}\r\n{end}", "p".repeat(pad)));
    assert_eq!(head.len(), bytes);
    head.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_are_bounded_exactly_at_their_limits() {
    let t = issue("ns", "bounds", "acme");
    for (bytes, headers, flags) in [
        (61_440, 96, vec![]),
        (
            4096,
            20,
            vec!["--max-request-head-bytes=4096", "--max-request-headers=20"],
        ),
    ] {
        let f = fixture(&[&t.record], &flags).await;
        let addr = f.proxy.addr;
        let cases = [
            (bytes, headers, 200, None),
            (bytes + 1, headers, 431, Some("request_head_too_large")),
            (bytes, headers + 1, 431, Some("too_many_headers")),
        ];
        for (b, h, want, code) in cases {
            let head = head_of(&t.bearer(), b, h);
            let resp = tokio::task::spawn_blocking(move || raw(addr, &head))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(resp.status, Some(want), "{b} bytes, {h} headers: {resp:?}");
            if let Some(code) = code {
                let body: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
                assert_eq!(body["error"]["code"], code);
                assert_eq!(
                    resp.header("content-type").as_deref(),
                    Some("application/json")
                );
            }
        }
        assert_eq!(
            f.up.count(),
            1,
            "only the head within the limits was forwarded"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_over_raw_tcp_are_never_forwarded() {
    let good = issue("ns", "good", "acme");
    let scoped = issue("ns", "scoped", "acme").scopes(&[Scope::AgentsRead]);
    let revoked = issue("ns", "revoked", "acme").state(RecordState::Revoked);
    let f = fixture(&[&good.record, &scoped.record, &revoked.record], &[]).await;
    let unknown = Token::generate("prod").unwrap();
    let cases = corpus(
        good.token.expose(),
        unknown.expose(),
        revoked.token.expose(),
        scoped.token.expose(),
    );
    assert!(cases.len() >= 50, "corpus has {}", cases.len());
    let addr = f.proxy.addr;
    let mut answered = 0;
    let mut wrong = Vec::new();
    for (name, bytes, want) in cases {
        let resp = tokio::task::spawn_blocking(move || raw(addr, &bytes))
            .await
            .unwrap();
        let status = resp.as_ref().and_then(|r| r.status);
        if let Some(s) = status {
            answered += 1;
            assert!((400..500).contains(&s), "{name}: got {s}");
        }
        if let Some(w) = want
            && status != Some(w)
        {
            wrong.push(format!("{name}: want {w}, got {resp:?}"));
        }
        // Refusals from the proxy's own checks carry the JSON error body.
        if let (Some(r), Some(401 | 403 | 431)) = (&resp, status) {
            let body: serde_json::Value =
                serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("{name}: {r:?}"));
            assert!(body["error"]["code"].is_string(), "{name}");
        }
        assert_eq!(f.up.count(), 0, "{name} was forwarded");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(answered >= 50, "only {answered} answered");
    // Still alive and enforcing.
    let ok = call(
        &f,
        "GET",
        "/api/agent-base",
        &[("authorization", &good.bearer())],
    )
    .await;
    assert_eq!(ok.status(), 200);
    let logs = f.proxy.logs();
    assert!(!logs.contains(good.token.expose()), "token in logs");
    assert!(
        !logs.contains(&good.token.expose()[8..]),
        "token body in logs"
    );
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_by_token_reason_and_latency_without_leaking_tokens() {
    let a = issue("team-a", "reader", "acme").scopes(&[Scope::AgentsRead]);
    let b = issue("team-b", "writer", "acme");
    let f = fixture(&[&a.record, &b.record], &[]).await;
    for _ in 0..3 {
        call(
            &f,
            "GET",
            "/api/agent-base",
            &[("authorization", &a.bearer())],
        )
        .await;
    }
    call(
        &f,
        "POST",
        "/api/agent-base",
        &[("authorization", &a.bearer())],
    )
    .await; // 403
    call(
        &f,
        "POST",
        "/api/knowledge-base/storage",
        &[("authorization", &b.bearer())],
    )
    .await;
    let unknown = Token::generate("prod").unwrap();
    for _ in 0..2 {
        call(
            &f,
            "GET",
            "/api/agent-base",
            &[("authorization", &format!("Bearer {}", unknown.expose()))],
        )
        .await;
    }
    call(&f, "GET", "/api/agent-base", &[]).await;

    // A request is counted once its answer is written: the last one's counts
    // may land just after the client has read it. Wait until all 8 are in
    // (and none in flight), then read everything from one scrape.
    let counted = |text: &str| {
        let n = |outcome: &str| {
            let series =
                format!("prodgy_proxy_request_duration_seconds_count{{outcome=\"{outcome}\"}}");
            metric(text, &series).unwrap_or(0.0)
        };
        let idle = metric(text, "prodgy_proxy_in_flight_requests") == Some(0.0);
        idle && n("forwarded") + n("rejected") >= 8.0
    };
    eventually(Duration::from_secs(5), || async {
        counted(&f.proxy.metrics_text())
    })
    .await
    .expect("8 requests counted");
    let text = f.proxy.metrics_text();
    let m = |s: &str| metric(&text, s);
    assert_eq!(
        m(
            r#"prodgy_proxy_requests_total{namespace="team-a",name="reader",product="acme",route_group="agents",status_class="2xx"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        m(
            r#"prodgy_proxy_requests_total{namespace="team-a",name="reader",product="acme",route_group="agents",status_class="4xx"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        m(
            r#"prodgy_proxy_requests_total{namespace="team-b",name="writer",product="acme",route_group="storage",status_class="2xx"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        m(
            r#"prodgy_proxy_requests_total{namespace="",name="",product="",route_group="agents",status_class="4xx"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        m(r#"prodgy_proxy_auth_failures_total{reason="unknown_token"}"#),
        Some(2.0)
    );
    assert_eq!(
        m(r#"prodgy_proxy_auth_failures_total{reason="missing_token"}"#),
        Some(1.0)
    );
    assert_eq!(
        m(r#"prodgy_proxy_auth_failures_total{reason="insufficient_scope"}"#),
        Some(1.0)
    );
    assert_eq!(
        m(
            r#"prodgy_proxy_token_accepted_requests_total{namespace="team-a",name="reader",product="acme"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        m(r#"prodgy_proxy_request_duration_seconds_count{outcome="forwarded"}"#),
        Some(4.0)
    );
    assert_eq!(
        m(r#"prodgy_proxy_request_duration_seconds_count{outcome="rejected"}"#),
        Some(4.0)
    );
    assert_eq!(
        m(r#"prodgy_proxy_request_duration_seconds_bucket{outcome="rejected",le="+Inf"}"#),
        Some(4.0)
    );
    assert_eq!(m("prodgy_proxy_tokens_loaded"), Some(2.0));
    assert_eq!(m("prodgy_proxy_index_ready"), Some(1.0));
    assert!(m("prodgy_proxy_index_staleness_seconds").unwrap() < 5.0);
    assert!(m("prodgy_proxy_index_last_sync_timestamp_seconds").unwrap() > 1.7e9);
    assert_eq!(m("prodgy_proxy_in_flight_requests"), Some(0.0));
    for t in [&a.token, &b.token, &unknown] {
        assert!(!text.contains(&t.expose()[5..]), "token in metrics");
        assert!(!text.contains(&t.hash().to_hex()), "digest in metrics");
    }
    // The upstream being down is counted and answered with JSON.
    drop(f.up);
    let resp = client()
        .get(f.proxy.url("/api/agent-base"))
        .header("authorization", a.bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    assert_eq!(
        f.proxy
            .metric(r#"prodgy_proxy_upstream_errors_total{kind="connect"}"#),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_answer_and_logs_never_hold_a_token() {
    let t = issue("ns", "logged", "acme");
    let f = fixture(&[&t.record], &[]).await;
    // Every path that could log: accepted, refused, upstream failure,
    // invalid HTTP, and a token in the URL.
    call(
        &f,
        "GET",
        "/api/agent-base",
        &[("authorization", &t.bearer())],
    )
    .await;
    call(
        &f,
        "GET",
        "/api/agent-base",
        &[("authorization", &format!("Basic {}", t.token.expose()))],
    )
    .await;
    call(
        &f,
        "GET",
        &format!("/api/agent-base?token={}", t.token.expose()),
        &[],
    )
    .await;
    let addr = f.proxy.addr;
    let tok = t.token.expose().to_owned();
    tokio::task::spawn_blocking(move || {
        raw(
            addr,
            format!("GET / HTTP/1.1\r\nAuthorization: Bearer {tok}\r\nBad Header: x\r\n\r\n")
                .as_bytes(),
        );
    })
    .await
    .unwrap();
    let (status, body) = ops_get(f.proxy.metrics, "/healthz").unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = ops_get(f.proxy.metrics, "/readyz").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["tokens"],
        1
    );
    assert_eq!(ops_get(f.proxy.metrics, "/nope").unwrap().0, 404);
    let logs = f.proxy.logs();
    assert!(
        logs.contains("token file loaded"),
        "logs are captured: {logs}"
    );
    assert!(
        !logs.contains(&t.token.expose()[5..]),
        "token in logs:\n{logs}"
    );
}
