#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]
//! A leak report across the components: the operator, proxy and API binaries
//! of `prodgy_tests::local` against the Kubernetes API test server. A token
//! that works through the proxy is reported to the operator's leak-report
//! endpoint (signed with the local stack's shared secret, as an in-house
//! scanner would), and from then on the proxy refuses it.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use prodgy_crds::{Phase, leak::LEAKED};
use prodgy_tests::cluster::Scenario;
use prodgy_tests::local::{LEAK_SECRET, LocalCluster};
use prodgy_tests::wait::{Probe, until};
use serde_json::{Value, json};

const PATH: &str = "/api/agent-base";

#[tokio::test]
async fn a_reported_token_is_refused_by_the_proxy_from_then_on() {
    let local = LocalCluster::start().await.unwrap();
    let s = local.cluster().unwrap().scenario("leak").await.unwrap();
    let result = scenario(&local, &s).await;
    s.finish(result).await;
}

async fn scenario(local: &LocalCluster, s: &Scenario) -> Result<()> {
    s.apply_token("leaky", json!({})).await?;
    s.wait_phase("leaky", Phase::Active, Duration::from_secs(30))
        .await?;
    let token = s.delivered_token("leaky").await?;
    let ok = s.caller().get(PATH, &token).await?;
    ensure!(ok.status == 200, "the fresh token got {}", ok.status);

    let body = serde_json::to_vec(&json!([{
        "token": token, "type": "prodgy_api_token",
        "url": "https://example.com/org/repo/blob/0123abc/.env", "source": "content"
    }]))?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, LEAK_SECRET.as_bytes());
    let mac: String = ring::hmac::sign(&key, &body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let reported = Instant::now();
    let answer = until(
        "the leak report accepted",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            let resp = reqwest::Client::new()
                .post(&local.leak_reports)
                .header("x-prodgy-signature-256", format!("sha256={mac}"))
                .body(body.clone())
                .send()
                .await?;
            // 503 while the operator loads the hashed records.
            Ok(match resp.status().as_u16() {
                200 => Probe::Done(resp.json::<Value>().await?),
                other => Probe::NotYet(format!("{other}: {}", resp.text().await?)),
            })
        },
    )
    .await?;
    ensure!(
        answer[0]["label"] == "true_positive",
        "the report was answered {answer}"
    );

    // The proxy refuses the token once the revoked record reaches it.
    until(
        "the proxy refusing the reported token",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let r = s.caller().get(PATH, &token).await?;
            Ok(if r.status == 401 || r.status == 403 {
                Probe::Done(r.error_code())
            } else {
                Probe::NotYet(format!("still {}", r.status))
            })
        },
    )
    .await?;
    let took = reported.elapsed();
    eprintln!("leak report to proxy refusal: {took:?}");
    let tok = s
        .wait_phase("leaky", Phase::Revoked, Duration::from_secs(10))
        .await?;
    let leaked = tok
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == LEAKED);
    ensure!(
        leaked.is_some_and(|c| c.message.contains("example.com/org/repo")),
        "no Leaked condition naming the report"
    );
    ensure!(took < Duration::from_secs(10), "took {took:?}");
    Ok(())
}
