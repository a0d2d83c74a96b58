#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]
//! The real operator against the Kubernetes API test server: issue,
//! regenerate, (de)activate, revoke, expire, delete, restart, lost Secrets.

mod support;

use std::time::{Duration, Instant};

use chrono::Utc;
use kube::api::DeleteParams;
use prodgy_crds::{Phase, RecordState, apitoken::condition};
use serde_json::json;
use support::*;

#[tokio::test]
async fn create_issues_a_token_delivers_it_and_stores_only_its_hash() {
    let w = World::new("create").await;
    let op = w.start(&[]).await;
    w.create(
        "ci-bot",
        json!({"product": "acme", "scopes": ["agents:read"]}),
    )
    .await;
    let tok = w.wait_phase("ci-bot", "Active").await;
    let status = tok.status.clone().unwrap();

    let plaintext = w.delivered("ci-bot-token").await.unwrap();
    assert!(prodgy_crds::token::check_format(&plaintext).is_ok());
    assert_eq!(status.prefix.as_deref(), Some(&plaintext[..8]));
    assert!(plaintext.starts_with("prod_"));
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Active")
    );
    assert_eq!(status.observed_generation, tok.metadata.generation);
    assert_eq!(status.delivery_secret_name.as_deref(), Some("ci-bot-token"));
    assert_eq!(
        status.hashed_secret_namespace.as_deref(),
        Some(w.hashed_ns.as_str())
    );

    let record = w.record(&tok).await.unwrap();
    assert_eq!(record.hashes.len(), 1);
    assert_eq!(record.hashes[0].sha256, sha(&plaintext));
    assert_eq!(record.product, "acme");
    assert_eq!(record.state, RecordState::Active);
    assert!(
        tok.metadata
            .finalizers
            .unwrap()
            .contains(&"prodgy.io/cleanup".to_owned())
    );

    let delivery = w.secrets().get("ci-bot-token").await.unwrap();
    let owner = &delivery.metadata.owner_references.unwrap()[0];
    assert_eq!(owner.uid, tok.metadata.uid.clone().unwrap());
    assert_eq!(
        delivery.metadata.labels.unwrap()["prodgy.io/token-name"],
        "ci-bot"
    );

    // Events say what happened, with the prefix only.
    w.wait_events("ci-bot", &["Issued"]).await;
    // Settled: nothing is rewritten while nothing changes.
    let writes = |op: &prodgy_operator::app::Running| {
        let text = op.metrics.render().unwrap();
        metric(&text, "prodgy_operator_status_writes_total")
            + metric(&text, "prodgy_operator_secret_writes_total")
    };
    let before = writes(&op);
    let rv = w.get("ci-bot").await.metadata.resource_version;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(writes(&op), before, "writes while nothing changed");
    assert_eq!(w.get("ci-bot").await.metadata.resource_version, rv);
    let everything = w.observable_text();
    assert!(everything.contains(&plaintext[..8]));
    assert!(
        !everything.contains(&plaintext[5..]),
        "the plaintext leaked into status, events or the hashed Secret"
    );
    op.stop().await.unwrap();
}

