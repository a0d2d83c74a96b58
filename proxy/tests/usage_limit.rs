//! Usage caps through the real proxy binary: the call past the cap gets 429
//! `usage_limit_reached` (with `Retry-After` to the renewal when the quota
//! renews, without for a lifetime cap), counted in the refusal metric; the
//! quota renews when its window ends; calls the operator summed from other
//! replicas count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prodgy_crds::RecordLimit;
use support::*;

/// A cap of `requests` per `per` seconds (or lifetime) anchored at
/// `anchor`, with `used` calls the operator summed for the current window.
fn cap(requests: u64, per: Option<u64>, anchor: DateTime<Utc>, used: u64) -> RecordLimit {
    let window = prodgy_crds::usage_limit::Window::at(anchor, per, Utc::now());
    RecordLimit {
        requests,
        per_seconds: per,
        anchor,
        window_start: window.start,
        used,
        reported: BTreeMap::new(),
    }
}

fn whole_second(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap()
}

async fn get(p: &Proxy, bearer: &str) -> reqwest::Response {
    client()
        .get(p.url("/api/agent-base"))
        .header("authorization", bearer)
        .send()
        .await
        .unwrap()
}

async fn refused_over_cap(resp: reqwest::Response) -> Option<u64> {
    assert_eq!(resp.status().as_u16(), 429);
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "usage_limit_reached", "{body}");
    retry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifetime_cap_refuses_for_good_without_retry_after() {
    let mut t = issue("ns", "capped", "acme");
    t.record.usage_limit = Some(Box::new(cap(3, None, whole_second(Utc::now()), 1)));
    let (up, p, _dir) = start(&[&t.record]).await;
    let bearer = t.bearer();
    for _ in 0..2 {
        assert_eq!(get(&p, &bearer).await.status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(refused_over_cap(get(&p, &bearer).await).await, None);
    }
    assert_eq!(up.count(), 2, "1 summed elsewhere + 2 here = the cap");
    // Counted once the request is logged, just after its answer.
    let series = r#"prodgy_proxy_auth_failures_total{reason="usage_limit_reached"}"#;
    let counted = eventually(Duration::from_secs(5), || async {
        p.metric(series) == Some(3.0)
    })
    .await;
    assert!(counted.is_some(), "{series} = {:?}", p.metric(series));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewing_cap_says_when_it_renews_and_renews_then() {
    // One-minute windows whose current one ends about 8 s from now.
    let anchor = whole_second(Utc::now()) - chrono::TimeDelta::seconds(52);
    let mut t = issue("ns", "monthly", "acme");
    t.record.usage_limit = Some(Box::new(cap(2, Some(60), anchor, 0)));
    let (up, p, _dir) = start(&[&t.record]).await;
    let bearer = t.bearer();
    assert_eq!(get(&p, &bearer).await.status(), 200);
    assert_eq!(get(&p, &bearer).await.status(), 200);
    let retry = refused_over_cap(get(&p, &bearer).await).await.unwrap();
    let left = (anchor + chrono::TimeDelta::seconds(60) - Utc::now()).num_milliseconds();
    assert!(
        (1..=8).contains(&retry),
        "Retry-After {retry} with {left} ms left"
    );
    assert_eq!(up.count(), 2);
    tokio::time::sleep(Duration::from_secs(retry)).await;
    // Renewed: two more, then refused again until the next window.
    assert_eq!(get(&p, &bearer).await.status(), 200);
    assert_eq!(get(&p, &bearer).await.status(), 200);
    let retry = refused_over_cap(get(&p, &bearer).await).await.unwrap();
    assert!(
        (55..=60).contains(&retry),
        "Retry-After {retry} in a fresh window"
    );
    assert_eq!(up.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncapped_tokens_and_other_refusals_are_untouched() {
    let free = issue("ns", "free", "acme");
    let mut full = issue("ns", "full", "acme");
    full.record.usage_limit = Some(Box::new(cap(5, Some(3_600), whole_second(Utc::now()), 5)));
    full.record.state = prodgy_crds::RecordState::Inactive;
    let (_up, p, _dir) = start(&[&free.record, &full.record]).await;
    for _ in 0..20 {
        assert_eq!(get(&p, &free.bearer()).await.status(), 200);
    }
    // Deactivated beats over the cap: the earlier refusal wins.
    assert_eq!(get(&p, &full.bearer()).await.status(), 401);
}

async fn start(records: &[&prodgy_crds::HashedRecord]) -> (Upstream, Proxy, tempfile::TempDir) {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    write_records(&path, records);
    let b = ProxyBuilder::file(up.addr, &path);
    let p = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();
    (up, p, dir)
}
