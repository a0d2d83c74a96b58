//! The end-to-end scenarios, run against kind (`tests/tests/kind_e2e.rs`)
//! and against the local stack (`tests/tests/local_cluster.rs`): what a
//! platform team does with `kubectl` and what an API consumer then sees.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use prodgy_crds::Phase;
use reqwest::StatusCode;
use serde_json::json;

use crate::cluster::Scenario;
use crate::tour::{every_group, tour as resource_tour};
use crate::wait::{Probe, until};

/// How fast a change of the spec must reach every proxy replica (SPEC §5).
const PROPAGATION: Duration = Duration::from_secs(1);
/// How long issuing a token may take, from `kubectl apply` to Active.
const ISSUE: Duration = Duration::from_secs(30);
/// How long usage may take to reach `status.usage` (SPEC §5: 30 s), plus
/// slack for the kind node.
const USAGE: Duration = Duration::from_secs(40);
const PATH: &str = "/api/agent-base";

/// Polls `GET PATH` with `token` until it answers `want`, and fails if that
/// takes longer than `within` from `since`.
async fn status_within(
    s: &Scenario,
    token: &str,
    want: StatusCode,
    since: Instant,
    within: Duration,
) -> Result<()> {
    loop {
        let got = s.caller().get(PATH, token).await?;
        if got.status == want {
            return Ok(());
        }
        if since.elapsed() > within {
            bail!(
                "GET {PATH} still answers {} after {:?}, want {want}: {}",
                got.status,
                since.elapsed(),
                got.body
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn expect_status(s: &Scenario, token: &str, want: StatusCode) -> Result<()> {
    let got = s.caller().get(PATH, token).await?;
    ensure!(
        got.status == want,
        "GET {PATH} answered {}, want {want}: {}",
        got.status,
        got.body
    );
    Ok(())
}

/// Waits (at most [`PROPAGATION`]) until `token` is refused with 401 and
/// checks the reason the body names.
async fn refused(s: &Scenario, token: &str, reason: &str) -> Result<()> {
    status_within(
        s,
        token,
        StatusCode::UNAUTHORIZED,
        Instant::now(),
        PROPAGATION,
    )
    .await
    .with_context(|| format!("waiting for {reason}"))?;
    let reply = s.caller().get(PATH, token).await?;
    ensure!(
        reply.error_code().as_deref() == Some(reason),
        "refused with {:?}, want {reason}",
        reply.body
    );
    Ok(())
}

async fn issued(s: &Scenario, name: &str, spec: serde_json::Value) -> Result<String> {
    s.apply_token(name, spec).await?;
    s.wait_phase(name, Phase::Active, ISSUE).await?;
    s.delivered_token(name).await
}

/// A token applied as a resource turns Active, shows its prefix in status,
/// and opens every resource group.
pub async fn tour(s: &Scenario) -> Result<()> {
    let token = issued(s, "tour", json!({"displayName": "e2e tour"})).await?;
    let status = s.tokens().get("tour").await?.status.unwrap_or_default();
    ensure!(
        status.prefix.as_deref() == Some(&token[..8]),
        "status.prefix {:?} is not the token's first 8 characters",
        status.prefix
    );
    let steps = resource_tour(s.caller(), &token).await?;
    every_group(&steps)
}

/// Deactivate, activate, regenerate and revoke reach the proxy within
/// [`PROPAGATION`]; the API server refuses to undo a revoke.
pub async fn lifecycle(s: &Scenario) -> Result<()> {
    let token = issued(s, "life", json!({})).await?;
    expect_status(s, &token, StatusCode::OK).await?;

    s.patch_spec("life", json!({"active": false})).await?;
    refused(s, &token, "inactive_token")
        .await
        .context("deactivate")?;
    s.wait_phase("life", Phase::Inactive, Duration::from_secs(5))
        .await?;

    s.patch_spec("life", json!({"active": true})).await?;
    status_within(s, &token, StatusCode::OK, Instant::now(), PROPAGATION)
        .await
        .context("activate")?;

    s.patch_spec("life", json!({"regeneration": 1})).await?;
    refused(s, &token, "unknown_token")
        .await
        .context("regenerate: the previous token")?;
    let fresh = until(
        "a new token in the delivery Secret",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let t = s.delivered_token("life").await?;
            Ok(if t == token {
                Probe::NotYet("the previous token".into())
            } else {
                Probe::Done(t)
            })
        },
    )
    .await?;
    status_within(s, &fresh, StatusCode::OK, Instant::now(), PROPAGATION)
        .await
        .context("regenerate: the new token")?;

    s.patch_spec("life", json!({"revoked": true})).await?;
    refused(s, &fresh, "revoked_token")
        .await
        .context("revoke")?;
    s.wait_phase("life", Phase::Revoked, Duration::from_secs(5))
        .await?;

    // The API server itself refuses to undo a revoke (CEL rule).
    match s.patch_spec("life", json!({"revoked": false})).await {
        Err(kube::Error::Api(status)) => ensure!(
            status.code == 422 && status.message.contains("revoked is permanent"),
            "un-revoke refused with {} {:?}",
            status.code,
            status.message
        ),
        Ok(_) => bail!("the API server accepted revoked: false"),
        Err(e) => return Err(e.into()),
    }
    expect_status(s, &fresh, StatusCode::UNAUTHORIZED).await
}

/// A token stops at its `expiresAt` at once and reads Expired within 3 s.
pub async fn expiry(s: &Scenario) -> Result<()> {
    let expires = chrono::Utc::now() + chrono::TimeDelta::from_std(s.cluster.expiry_lead)?;
    let at = expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let token = issued(s, "short", json!({"expiresAt": at})).await?;
    expect_status(s, &token, StatusCode::OK).await?;
    let left = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left).await;
    // The proxy checks the clock on every request: no grace at all.
    refused(s, &token, "expired_token").await?;
    // The operator requeues at the expiry instant, not at a resync.
    s.wait_phase("short", Phase::Expired, Duration::from_secs(3))
        .await?;
    Ok(())
}

/// Accepted calls reach `status.usage` exactly and the proxies' metrics;
/// refused calls count as failures, not usage.
pub async fn usage(s: &Scenario) -> Result<()> {
    let token = issued(s, "counted", json!({})).await?;
    let calls = 7;
    for _ in 0..calls {
        expect_status(s, &token, StatusCode::OK).await?;
    }
    // Refused calls are not usage.
    let scoped = issued(s, "scoped", json!({"scopes": ["webhooks:send"]})).await?;
    let reply = s.caller().get(PATH, &scoped).await?;
    ensure!(
        reply.status == StatusCode::FORBIDDEN
            && reply.error_code().as_deref() == Some("insufficient_scope"),
        "a webhooks-only token reading agents got {} {}",
        reply.status,
        reply.body
    );

    let t = until(
        "status.usage of counted",
        USAGE,
        Duration::from_millis(500),
        || async {
            let t = s.tokens().get("counted").await?;
            let usage = t.status.as_ref().map_or(0, |st| st.usage);
            Ok(if usage >= calls {
                Probe::Done(t)
            } else {
                Probe::NotYet(format!("usage {usage}"))
            })
        },
    )
    .await?;
    let status = t.status.unwrap_or_default();
    ensure!(
        status.usage == calls,
        "status.usage {} != {calls} calls",
        status.usage
    );
    ensure!(
        status.last_used_at.is_some(),
        "status.lastUsedAt is not set"
    );

    let scrape = s.proxy_metrics().await?;
    let who = [("namespace", s.namespace.as_str()), ("name", "counted")];
    let accepted = scrape.sum("prodgy_proxy_token_accepted_requests_total", &who);
    ensure!(
        accepted == calls as f64,
        "proxies exported {accepted} accepted requests for counted, want {calls}"
    );
    let refused = scrape.sum(
        "prodgy_proxy_auth_failures_total",
        &[("reason", "insufficient_scope")],
    );
    ensure!(refused >= 1.0, "no insufficient_scope failure exported");
    ensure!(
        scrape.sum("prodgy_proxy_index_ready", &[]) >= 1.0,
        "a proxy reports its index not ready"
    );
    let scoped_status = s.tokens().get("scoped").await?.status.unwrap_or_default();
    ensure!(scoped_status.usage == 0, "refused calls counted as usage");
    Ok(())
}

/// Declares one `#[tokio::test]` per scenario, each calling
/// `$run(name, scenario)`, where `$run` sets up a cluster, runs the scenario
/// in a fresh namespace and reports (see `tests/tests/kind_e2e.rs`).
#[macro_export]
macro_rules! scenario_tests {
    ($run:path) => {
        #[tokio::test]
        async fn token_opens_every_resource_group() {
            $run("tour", $crate::scenarios::tour).await;
        }

        #[tokio::test]
        async fn deactivate_activate_regenerate_revoke_take_effect_at_once() {
            $run("lifecycle", $crate::scenarios::lifecycle).await;
        }

        #[tokio::test]
        async fn a_token_stops_at_its_expiry_and_reads_expired() {
            $run("expiry", $crate::scenarios::expiry).await;
        }

        #[tokio::test]
        async fn usage_reaches_status_and_the_proxy_exports_it() {
            $run("usage", $crate::scenarios::usage).await;
        }
    };
}