#[tokio::test]
async fn regeneration_replaces_the_token_with_and_without_grace() {
    let w = World::new("regen").await;
    let op = w.start(&[]).await;
    w.create("t", json!({"product": "acme"})).await;
    w.wait_phase("t", "Active").await;
    let first = w.delivered("t-token").await.unwrap();

    // Without a grace period the old hash goes at once.
    w.patch_spec("t", json!({"regeneration": 1})).await;
    let tok = w
        .wait_status("t", "regeneration 1", |s| s.issued_regeneration == Some(1))
        .await;
    let second = w.delivered("t-token").await.unwrap();
    assert_ne!(first, second);
    let record = w.record(&tok).await.unwrap();
    assert_eq!(record.hashes.len(), 1);
    assert_eq!(record.hashes[0].sha256, sha(&second));
    assert_eq!(tok.status.unwrap().prefix.as_deref(), Some(&second[..8]));

    // With one, the previous hash is accepted until the grace ends.
    w.patch_spec(
        "t",
        json!({"regeneration": 2, "regenerationGracePeriod": "2s"}),
    )
    .await;
    let tok = w
        .wait_status("t", "regeneration 2", |s| s.issued_regeneration == Some(2))
        .await;
    let third = w.delivered("t-token").await.unwrap();
    let record = w.record(&tok).await.unwrap();
    assert_eq!(record.hashes.len(), 2);
    assert_eq!(record.hashes[0].sha256, sha(&third));
    assert_eq!(record.hashes[1].sha256, sha(&second));
    let until = record.hashes[1].not_after.unwrap();
    assert_eq!(tok.status.unwrap().previous_valid_until, Some(until));

    // Dropped when the grace ends, without any other trigger.
    let tok = w
        .wait_status("t", "grace end", |s| s.previous_valid_until.is_none())
        .await;
    let dropped_at = Utc::now();
    assert!(dropped_at >= until);
    assert!(
        (dropped_at - until).num_milliseconds() < 1500,
        "dropped late"
    );
    assert_eq!(w.record(&tok).await.unwrap().hashes.len(), 1);
    w.wait_events("t", &["Issued", "Regenerated"]).await;
    op.stop().await.unwrap();
}

#[tokio::test]
async fn deactivate_activate_and_revoke_update_record_status_and_events() {
    let w = World::new("states").await;
    let op = w.start(&[]).await;
    let tok = w.create("t", json!({"product": "acme"})).await;
    w.wait_phase("t", "Active").await;
    let hash = w.record(&tok).await.unwrap().hashes[0].sha256.clone();

    w.patch_spec("t", json!({"active": false})).await;
    let t = w.wait_phase("t", "Inactive").await;
    assert_eq!(w.record(&t).await.unwrap().state, RecordState::Inactive);
    w.patch_spec("t", json!({"active": true})).await;
    let t = w.wait_phase("t", "Active").await;
    assert_eq!(w.record(&t).await.unwrap().state, RecordState::Active);
    w.patch_spec("t", json!({"revoked": true})).await;
    let t = w.wait_phase("t", "Revoked").await;
    let record = w.record(&t).await.unwrap();
    assert_eq!(record.state, RecordState::Revoked);
    assert_eq!(
        record.hashes[0].sha256, hash,
        "state changes never re-issue"
    );

    // Revocation is permanent: the API server refuses to undo it.
    let undo = w
        .tokens()
        .patch(
            "t",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"revoked": false}})),
        )
        .await;
    assert!(undo.is_err());

    w.wait_events("t", &["Issued", "Deactivated", "Activated", "Revoked"])
        .await;
    op.stop().await.unwrap();
}

#[tokio::test]
async fn expiry_turns_the_phase_at_expires_at_not_at_the_resync() {
    let w = World::new("expiry").await;
    let op = w.start(&[]).await;
    let expires = rfc3339_in(Duration::from_secs(2));
    w.create("t", json!({"product": "acme", "expiresAt": expires}))
        .await;
    w.wait_phase("t", "Active").await;
    let expires_at = chrono::DateTime::parse_from_rfc3339(&expires)
        .unwrap()
        .with_timezone(&Utc);
    let t = w.wait_phase("t", "Expired").await;
    let seen = Utc::now();
    let lag = seen - expires_at;
    eprintln!("expired {} ms after expiresAt", lag.num_milliseconds());
    assert!(lag.num_milliseconds() >= 0);
    // The periodic resync is minutes away: a phase change within seconds is
    // the wake-up timed at expiresAt (about 20 ms late on an idle machine;
    // the margin is for a loaded one, not for a late wake-up).
    assert!(lag.num_seconds() < 15, "expired {lag} after expiresAt");
    let ready = t.status.unwrap().conditions[0].clone();
    assert_eq!(ready.reason, condition::REASON_EXPIRED);
    op.stop().await.unwrap();
}

