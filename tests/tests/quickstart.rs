#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The README's "run it" (`make run` = `hack/quickstart.sh`), end to end with
//! the real operator, proxy and API binaries on free loopback ports: the
//! printed token opens every resource group, bad tokens get 401, usage shows
//! in the proxy's `/metrics`, and Ctrl-C stops everything.

use prodgy_crds::Token;
use prodgy_tests::caller::Caller;
use prodgy_tests::local::{Quickstart, workspace_root};
use prodgy_tests::metrics::Scrape;
use prodgy_tests::tour::{every_group, tour};
use reqwest::{Method, StatusCode};

#[tokio::test]
async fn quickstart_token_opens_every_resource_group_and_usage_is_counted() {
    let data = tempfile::tempdir().unwrap();
    let manifest = workspace_root().join("examples/apitoken.yaml");
    let mut qs = Quickstart::start(&manifest, data.path()).unwrap();

    // The banner shows a well-formed token once and a curl that works as pasted.
    Token::parse(&qs.token).expect("the printed token is well-formed");
    let token = qs.token.clone();
    let curl = format!(
        "curl -H \"Authorization: Bearer {token}\" {}/api/agent-base",
        qs.proxy
    );
    assert!(
        qs.banner.iter().any(|l| l.trim() == curl),
        "no ready-to-paste curl in {:?}",
        qs.banner
    );
    assert_eq!(
        qs.banner.iter().filter(|l| l.contains(&token)).count(),
        2,
        "the token appears in its own line and the curl only"
    );
    // The hashed record on disk holds a digest, never the plaintext.
    for entry in std::fs::read_dir(data.path().join("tokens")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!text.contains(&token), "plaintext token in a hashed record");
        assert!(text.contains(&Token::parse(&token).unwrap().hash().to_hex()));
    }

    let caller = Caller::new(&qs.proxy).unwrap();
    let steps = tour(&caller, &token).await.unwrap();
    every_group(&steps).unwrap();

    // Bad credentials: 401 with an RFC 6750 challenge and the reason in the body.
    let mut mistyped = token.clone();
    let last = mistyped.pop().unwrap();
    mistyped.push(if last == 'a' { 'b' } else { 'a' });
    let unknown = Token::generate("prod").unwrap();
    let cases: [(Option<&str>, &str); 4] = [
        (None, "missing_token"),
        (Some("not-a-token"), "malformed_token"),
        (Some(&mistyped), "bad_checksum"),
        (Some(unknown.expose()), "unknown_token"),
    ];
    for (bad, reason) in cases {
        let reply = caller
            .call(Method::GET, "/api/agent-base", bad, None)
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{reason}: {}",
            reply.body
        );
        assert_eq!(
            reply.error_code().as_deref(),
            Some(reason),
            "{}",
            reply.body
        );
        let challenge = reply.www_authenticate.unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer"),
            "{reason}: WWW-Authenticate {challenge:?}"
        );
        assert!(!reply.body.contains(&token));
    }

    // Usage: exactly the tour's calls, under the token's identity; failures by reason.
    let text = reqwest::get(format!("{}/metrics", qs.proxy_metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains(&token), "plaintext token in /metrics");
    let scrape = Scrape::parse(&text);
    let who = [("namespace", "default"), ("name", "ci-deploy")];
    assert_eq!(
        scrape.sum("prodgy_proxy_token_accepted_requests_total", &who),
        steps.len() as f64,
        "accepted requests of default/ci-deploy"
    );
    assert_eq!(
        scrape.sum(
            "prodgy_proxy_requests_total",
            &[("name", "ci-deploy"), ("status_class", "2xx")]
        ),
        steps.len() as f64
    );
    for (_, reason) in cases {
        assert_eq!(
            scrape.sum("prodgy_proxy_auth_failures_total", &[("reason", reason)]),
            1.0,
            "auth failures with reason {reason}"
        );
    }
    let api_metrics = reqwest::get(format!("{}/metrics", qs.api_ops))
        .await
        .unwrap();
    assert_eq!(api_metrics.status(), StatusCode::OK, "API /metrics");

    // Ctrl-C stops both processes: nothing listens any more.
    let status = qs.interrupt().unwrap();
    assert!(status.success(), "quickstart exited with {status}");
    for addr in [
        qs.proxy.trim_start_matches("http://").to_owned(),
        qs.api_addr.clone(),
    ] {
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "{addr} still accepts connections after Ctrl-C"
        );
    }
}
