#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]
//! The real operator against the Kubernetes API test server: an unused token
//! is warned, switched off (not revoked) and switched on again; an expiring
//! token gets its notices, each Event once.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use prodgy_crds::{
    ApiTokenStatus, Phase, RecordState,
    apitoken::condition,
    lifecycle::{DEACTIVATED_UNUSED_ANNOTATION, EXPIRING_SOON, REASON_UNUSED, UNUSED_SOON},
};
use serde_json::{Value, json};
use support::*;

fn condition<'s>(s: &'s ApiTokenStatus, type_: &str) -> Option<&'s Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

fn ready_reason(s: &ApiTokenStatus) -> Option<&str> {
    s.conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .map(|c| c.reason.as_str())
}

/// The Events of `name` with `reason`.
fn events_of(w: &World, name: &str, reason: &str) -> Vec<Value> {
    w.events()
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name && e["reason"] == reason)
        .collect()
}

/// How often an Event of `reason` was published: the Recorder folds a
/// repeat within minutes into the first Event's `series.count`.
fn published(w: &World, name: &str, reason: &str) -> u64 {
    events_of(w, name, reason)
        .iter()
        .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
        .sum()
}

/// The one Event of `reason`, published once, a Warning.
fn once(w: &World, name: &str, reason: &str) -> Value {
    let found = events_of(w, name, reason);
    assert_eq!(published(w, name, reason), 1, "{reason}: {found:?}");
    assert_eq!(found[0]["type"], "Warning", "{reason}");
    found[0].clone()
}

#[tokio::test]
async fn an_unused_token_is_warned_switched_off_and_restarts_when_switched_on() {
    let w = World::new("unused").await;
    let _op = w.start(&[]).await;
    // A 4s limit: the warning comes a quarter ahead, 1s before.
    w.create(
        "idle",
        json!({"product": "acme", "deactivateAfterUnused": "4s"}),
    )
    .await;
    w.wait_phase("idle", "Active").await;
    let warned = w
        .wait_status("idle", "UnusedSoon", |s| {
            condition(s, UNUSED_SOON).is_some()
        })
        .await;
    assert_eq!(warned.status.unwrap().phase, Some(Phase::Active));

    let off = w
        .wait_status("idle", "switched off for being unused", |s| {
            ready_reason(s) == Some(REASON_UNUSED)
        })
        .await;
    // Deactivated, not revoked: the owner's switch, flipped by the operator.
    assert!(!off.spec.active && !off.spec.revoked);
    assert!(
        off.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(DEACTIVATED_UNUSED_ANNOTATION))
    );
    let status = off.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Inactive));
    assert!(condition(&status, UNUSED_SOON).is_none());
    let unused = status.unused.clone().unwrap();
    assert_eq!(unused.after.as_deref(), Some("4s"));
    let off_at = unused.deactivated_at.unwrap();
    let issued = status.created_at.unwrap();
    assert!(
        off_at - issued >= chrono::TimeDelta::seconds(4),
        "{issued} → {off_at}"
    );
    // The proxy's record: refused through the inactive path.
    assert_eq!(w.record(&off).await.unwrap().state, RecordState::Inactive);

    w.wait_events("idle", &["UnusedSoon", "DeactivatedUnused"])
        .await;
    once(&w, "idle", "UnusedSoon");
    let note = once(&w, "idle", "DeactivatedUnused")["note"].clone();
    assert!(note.as_str().unwrap().contains("4s unused"), "{note}");
    assert!(events_of(&w, "idle", "Deactivated").is_empty());

    // Switched on again: the clock restarts from the reactivation.
    w.patch_spec("idle", json!({"active": true})).await;
    let on = w
        .wait_status("idle", "reactivated", |s| {
            s.phase == Some(Phase::Active)
                && s.unused
                    .as_ref()
                    .is_some_and(|u| u.reactivated_at.is_some())
        })
        .await;
    let again: DateTime<Utc> = on.status.unwrap().unused.unwrap().reactivated_at.unwrap();
    assert!(again > off_at);
    w.wait_events("idle", &["Activated"]).await;
    let second = w
        .wait_status("idle", "switched off again", |s| {
            s.unused.as_ref().and_then(|u| u.deactivated_at) > Some(off_at)
        })
        .await;
    let second_at = second
        .status
        .unwrap()
        .unused
        .unwrap()
        .deactivated_at
        .unwrap();
    assert!(
        second_at - again >= chrono::TimeDelta::seconds(4),
        "switched off {} after the reactivation",
        second_at - again
    );
    eventually(
        "the second switch-off's Event",
        Duration::from_secs(5),
        || async { (published(&w, "idle", "DeactivatedUnused") == 2).then_some(()) },
    )
    .await;
    assert_eq!(published(&w, "idle", "UnusedSoon"), 2);
    assert_eq!(published(&w, "idle", "Activated"), 1);
}

#[tokio::test]
async fn the_operator_default_applies_unless_a_token_opts_out() {
    let w = World::new("unused-default").await;
    let _op = w.start(&["--deactivate-after-unused", "3s"]).await;
    w.create(
        "kept",
        json!({"product": "acme", "deactivateAfterUnused": "0s"}),
    )
    .await;
    w.create("idle", json!({"product": "acme"})).await;
    w.wait_status("idle", "switched off by the default", |s| {
        ready_reason(s) == Some(REASON_UNUSED)
    })
    .await;
    // Issued before "idle": with the default it would be off by now too.
    let kept = w.get("kept").await;
    assert!(kept.spec.active);
    assert_eq!(kept.status.unwrap().phase, Some(Phase::Active));
}

#[tokio::test]
async fn an_expiring_token_gets_each_notice_once_and_loses_it_at_expiry() {
    let w = World::new("expiring").await;
    let _op = w.start(&[]).await;
    let in_3d = rfc3339_in(Duration::from_secs(3 * 86_400));
    w.create("soon", json!({"product": "acme", "expiresAt": in_3d}))
        .await;
    let t = w
        .wait_status("soon", "ExpiringSoon within 7d", |s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == EXPIRING_SOON && c.reason == "Within7d")
        })
        .await;
    assert_eq!(t.status.unwrap().phase, Some(Phase::Active));
    w.wait_events("soon", &["ExpiringSoon"]).await;
    once(&w, "soon", "ExpiringSoon");

    w.patch_spec(
        "soon",
        json!({"expiresAt": rfc3339_in(Duration::from_secs(7200))}),
    )
    .await;
    w.wait_status("soon", "ExpiringSoon within 1d", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == EXPIRING_SOON && c.reason == "Within1d" && c.status == "True")
    })
    .await;
    eventually("the 1d notice", Duration::from_secs(5), || async {
        (published(&w, "soon", "ExpiringSoon") == 2).then_some(())
    })
    .await;

    w.patch_spec(
        "soon",
        json!({"expiresAt": rfc3339_in(Duration::from_secs(2))}),
    )
    .await;
    let expired = w.wait_phase("soon", "Expired").await;
    let status = expired.status.unwrap();
    assert!(
        condition(&status, EXPIRING_SOON).is_none(),
        "{:?}",
        status.conditions
    );
    // Two notices, each published once; none after the expiry.
    assert_eq!(published(&w, "soon", "ExpiringSoon"), 2);
    let note = &events_of(&w, "soon", "ExpiringSoon")[0]["note"];
    assert!(note.as_str().unwrap().contains("within 7d"), "{note}");
}
