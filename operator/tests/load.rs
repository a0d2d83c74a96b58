#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]
//! A measurement, not a unit test: many busy tokens against the API test
//! server, checking that usage-only status writes stay within the configured
//! budget and that usage still arrives. Run it with `make test-load`
//! (`cargo nextest run -p prodgy-operator --test load --run-ignored only`);
//! the figures are recorded in docs/operator.md.

mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use chrono::Utc;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use prodgy_crds::{ApiToken, TokenUsage, UsageReport, UsageReportSpec, usage::REPORT_LABEL};
use serde_json::json;
use support::*;

const TOKENS: usize = 300;
const QPS: f64 = 50.0;
const INTERVAL_SECS: f64 = 3.0;

fn report(name: &str, tokens: &[(String, String)], ns: &str, count: i64) -> UsageReport {
    let now = Utc::now();
    let mut r = UsageReport::new(
        name,
        UsageReportSpec {
            replica: name.into(),
            epoch: "load".into(),
            shard: 0,
            updated_at: now,
            tokens: tokens
                .iter()
                .map(|(uid, n)| {
                    (
                        uid.clone(),
                        TokenUsage {
                            namespace: ns.into(),
                            name: n.clone(),
                            count,
                            last_used_at: now,
                            window: None,
                        },
                    )
                })
                .collect(),
        },
    );
    r.metadata.labels = Some(BTreeMap::from([(
        REPORT_LABEL.to_owned(),
        "true".to_owned(),
    )]));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about 40 s), not a check: run it with `make test-load`"]
async fn busy_tokens_stay_within_the_status_write_budget() {
    let w = World::new("load").await;
    let op = w
        .start(&["--status-write-qps", "50", "--usage-status-interval", "3s"])
        .await;
    let started = Instant::now();
    for i in 0..TOKENS {
        w.create(&format!("t{i}"), json!({"product": "acme"})).await;
    }
    let tokens: Api<ApiToken> = w.tokens();
    let all = eventually("all issued", Duration::from_secs(120), || async {
        let list = tokens.list(&ListParams::default()).await.unwrap();
        let active = list
            .items
            .iter()
            .filter(|t| t.status.as_ref().and_then(|s| s.phase).is_some())
            .count();
        (active == TOKENS).then_some(list.items)
    })
    .await;
    let issue_time = started.elapsed();
    let ids: Vec<(String, String)> = all
        .iter()
        .map(|t| {
            (
                t.metadata.uid.clone().unwrap(),
                t.metadata.name.clone().unwrap(),
            )
        })
        .collect();

    let reports: Api<UsageReport> = Api::namespaced(w.client.clone(), &w.hashed_ns);
    let text = op.metrics.render().unwrap();
    let writes_before = metric(&text, "prodgy_operator_status_writes_total{kind=\"usage\"}");
    reports
        .create(
            &PostParams::default(),
            &report("proxy-0-load-0", &ids, &w.ns, 1),
        )
        .await
        .unwrap();
    // Every token busy: counts move every second for 15 s.
    let busy = Instant::now();
    let mut count = 1;
    while busy.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        count += 1;
        let r = report("proxy-0-load-0", &ids, &w.ns, count);
        reports
            .patch(
                "proxy-0-load-0",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": r.spec})),
            )
            .await
            .unwrap();
    }
    let busy_secs = busy.elapsed().as_secs_f64();
    let text = op.metrics.render().unwrap();
    let writes =
        metric(&text, "prodgy_operator_status_writes_total{kind=\"usage\"}") - writes_before;
    let rate = writes / busy_secs;

    let last_flush = Instant::now();
    eventually(
        "final usage everywhere",
        Duration::from_secs(120),
        || async {
            let list = tokens.list(&ListParams::default()).await.unwrap();
            list.items
                .iter()
                .all(|t| t.status.as_ref().is_some_and(|s| s.usage == count))
                .then_some(())
        },
    )
    .await;
    let catch_up = last_flush.elapsed();

    eprintln!(
        "| tokens | issue all | busy window | usage writes/s (budget {QPS}/s, {} tokens / {INTERVAL_SECS} s = {:.0}/s) | last flush → all statuses |",
        TOKENS,
        TOKENS as f64 / INTERVAL_SECS
    );
    eprintln!(
        "| {TOKENS} | {:.1} s | {busy_secs:.0} s | {rate:.1} | {:.1} s |",
        issue_time.as_secs_f64(),
        catch_up.as_secs_f64()
    );
    // The token bucket allows one second's burst on top of the rate.
    assert!(
        writes <= QPS * busy_secs + QPS,
        "{rate:.1} usage writes/s over budget"
    );
    op.stop().await.unwrap();
}
