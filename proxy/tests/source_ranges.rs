//! Source ranges through the real binary: the TCP peer over IPv4 and IPv6
//! (a dual-stack listener included), forwarding headers ignored from an
//! untrusted peer and read behind `--trusted-proxies`, and the refusal's
//! status, body and metric.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::IpAddr;

use support::*;

/// An issued token limited to `ranges`.
fn ranged(name: &str, ranges: &[&str]) -> Issued {
    let mut t = issue("ns", name, "acme");
    t.record.allowed_source_ranges = ranges.iter().map(|r| (*r).to_owned()).collect();
    t
}

/// A file-source proxy holding `tokens`, started with `extra` flags on `host`.
async fn proxy(
    up: &Upstream,
    tokens: &[&Issued],
    host: &str,
    extra: &[&str],
) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let records: Vec<_> = tokens.iter().map(|t| &t.record).collect();
    write_records(&path, &records);
    let mut b = ProxyBuilder::file(up.addr, &path).listen_host(host);
    for a in extra {
        b = b.arg(*a);
    }
    let p = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();
    (p, dir)
}

/// `GET /api/agent-base` from `local` (the client socket's address) with
/// extra headers: the status and the `error.code` (`"ok"` for a 200).
async fn call(
    p: &Proxy,
    local: Option<IpAddr>,
    t: &Issued,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .local_address(local)
        .build()
        .unwrap();
    let mut req = client
        .get(p.url("/api/agent-base"))
        .header("authorization", t.bearer());
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    if status == 200 {
        return (200, "ok".into());
    }
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    (status, v["error"]["code"].as_str().unwrap().to_owned())
}

