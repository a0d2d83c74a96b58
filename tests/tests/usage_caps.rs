#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]
//! Usage caps end to end: the real operator, two proxy replicas (usage
//! reports every 1 s) and the API on the Kubernetes API test server. The API
//! server refuses bad caps; a capped token is called until refused (429
//! `usage_limit_reached` with `Retry-After` to the renewal); the status
//! shows what is left and when it renews; calls one replica reported are
//! not counted twice by it; and two replicas sharing a token stay within
//! the cap plus the overshoot bound of docs/proxy.md, each alone within the
//! cap.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use prodgy_crds::{Phase, UsageLimitStatus};
use prodgy_tests::caller::Caller;
use prodgy_tests::cluster::Scenario;
use prodgy_tests::local::LocalCluster;
use prodgy_tests::wait::{Probe, until};
use serde_json::json;

const PATH: &str = "/api/agent-base";
/// The proxies' `--usage-flush-interval` in the local cluster.
const FLUSH: Duration = Duration::from_secs(1);

#[tokio::test]
async fn capped_tokens_are_refused_past_the_cap_across_replicas() {
    let mut local = LocalCluster::start().await.unwrap();
    let second = local.add_proxy("proxy-1").await.unwrap();
    let s = local.cluster().unwrap().scenario("caps").await.unwrap();
    let result = async {
        bad_caps_are_refused_by_the_api_server(&s).await?;
        let p1 = Caller::new(&second)?;
        one_replica_calls_until_refused(&s).await?;
        reported_calls_are_not_counted_twice(&s, &p1).await?;
        two_replicas_stay_within_the_bound(&s, &p1).await
    }
    .await;
    s.finish(result).await;
}

async fn bad_caps_are_refused_by_the_api_server(s: &Scenario) -> Result<()> {
    for (bad, why) in [
        (json!({"requests": 0}), "requests"),
        (json!({"requests": 5, "per": "30s"}), "at least 1m"),
        (json!({"requests": 5, "per": "soon"}), "per"),
        (json!({"per": "1d"}), "requests"),
    ] {
        let err = s.apply_token("bad", json!({ "usageLimit": bad })).await;
        let msg = format!("{:#}", err.expect_err("accepted a bad cap"));
        ensure!(msg.contains(why), "{bad}: {msg}");
    }
    Ok(())
}

/// Calls through `caller` until the first refusal (at most `limit` calls):
/// how many were accepted, and the refusal's code and `Retry-After`.
async fn call_until_refused(
    caller: &Caller,
    token: &str,
    limit: usize,
) -> Result<(usize, Option<(String, Option<u64>)>)> {
    for accepted in 0..limit {
        let resp = caller
            .raw(|c, base| c.get(format!("{base}{PATH}")).bearer_auth(token))
            .await?;
        if resp.status() == 200 {
            continue;
        }
        let retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let body: serde_json::Value = resp.json().await?;
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        return Ok((accepted, Some((code, retry))));
    }
    Ok((limit, None))
}

async fn usage_limit(s: &Scenario, name: &str, want_used: i64) -> Result<UsageLimitStatus> {
    until(
        &format!("{name}: status.usageLimit.used = {want_used}"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let t = s.tokens().get(name).await?;
            let cap = t.status.and_then(|st| st.usage_limit);
            Ok(match cap {
                Some(c) if c.used == want_used => Probe::Done(c),
                other => Probe::NotYet(format!("{other:?}")),
            })
        },
    )
    .await
}

async fn issued(s: &Scenario, name: &str, limit: serde_json::Value) -> Result<String> {
    s.apply_token(name, json!({ "usageLimit": limit })).await?;
    s.wait_phase(name, Phase::Active, Duration::from_secs(30))
        .await?;
    let token = s.delivered_token(name).await?;
    // The hashed Secret reaches both replicas' watches well within this;
    // probing with a call would use up the cap.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(token)
}

