#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]
//! The unused switch-off across the real binaries (operator, proxy, API on
//! the Kubernetes API test server): calls through the proxy keep a token
//! alive, through the proxy's usage reports and the operator's fold; a
//! token nobody calls is switched off and the proxy then refuses it as
//! inactive; switched on again, it is accepted at once.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use prodgy_crds::{Phase, apitoken::condition, lifecycle::REASON_UNUSED};
use prodgy_tests::cluster::Scenario;
use prodgy_tests::local::LocalCluster;
use prodgy_tests::wait::{Probe, until};
use reqwest::StatusCode;
use serde_json::json;

const PATH: &str = "/api/agent-base";
/// The limit of both tokens: long enough for usage to travel from a call
/// to the operator (proxy flush 1 s, then a watch event), short for a test.
const LIMIT: &str = "6s";

#[tokio::test]
async fn a_used_token_stays_on_and_an_unused_one_is_switched_off_and_refused() {
    let local = LocalCluster::start().await.unwrap();
    let s = local.cluster().unwrap().scenario("unused").await.unwrap();
    let result = scenario(&s).await;
    s.finish(result).await;
}

async fn issued(s: &Scenario, name: &str) -> Result<String> {
    s.apply_token(name, json!({"deactivateAfterUnused": LIMIT}))
        .await?;
    s.wait_phase(name, Phase::Active, Duration::from_secs(30))
        .await?;
    s.delivered_token(name).await
}

async fn scenario(s: &Scenario) -> Result<()> {
    let busy = issued(s, "busy").await?;
    let idle = issued(s, "idle").await?;
    ensure!(s.caller().get(PATH, &idle).await?.status == StatusCode::OK);
    // Call `busy` twice a second until `idle`, unused since its one call,
    // is switched off (watched in its status: a call would be a use), and
    // for at least 1.5 limits in all.
    let started = Instant::now();
    let mut idle_off = None;
    while idle_off.is_none() || started.elapsed() < Duration::from_secs(9) {
        let reply = s.caller().get(PATH, &busy).await?;
        ensure!(
            reply.status == StatusCode::OK,
            "busy refused after {:?}: {}",
            started.elapsed(),
            reply.body
        );
        if idle_off.is_none() && ready_reason(s, "idle").await? == REASON_UNUSED {
            idle_off = Some(started.elapsed());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "idle never switched off"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("idle switched off {idle_off:?} after its one call");
    let reply = s.caller().get(PATH, &idle).await?;
    ensure!(
        reply.status == StatusCode::UNAUTHORIZED
            && reply.error_code().as_deref() == Some("inactive_token"),
        "idle answered {} {}",
        reply.status,
        reply.body
    );
    let off = s.tokens().get("idle").await?;
    ensure!(
        !off.spec.active && !off.spec.revoked,
        "idle: {:?}",
        off.spec
    );
    let busy_token = s.tokens().get("busy").await?;
    ensure!(busy_token.spec.active, "busy was switched off");

    // Switched on again: accepted at once.
    s.patch_spec("idle", json!({"active": true})).await?;
    until(
        "idle accepted again",
        Duration::from_secs(2),
        Duration::from_millis(20),
        || async {
            let reply = s.caller().get(PATH, &idle).await?;
            Ok(if reply.status == StatusCode::OK {
                Probe::Done(())
            } else {
                Probe::NotYet(reply.body)
            })
        },
    )
    .await?;
    until(
        "idle Ready again",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            let reason = ready_reason(s, "idle").await?;
            Ok(if reason == condition::REASON_ACTIVE {
                Probe::Done(())
            } else {
                Probe::NotYet(reason)
            })
        },
    )
    .await
    .context("idle")
}

async fn ready_reason(s: &Scenario, name: &str) -> Result<String> {
    let status = s.tokens().get(name).await?.status.unwrap_or_default();
    Ok(status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .map(|c| c.reason.clone())
        .unwrap_or_default())
}