const REFUSED: (u16, &str) = (403, "source_not_allowed");

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn is(got: (u16, String), want: (u16, &str)) -> bool {
    let (status, code) = got;
    status == want.0 && code == want.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_clients_inside_the_ranges_pass_and_others_get_403() {
    let up = Upstream::start().await;
    let loopback = ranged("loopback", &["127.0.0.0/8"]);
    let only_2 = ranged("only-2", &["10.0.0.0/8", "127.0.0.2/32"]);
    let elsewhere = ranged("elsewhere", &["192.0.2.0/24", "2001:db8::/32"]);
    let any = issue("ns", "any", "acme");
    let (p, _d) = proxy(
        &up,
        &[&loopback, &only_2, &elsewhere, &any],
        "127.0.0.1",
        &[],
    )
    .await;

    assert!(is(
        call(&p, ip("127.0.0.1"), &loopback, &[]).await,
        (200, "ok")
    ));
    assert!(is(call(&p, ip("127.0.0.1"), &any, &[]).await, (200, "ok")));
    assert!(is(
        call(&p, ip("127.0.0.1"), &elsewhere, &[]).await,
        REFUSED
    ));
    // Two loopback addresses: the same token, allowed from one only.
    assert!(is(
        call(&p, ip("127.0.0.2"), &only_2, &[]).await,
        (200, "ok")
    ));
    assert!(is(call(&p, ip("127.0.0.1"), &only_2, &[]).await, REFUSED));
    assert_eq!(up.count(), 3, "a refused request reached the upstream");

    // Counted once the answer is sent: poll.
    let series = r#"prodgy_proxy_auth_failures_total{reason="source_not_allowed"}"#;
    let counted = eventually(std::time::Duration::from_secs(3), || async {
        p.metric(series) == Some(2.0)
    })
    .await;
    assert!(counted.is_some(), "{series}: {:?}", p.metric(series));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_checked_and_a_dual_stack_listener_sees_ipv4_as_ipv4() {
    let up = Upstream::start().await;
    let v6_loopback = ranged("v6-loopback", &["::1/128"]);
    let v6_elsewhere = ranged("v6-elsewhere", &["2001:db8::/32"]);
    let v4_loopback = ranged("v4-loopback", &["127.0.0.0/8"]);
    let tokens = [&v6_loopback, &v6_elsewhere, &v4_loopback];
    let (p, _d) = proxy(&up, &tokens, "[::1]", &[]).await;
    assert!(is(call(&p, None, &v6_loopback, &[]).await, (200, "ok")));
    assert!(is(call(&p, None, &v6_elsewhere, &[]).await, REFUSED));
    assert!(is(call(&p, None, &v4_loopback, &[]).await, REFUSED));
    drop(p);

    // On `[::]` an IPv4 client arrives as ::ffff:127.0.0.1: still 127.0.0.1.
    let (p, _d) = proxy(&up, &tokens, "[::]", &[]).await;
    let v4_url = p.url("/api/agent-base").replace("[::1]", "127.0.0.1");
    let resp = client()
        .get(&v4_url)
        .header("authorization", v4_loopback.bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client()
        .get(&v4_url)
        .header("authorization", v6_loopback.bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(is(call(&p, None, &v6_loopback, &[]).await, (200, "ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let up = Upstream::start().await;
    let outside = ranged("outside", &["192.0.2.0/24"]);
    let loopback = ranged("loopback", &["127.0.0.0/8"]);
    // Trusted proxies elsewhere: the loopback peer is not one of them.
    let (p, _d) = proxy(
        &up,
        &[&outside, &loopback],
        "127.0.0.1",
        &["--trusted-proxies=10.0.0.0/8"],
    )
    .await;
    for spoof in [
        ("x-forwarded-for", "192.0.2.9"),
        ("forwarded", "for=192.0.2.9"),
    ] {
        assert!(
            is(call(&p, None, &outside, &[spoof]).await, REFUSED),
            "{spoof:?}"
        );
        assert!(
            is(call(&p, None, &loopback, &[spoof]).await, (200, "ok")),
            "{spoof:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_trusted_proxies_the_right_most_untrusted_address_is_the_client() {
    let up = Upstream::start().await;
    let outside = ranged("outside", &["192.0.2.0/24"]);
    let v6 = ranged("v6", &["2001:db8::/32"]);
    let loopback = ranged("loopback", &["127.0.0.0/8"]);
    // The loopback peer is a trusted load balancer, 10/8 its inner hops; set
    // through the environment variable this time.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    write_records(&path, &[&outside.record, &v6.record, &loopback.record]);
    let b = ProxyBuilder::file(up.addr, &path)
        .env("PRODGY_PROXY_TRUSTED_PROXIES", "127.0.0.0/8,10.0.0.0/8");
    let p = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();

    let xff = "x-forwarded-for";
    let chain = [(xff, "192.0.2.9, 10.1.1.1")];
    assert!(is(call(&p, None, &outside, &chain).await, (200, "ok")));
    // The client is 192.0.2.9, not the loopback peer.
    assert!(is(call(&p, None, &loopback, &chain).await, REFUSED));
    // What a client wrote left of its own address is never read.
    let spoofed = [(xff, "192.0.2.9, 198.51.100.1, 10.1.1.1")];
    assert!(is(call(&p, None, &outside, &spoofed).await, REFUSED));
    // The trusted hop's own header line comes last.
    let lines = [(xff, "192.0.2.9"), (xff, "10.1.1.1")];
    assert!(is(call(&p, None, &outside, &lines).await, (200, "ok")));
    // RFC 7239, quoted IPv6 with a port.
    let fwd = [(
        "forwarded",
        r#"for="[2001:db8::7]:4711";proto=https, for=10.1.1.1"#,
    )];
    assert!(is(call(&p, None, &v6, &fwd).await, (200, "ok")));
    assert!(is(call(&p, None, &outside, &fwd).await, REFUSED));
    // An obfuscated client cannot be checked: refused.
    let hidden = [("forwarded", "for=_hidden, for=10.1.1.1")];
    assert!(is(call(&p, None, &outside, &hidden).await, REFUSED));
    // Without a header the trusted peer itself is the client.
    assert!(is(call(&p, None, &loopback, &[]).await, (200, "ok")));
}
