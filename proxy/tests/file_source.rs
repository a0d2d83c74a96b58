//! The file source through the real binary: reloads, invalid records,
//! readiness, and keeping the last good state when the file breaks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use prodgy_crds::RecordState;
use support::*;

async fn status(p: &Proxy, auth: &str) -> u16 {
    client()
        .get(p.url("/api/agent-base"))
        .header("authorization", auth)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_take_effect_and_invalid_records_are_counted() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let a = issue("ns", "a", "acme");
    let b = issue("ns", "b", "acme");
    write_records(&path, &[&a.record]);
    let (u, p2) = (up.addr, path.clone());
    let proxy = tokio::task::spawn_blocking(move || ProxyBuilder::file(u, &p2).start())
        .await
        .unwrap();
    assert_eq!(status(&proxy, &a.bearer()).await, 200);
    assert_eq!(status(&proxy, &b.bearer()).await, 401);

    // Revoke a, add b, and one record that cannot be used.
    let mut a_revoked = a.record.clone();
    a_revoked.state = RecordState::Revoked;
    let mut broken = issue("ns", "broken", "acme").record;
    broken.hashes[0].sha256 = "not-a-digest".into();
    write_records(&path, &[&a_revoked, &b.record, &broken]);
    let took = eventually(Duration::from_secs(3), || async {
        code(&proxy, &a.bearer()).await == "revoked_token"
    })
    .await
    .expect("revocation never applied");
    assert!(took < Duration::from_millis(1_500), "reload took {took:?}");
    assert_eq!(status(&proxy, &b.bearer()).await, 200);
    assert_eq!(
        proxy.metric("prodgy_proxy_index_invalid_records"),
        Some(1.0)
    );
    assert!(
        proxy
            .metric("prodgy_proxy_index_invalid_records_total")
            .unwrap()
            >= 1.0
    );
    assert_eq!(proxy.metric("prodgy_proxy_tokens_loaded"), Some(2.0));
    assert!(proxy.logs().contains("skipping invalid token record"));

    // Removing a record removes the token.
    write_records(&path, &[&b.record]);
    eventually(Duration::from_secs(3), || async {
        code(&proxy, &a.bearer()).await == "unknown_token"
    })
    .await
    .expect("deleted token still known");
    assert_eq!(
        proxy.metric("prodgy_proxy_index_invalid_records"),
        Some(0.0)
    );

    // A file that stops parsing keeps the last good state; staleness grows.
    std::fs::write(&path, b"[{\"version\": 1,").unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(status(&proxy, &b.bearer()).await, 200);
    assert!(
        proxy
            .metric("prodgy_proxy_index_source_errors_total")
            .unwrap()
            >= 1.0
    );
    assert!(
        proxy
            .metric("prodgy_proxy_index_staleness_seconds")
            .unwrap()
            >= 1.0
    );
    assert_eq!(proxy.readyz(), 200, "stays ready on the last good state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_means_not_ready_and_never_200_until_it_appears() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.d");
    let (u, p2) = (up.addr, tokens.clone());
    let proxy = tokio::task::spawn_blocking(move || ProxyBuilder::file(u, &p2).no_wait().start())
        .await
        .unwrap();
    let a = issue("ns", "a", "acme");
    for _ in 0..5 {
        assert_eq!(proxy.readyz(), 503);
        assert_eq!(status(&proxy, &a.bearer()).await, 401);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(proxy.metric("prodgy_proxy_index_ready"), Some(0.0));
    assert_eq!(up.count(), 0);

    // A directory of record files, one per token.
    std::fs::create_dir(&tokens).unwrap();
    let b = issue("ns", "b", "acme");
    write_records(&tokens.join("a.json"), &[&a.record]);
    std::fs::write(
        tokens.join("b.json"),
        serde_json::to_vec(&b.record).unwrap(),
    )
    .unwrap();
    proxy.wait_ready(Duration::from_secs(5));
    assert_eq!(status(&proxy, &a.bearer()).await, 200);
    assert_eq!(status(&proxy, &b.bearer()).await, 200);
    std::fs::remove_file(tokens.join("b.json")).unwrap();
    eventually(Duration::from_secs(3), || async {
        status(&proxy, &b.bearer()).await == 401
    })
    .await
    .expect("removed file still loaded");
}