async fn one_replica_calls_until_refused(s: &Scenario) -> Result<()> {
    let token = issued(s, "monthly", json!({"requests": 5, "per": "30d"})).await?;
    let (accepted, refusal) = call_until_refused(s.caller(), &token, 20).await?;
    ensure!(
        accepted == 5,
        "one replica accepted {accepted} of a cap of 5"
    );
    let (code, retry) = refusal.unwrap();
    ensure!(code == "usage_limit_reached", "refused with {code}");
    let retry = retry.unwrap_or(0);
    ensure!(
        (30 * 86_400 - 120..=30 * 86_400).contains(&retry),
        "Retry-After {retry} s for a 30d window just begun"
    );
    let cap = usage_limit(s, "monthly", 5).await?;
    let created = s
        .tokens()
        .get("monthly")
        .await?
        .metadata
        .creation_timestamp
        .unwrap();
    let renews = cap.renews_at.unwrap();
    ensure!(cap.remaining == 0 && cap.requests == 5, "{cap:?}");
    ensure!(
        renews.timestamp() == created.0.as_second() + 30 * 86_400,
        "renews at {renews}, created {}",
        created.0
    );
    Ok(())
}

/// Replica 0 makes 6 of 10 calls; once the operator has summed them (the
/// record says so), replica 0 may make exactly 4 more: its own 6 are in the
/// record and must not count twice. Replica 1 then has nothing left.
async fn reported_calls_are_not_counted_twice(s: &Scenario, p1: &Caller) -> Result<()> {
    let token = issued(s, "lifetime", json!({"requests": 10})).await?;
    let (first, _) = call_until_refused(s.caller(), &token, 6).await?;
    ensure!(first == 6, "{first}");
    let cap = usage_limit(s, "lifetime", 6).await?;
    ensure!(cap.remaining == 4 && cap.renews_at.is_none(), "{cap:?}");
    // The record is written before the status; give the watch a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (more, refusal) = call_until_refused(s.caller(), &token, 10).await?;
    ensure!(
        more == 4,
        "after 6 summed, replica 0 accepted {more} more of 10"
    );
    let (code, retry) = refusal.unwrap();
    ensure!(
        code == "usage_limit_reached" && retry.is_none(),
        "{code} {retry:?}"
    );
    usage_limit(s, "lifetime", 10).await?;
    // The exhausted record reaches replica 1 as well.
    until(
        "replica 1 refuses the exhausted token",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let (n, refusal) = call_until_refused(p1, &token, 1).await?;
            Ok(match (n, refusal) {
                (0, Some((code, None))) if code == "usage_limit_reached" => Probe::Done(()),
                other => Probe::NotYet(format!("{other:?}")),
            })
        },
    )
    .await
}

/// Both replicas take turns as fast as they answer. Each alone stays within
/// the cap; together within cap + λ·L (λ: accepted calls per second over
/// both, L: flush interval + 1 s for the fold, the record write and the
/// watch), and never more than cap + (R − 1)·cap.
async fn two_replicas_stay_within_the_bound(s: &Scenario, p1: &Caller) -> Result<()> {
    const CAP: usize = 40;
    let token = issued(s, "shared", json!({"requests": CAP})).await?;
    let replicas = [s.caller(), p1];
    let mut accepted = [0usize; 2];
    let started = Instant::now();
    let mut last_accept = started;
    for round in 0..200 {
        let i = round % 2;
        let (n, _) = call_until_refused(replicas[i], &token, 1).await?;
        if n == 1 {
            accepted[i] += 1;
            last_accept = Instant::now();
        }
        // Pace the calls so a report can land before the cap is reached.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = accepted[0] + accepted[1];
    let secs = (last_accept - started).as_secs_f64().max(0.001);
    let rate = total as f64 / secs;
    let latency = FLUSH.as_secs_f64() + 1.0;
    let bound = ((rate * latency).ceil() as usize).min(CAP);
    eprintln!(
        "two replicas, cap {CAP}: accepted {accepted:?} = {total}, overshoot {}, \
         λ = {rate:.1}/s, bound λ·L = {bound}",
        total.saturating_sub(CAP)
    );
    ensure!(
        accepted.iter().all(|n| *n <= CAP),
        "one replica alone exceeded the cap: {accepted:?}"
    );
    ensure!(total >= CAP, "the cap was not reached: {accepted:?}");
    ensure!(
        total <= CAP + bound,
        "{total} accepted > cap {CAP} + bound {bound}"
    );
    let cap = usage_limit(s, "shared", i64::try_from(total)?).await?;
    ensure!(cap.remaining == 0, "{cap:?}");
    Ok(())
}
