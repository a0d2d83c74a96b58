#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]
//! The expiry notice across the real binaries (operator, proxy, API on the
//! Kubernetes API test server), with the operator's default leads (7d, 1d):
//! a token a few seconds from `expiresAt` carries `ExpiringSoon` (the 1-day
//! notice) and one Warning Event while the proxy still accepts it; at
//! `expiresAt` the proxy refuses it as expired and the notice is gone.

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::events::v1::Event;
use kube::{Api, ResourceExt, api::ListParams};
use prodgy_crds::{Phase, lifecycle};
use prodgy_tests::cluster::Scenario;
use prodgy_tests::local::LocalCluster;
use prodgy_tests::wait::{Probe, until};
use reqwest::StatusCode;
use serde_json::json;

const PATH: &str = "/api/agent-base";

#[tokio::test]
async fn an_expiring_token_is_noticed_while_it_works_and_refused_at_its_expiry() {
    let local = LocalCluster::start().await.unwrap();
    let s = local.cluster().unwrap().scenario("expiry").await.unwrap();
    let result = scenario(&s).await;
    s.finish(result).await;
}

/// The `ExpiringSoon` condition's reason, if the token carries it.
async fn notice(s: &Scenario, name: &str) -> Result<Option<String>> {
    let status = s.tokens().get(name).await?.status.unwrap_or_default();
    Ok(status
        .conditions
        .iter()
        .find(|c| c.type_ == lifecycle::EXPIRING_SOON && c.status == "True")
        .map(|c| c.reason.clone()))
}

/// Warning Events of one reason on the token (`series.count` counts
/// repeats the recorder folded into one object).
async fn warnings(s: &Scenario, name: &str, reason: &str) -> Result<i32> {
    let events: Api<Event> = Api::namespaced(s.cluster.client.clone(), &s.namespace);
    let list = events.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| e.series.as_ref().map_or(1, |series| series.count))
        .sum())
}

async fn scenario(s: &Scenario) -> Result<()> {
    let expires = chrono::Utc::now() + chrono::TimeDelta::seconds(8);
    let at = expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    s.apply_token("soon", json!({"expiresAt": at})).await?;
    let t = s
        .wait_phase("soon", Phase::Active, Duration::from_secs(30))
        .await?;
    let token = s.delivered_token("soon").await?;
    ensure!(s.caller().get(PATH, &token).await?.status == StatusCode::OK);
    let within_1d = lifecycle::expiring_reason(Duration::from_secs(86_400));
    ensure!(
        notice(s, "soon").await?.as_deref() == Some(within_1d.as_str()),
        "soon: {:?}",
        t.status
    );
    until(
        "the notice's Event",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let n = warnings(s, "soon", lifecycle::event::EXPIRING_SOON).await?;
            Ok(if n >= 1 {
                Probe::Done(n)
            } else {
                Probe::NotYet(n.to_string())
            })
        },
    )
    .await?;

    let expired = s
        .wait_phase("soon", Phase::Expired, Duration::from_secs(30))
        .await?;
    let reply = s.caller().get(PATH, &token).await?;
    ensure!(
        reply.status == StatusCode::UNAUTHORIZED
            && reply.error_code().as_deref() == Some("expired_token"),
        "after expiry: {} {}",
        reply.status,
        reply.body
    );
    ensure!(
        notice(s, "soon").await?.is_none(),
        "the notice outlived the expiry: {:?}",
        expired.status
    );
    // One notice: the token was first seen inside the last day, so the
    // 7-day notice was never due on its own.
    let n = warnings(s, "soon", lifecycle::event::EXPIRING_SOON).await?;
    ensure!(n == 1, "{n} ExpiringSoon events on {}", expired.name_any());
    Ok(())
}
