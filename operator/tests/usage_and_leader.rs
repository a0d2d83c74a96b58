#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]
//! Usage reports folded into status across operator restarts, and leader
//! election between two operators, against the Kubernetes API test server.

mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams, PostParams};
use prodgy_crds::{TokenUsage, UsageReport, UsageReportSpec, usage::REPORT_LABEL};
use serde_json::json;
use support::*;

fn report(name: &str, uid: &str, ns: &str, count: i64, at: DateTime<Utc>) -> UsageReport {
    let mut r = UsageReport::new(
        name,
        UsageReportSpec {
            replica: name.into(),
            epoch: "e1".into(),
            shard: 0,
            updated_at: at,
            tokens: BTreeMap::from([(
                uid.to_owned(),
                TokenUsage {
                    namespace: ns.into(),
                    name: "t".into(),
                    count,
                    last_used_at: at,
                    window: None,
                },
            )]),
        },
    );
    r.metadata.labels = Some(BTreeMap::from([(
        REPORT_LABEL.to_owned(),
        "true".to_owned(),
    )]));
    r
}

/// What a proxy does each flush: rewrite its report with cumulative counts.
async fn flush(api: &Api<UsageReport>, r: &UsageReport) {
    let patch = json!({"spec": r.spec});
    api.patch(
        r.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn usage_reports_are_summed_folded_and_never_double_counted_across_restarts() {
    let w = World::new("usage").await;
    let op = w.start(&[]).await;
    let tok = w.create("t", json!({"product": "acme"})).await;
    w.wait_phase("t", "Active").await;
    let uid = tok.metadata.uid.clone().unwrap();
    let reports: Api<UsageReport> = Api::namespaced(w.client.clone(), &w.hashed_ns);

    // Two proxy replicas report.
    let a = report("proxy-a-e1-0", &uid, &w.ns, 5, Utc::now());
    let b = report("proxy-b-e1-0", &uid, &w.ns, 3, Utc::now());
    let flushed = Instant::now();
    reports.create(&PostParams::default(), &a).await.unwrap();
    reports.create(&PostParams::default(), &b).await.unwrap();
    w.wait_status("t", "usage 8", |s| s.usage == 8).await;
    assert!(
        flushed.elapsed() < Duration::from_secs(3),
        "usage took {:?}",
        flushed.elapsed()
    );

    // Replica a keeps flushing (cumulative counts, a heartbeat every 300 ms);
    // replica b dies and its report goes stale.
    let heartbeat = {
        let reports = reports.clone();
        let (uid, ns) = (uid.clone(), w.ns.clone());
        tokio::spawn(async move {
            loop {
                flush(&reports, &report("proxy-a-e1-0", &uid, &ns, 9, Utc::now())).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    w.wait_status("t", "usage 12", |s| s.usage == 12).await;

    // An operator restart in the middle of it all.
    op.stop().await.unwrap();
    let op = w.start(&[]).await;

    // b is folded into the ledger, deleted, and the ledger tidied; the
    // visible usage never moves.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t = w.get("t").await;
        let s = t.status.unwrap();
        assert_eq!(
            s.usage, 12,
            "usage moved while folding: {:?}",
            s.usage_ledger
        );
        let b_gone = reports.get_opt("proxy-b-e1-0").await.unwrap().is_none();
        let tidy = s
            .usage_ledger
            .as_ref()
            .is_some_and(|l| l.base == 3 && l.folded.is_empty());
        if b_gone && tidy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "report b never retired: {:?}",
            s.usage_ledger
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = op.metrics.render().unwrap();
    assert!(metric(&text, "prodgy_operator_usage_reports_retired_total") >= 1.0);

    // A crash and a restart change nothing; new calls still add up.
    op.kill();
    let op = w.start(&[]).await;
    flush(
        &reports,
        &report("proxy-a-e1-0", &uid, &w.ns, 10, Utc::now()),
    )
    .await;
    heartbeat.abort();
    let _ = heartbeat.await;
    flush(
        &reports,
        &report("proxy-a-e1-0", &uid, &w.ns, 10, Utc::now()),
    )
    .await;
    w.wait_status("t", "usage 13", |s| s.usage == 13).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.get("t").await.status.unwrap().usage, 13);
    op.stop().await.unwrap();
}

#[tokio::test]
async fn usage_only_writes_are_debounced_per_token() {
    let w = World::new("debounce").await;
    let op = w.start(&["--usage-status-interval", "2s"]).await;
    let tok = w.create("t", json!({"product": "acme"})).await;
    w.wait_phase("t", "Active").await;
    let uid = tok.metadata.uid.clone().unwrap();
    let reports: Api<UsageReport> = Api::namespaced(w.client.clone(), &w.hashed_ns);
    let r = report("proxy-a-e1-0", &uid, &w.ns, 1, Utc::now());
    reports.create(&PostParams::default(), &r).await.unwrap();
    w.wait_status("t", "usage 1", |s| s.usage == 1).await;
    // Ten flushes in a burst: one more write, after the interval, with the last count.
    let start = Instant::now();
    for n in 2..=11 {
        flush(
            &reports,
            &report("proxy-a-e1-0", &uid, &w.ns, n, Utc::now()),
        )
        .await;
    }
    w.wait_status("t", "usage 11", |s| s.usage == 11).await;
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "not debounced"
    );
    let text = op.metrics.render().unwrap();
    let usage_writes = metric(&text, "prodgy_operator_status_writes_total{kind=\"usage\"}");
    assert!(
        usage_writes <= 3.0,
        "{usage_writes} usage writes for one burst"
    );
    op.stop().await.unwrap();
}

fn leader(op: &prodgy_operator::app::Running) -> bool {
    metric(&op.metrics.render().unwrap(), "prodgy_operator_leader") == 1.0
}

fn writes(op: &prodgy_operator::app::Running) -> f64 {
    let text = op.metrics.render().unwrap();
    metric(&text, "prodgy_operator_status_writes_total")
        + metric(&text, "prodgy_operator_secret_writes_total")
        + metric(&text, "prodgy_operator_reconciles_total")
}

#[tokio::test]
async fn two_operators_elect_one_leader_and_only_it_writes() {
    let w = World::new("leader").await;
    let lease_ns = format!("ops-{}", w.ns);
    let flags = |id: &'static str| {
        let mut flags = leader_flags(&lease_ns);
        flags.extend(["--identity", id]);
        flags
    };
    let a = w.start(&flags("op-a")).await;
    eventually("a leads", Duration::from_secs(5), || async {
        leader(&a).then_some(())
    })
    .await;
    let b = w.start(&flags("op-b")).await;
    w.create("t1", json!({"product": "acme"})).await;
    w.wait_phase("t1", "Active").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(leader(&a) && !leader(&b));
    assert!(writes(&a) > 0.0);
    assert_eq!(writes(&b), 0.0, "the standby wrote");
    let lease = w
        .server
        .get_object(
            "leases.coordination.k8s.io",
            Some(&lease_ns),
            "prodgy-operator",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "op-a");

    // The leader goes away cleanly: the standby takes over at once.
    let handover = Instant::now();
    a.stop().await.unwrap();
    eventually("b leads", Duration::from_secs(5), || async {
        leader(&b).then_some(())
    })
    .await;
    eprintln!("handover took {:?}", handover.elapsed());
    assert!(handover.elapsed() < Duration::from_secs(2), "slow handover");
    w.create("t2", json!({"product": "acme"})).await;
    w.wait_phase("t2", "Active").await;
    assert!(writes(&b) > 0.0);
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_leader_that_cannot_renew_steps_down_and_stops_reconciling() {
    let w = World::new("stepdown").await;
    let lease_ns = format!("ops-{}", w.ns);
    let flags = leader_flags(&lease_ns);
    let a = w.start(&flags).await;
    eventually("a leads", Duration::from_secs(5), || async {
        leader(&a).then_some(())
    })
    .await;

    // Renewals now fail (as if the API server refused them).
    w.server.deny("update", "leases");
    eventually("a steps down", Duration::from_secs(5), || async {
        (!leader(&a)).then_some(())
    })
    .await;
    w.create("t", json!({"product": "acme"})).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        w.get("t").await.status.is_none(),
        "a replica without the Lease reconciled"
    );

    // Renewals work again: it wins the Lease back and catches up.
    w.server.allow("update", "leases");
    w.wait_phase("t", "Active").await;
    assert!(leader(&a));
    a.stop().await.unwrap();
}