#[tokio::test]
async fn deleting_a_token_removes_both_secrets() {
    let w = World::new("delete").await;
    let op = w.start(&[]).await;
    let tok = w
        .create(
            "t",
            json!({"product": "acme", "delivery": {"secretName": "handover"}}),
        )
        .await;
    w.wait_phase("t", "Active").await;
    assert!(w.delivered("handover").await.is_some());
    assert!(w.record(&tok).await.is_some());
    w.tokens()
        .delete("t", &DeleteParams::default())
        .await
        .unwrap();
    eventually("cleanup", Duration::from_secs(10), || async {
        let gone = w.tokens().get_opt("t").await.unwrap().is_none()
            && w.secrets().get_opt("handover").await.unwrap().is_none()
            && w.record(&tok).await.is_none();
        gone.then_some(())
    })
    .await;
    op.stop().await.unwrap();
}

#[tokio::test]
async fn a_restarted_or_crashed_operator_reissues_nothing() {
    let w = World::new("restart").await;
    let op = w.start(&[]).await;
    let tok = w.create("t", json!({"product": "acme"})).await;
    w.wait_phase("t", "Active").await;
    let plaintext = w.delivered("t-token").await.unwrap();
    let record = w.record(&tok).await.unwrap();
    op.stop().await.unwrap();

    for crash in [false, true] {
        let op = w.start(&[]).await;
        // Wait until the new process has reconciled the token at least once.
        eventually("a reconcile", Duration::from_secs(10), || async {
            let text = op.metrics.render().unwrap();
            (metric(&text, "prodgy_operator_reconciles_total{result=\"ok\"}") >= 1.0).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(w.delivered("t-token").await.unwrap(), plaintext);
        assert_eq!(w.record(&tok).await.unwrap(), record);
        let text = op.metrics.render().unwrap();
        assert_eq!(
            metric(&text, "prodgy_operator_secret_writes_total"),
            0.0,
            "a restart wrote a Secret"
        );
        if crash {
            op.kill();
        } else {
            op.stop().await.unwrap();
        }
    }
    let issued = w
        .event_reasons("t")
        .iter()
        .filter(|r| *r == "Issued")
        .count();
    assert_eq!(issued, 1);
}

#[tokio::test]
async fn a_lost_hashed_secret_is_rebuilt_from_the_delivery_secret() {
    let w = World::new("lost").await;
    let op = w.start(&[]).await;
    let tok = w.create("t", json!({"product": "acme"})).await;
    w.wait_phase("t", "Active").await;
    let plaintext = w.delivered("t-token").await.unwrap();
    let before = w.record(&tok).await.unwrap();
    let name = prodgy_crds::HashedRecord::secret_name(tok.metadata.uid.as_deref().unwrap());
    w.server
        .delete_object("secrets", Some(&w.hashed_ns), &name)
        .unwrap();
    let after = eventually("rebuilt hashed Secret", Duration::from_secs(10), || async {
        w.record(&tok).await
    })
    .await;
    assert_eq!(after, before);
    assert_eq!(after.hashes[0].sha256, sha(&plaintext));
    assert_eq!(
        w.delivered("t-token").await.unwrap(),
        plaintext,
        "no re-issue"
    );
    eventually(
        "HashedSecretLost warning",
        Duration::from_secs(5),
        || async {
            w.events()
                .iter()
                .any(|e| e["reason"] == "HashedSecretLost" && e["type"] == "Warning")
                .then_some(())
        },
    )
    .await;
    op.stop().await.unwrap();
}

#[tokio::test]
async fn reveal_once_then_a_lost_hashed_secret_waits_for_a_regeneration() {
    let w = World::new("reveal").await;
    let op = w
        .start(&["--delivery-mode", "RevealOnce", "--reveal-window", "1s"])
        .await;
    let tok = w.create("t", json!({"product": "acme"})).await;
    w.wait_phase("t", "Active").await;
    assert!(w.delivered("t-token").await.is_some());
    let t = w
        .wait_status("t", "reveal window closed", |s| {
            s.delivery_secret_name.is_none()
        })
        .await;
    assert!(w.secrets().get_opt("t-token").await.unwrap().is_none());
    assert!(
        t.status.unwrap().conditions[0]
            .message
            .contains("reveal window has closed")
    );
    w.wait_events("t", &["RevealWindowClosed"]).await;

    let name = prodgy_crds::HashedRecord::secret_name(tok.metadata.uid.as_deref().unwrap());
    w.server
        .delete_object("secrets", Some(&w.hashed_ns), &name)
        .unwrap();
    let t = w
        .wait_status("t", "HashedSecretLost", |s| {
            s.conditions.first().is_some_and(|c| {
                c.reason == condition::REASON_HASHED_SECRET_LOST && c.status == "False"
            })
        })
        .await;
    assert_eq!(t.status.unwrap().phase, Some(Phase::Pending));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        w.record(&tok).await.is_none(),
        "fail closed: no silent new token"
    );
    assert!(w.secrets().get_opt("t-token").await.unwrap().is_none());

    w.patch_spec("t", json!({"regeneration": 1})).await;
    w.wait_phase("t", "Active").await;
    let fresh = w.delivered("t-token").await.unwrap();
    assert_eq!(w.record(&tok).await.unwrap().hashes[0].sha256, sha(&fresh));
    op.stop().await.unwrap();
}

#[tokio::test]
async fn failed_writes_show_reconcile_error_and_recover() {
    let w = World::new("errors").await;
    w.server.deny("create", "secrets");
    let op = w.start(&[]).await;
    w.create("t", json!({"product": "acme"})).await;
    let t = w
        .wait_status("t", "ReconcileError", |s| {
            s.conditions
                .first()
                .is_some_and(|c| c.reason == condition::REASON_RECONCILE_ERROR)
        })
        .await;
    assert_ne!(t.status.unwrap().phase, Some(Phase::Active));
    w.server.allow("create", "secrets");
    w.wait_phase("t", "Active").await;
    let text = op.metrics.render().unwrap();
    assert!(
        metric(
            &text,
            "prodgy_operator_reconcile_errors_total{error=\"forbidden\"}"
        ) >= 1.0
    );
    op.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_endpoint_reports_tokens_by_phase_and_expiry() {
    let w = World::new("metrics").await;
    let op = w.start(&[]).await;
    let expires = rfc3339_in(Duration::from_secs(3600));
    w.create("a", json!({"product": "acme", "expiresAt": expires}))
        .await;
    w.create(
        "b",
        json!({"product": "acme", "active": false, "expiresAt": expires}),
    )
    .await;
    w.wait_phase("a", "Active").await;
    w.wait_phase("b", "Inactive").await;
    let url = format!("http://{}", op.metrics_addr);
    let http = reqwest::Client::new();
    let body = eventually("token gauges", Duration::from_secs(5), || async {
        let body = http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let active = format!(
            "prodgy_operator_tokens{{namespace=\"{}\",phase=\"Active\"}} 1",
            w.ns
        );
        body.contains(&active).then_some(body)
    })
    .await;
    assert!(body.contains(&format!(
        "prodgy_operator_tokens{{namespace=\"{}\",phase=\"Inactive\"}} 1",
        w.ns
    )));
    let expiry = chrono::DateTime::parse_from_rfc3339(&expires)
        .unwrap()
        .timestamp();
    assert!(body.contains(&format!(
        "prodgy_operator_token_expiry_timestamp_seconds{{name=\"a\",namespace=\"{}\"}} {expiry}",
        w.ns
    )));
    // A deactivated token's expiry is not exported: it would only make
    // the "expiring soon" alert fire for a token nobody can use.
    assert!(!body.contains("prodgy_operator_token_expiry_timestamp_seconds{name=\"b\""));
    let healthz = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert!(healthz.status().is_success());
    let readyz = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert!(readyz.status().is_success());
    let started = Instant::now();
    op.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "slow shutdown");
}
