#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `spec.allowedSourceRanges` end to end: the operator, proxy and API
//! binaries on the Kubernetes API test server. An ApiToken limited to one
//! loopback address works from it and is refused from another (clients bind
//! 127.0.0.2 or 127.0.0.1); a change of the ranges reaches the proxy without
//! reissuing the token; the API server refuses a bad range; removing the
//! ranges opens the token to any source.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use prodgy_crds::Phase;
use prodgy_tests::cluster::Scenario;
use prodgy_tests::local::LocalCluster;
use prodgy_tests::wait::{Probe, until};
use serde_json::json;

const PROPAGATE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_token_with_source_ranges_works_only_from_inside_them() {
    let local = LocalCluster::start().await.unwrap();
    let s = local.cluster().unwrap().scenario("sources").await.unwrap();
    let result = scenario(&local, &s).await;
    s.finish(result).await;
}

/// `GET /api/agent-base` from the local address `from`: the status and the
/// refusal's `error.code`.
async fn call(local: &LocalCluster, from: &str, token: &str) -> Result<(u16, Option<String>)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .local_address(from.parse::<IpAddr>()?)
        .timeout(Duration::from_secs(10))
        .build()?;
    let resp = client
        .get(format!("{}/api/agent-base", local.proxy))
        .bearer_auth(token)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    Ok((status, body["error"]["code"].as_str().map(str::to_owned)))
}

/// Waits until a call from `from` gets `want`.
async fn answers(local: &LocalCluster, from: &str, token: &str, want: u16) -> Result<()> {
    until(
        &format!("{want} from {from}"),
        PROPAGATE,
        Duration::from_millis(100),
        || async {
            let got = call(local, from, token).await?;
            Ok(if got.0 == want {
                Probe::Done(())
            } else {
                Probe::NotYet(format!("{got:?}"))
            })
        },
    )
    .await
}

async fn refused_from(local: &LocalCluster, from: &str, token: &str) -> Result<()> {
    let got = call(local, from, token).await?;
    ensure!(
        got == (403, Some("source_not_allowed".into())),
        "from {from}: {got:?}"
    );
    Ok(())
}

/// The prefix of the token `name` holds now: it changes only on a reissue.
async fn issued_prefix(s: &Scenario, name: &str) -> Result<Option<String>> {
    Ok(s.tokens()
        .get(name)
        .await?
        .status
        .unwrap_or_default()
        .prefix)
}

async fn scenario(local: &LocalCluster, s: &Scenario) -> Result<()> {
    let spec = json!({"allowedSourceRanges": ["127.0.0.2/32", "2001:db8::/32"]});
    s.apply_token("ranged", spec).await?;
    s.wait_phase("ranged", Phase::Active, PROPAGATE).await?;
    let token = s.delivered_token("ranged").await?;
    answers(local, "127.0.0.2", &token, 200).await?;
    refused_from(local, "127.0.0.1", &token).await?;

    // New ranges reach the proxy; the token stays the same.
    let prefix = issued_prefix(s, "ranged").await?;
    s.patch_spec("ranged", json!({"allowedSourceRanges": ["127.0.0.1/32"]}))
        .await?;
    answers(local, "127.0.0.1", &token, 200).await?;
    refused_from(local, "127.0.0.2", &token).await?;
    let now = issued_prefix(s, "ranged").await?;
    ensure!(
        now == prefix,
        "the token was reissued: {prefix:?} -> {now:?}"
    );

    // The API server refuses a range without a prefix length.
    let bad = s
        .patch_spec("ranged", json!({"allowedSourceRanges": ["127.0.0.2"]}))
        .await;
    match bad {
        Err(kube::Error::Api(e)) => ensure!(
            e.code == 422 && e.message.contains("must be a CIDR"),
            "bad range refused as {} {}",
            e.code,
            e.message
        ),
        other => anyhow::bail!("a bare address was not refused: {other:?}"),
    }

    // Without ranges, any source.
    s.patch_spec("ranged", json!({"allowedSourceRanges": null}))
        .await?;
    answers(local, "127.0.0.2", &token, 200).await?;
    answers(local, "127.0.0.1", &token, 200).await?;

    let scrape = s.proxy_metrics().await?;
    let refusals = scrape.sum(
        "prodgy_proxy_auth_failures_total",
        &[("reason", "source_not_allowed")],
    );
    ensure!(
        refusals >= 2.0,
        "{refusals} source_not_allowed refusals exported"
    );
    Ok(())
}
