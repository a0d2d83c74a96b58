//! Exhaustive tests of the planner against a simulated cluster: each pass
//! plans from the world, then applies the plan's writes (all, or only the
//! first few to simulate a crash).

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use k8s_openapi::api::core::v1::Secret;
use prodgy_crds::{
    ApiToken, ApiTokenSpec, Delivery, DeliveryMode, HashedRecord, Phase, RateLimit, RecordState,
    Scope, Token, TokenHash, UsageReport, apitoken::condition,
};

use super::*;
use crate::usage::tests::report;

const NS: &str = "prodgy-tokens";

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_900_000_000 + secs, 0).unwrap()
}

fn cfg() -> PlanConfig {
    PlanConfig {
        hashed_namespace: NS.into(),
        delivery_mode: DeliveryMode::Secret,
        reveal_window: TimeDelta::seconds(600),
        usage_report_retention: TimeDelta::seconds(120),
        usage_status_interval: TimeDelta::seconds(15),
        deactivate_after_unused: None,
        expiry_notices: Vec::new(),
    }
}

fn api_token(spec: ApiTokenSpec) -> ApiToken {
    let mut tok = ApiToken::new("ci-bot", spec);
    tok.metadata.namespace = Some("team-a".into());
    tok.metadata.uid = Some("u1".into());
    tok.metadata.generation = Some(1);
    tok
}

fn spec() -> ApiTokenSpec {
    serde_json::from_str(r#"{"product":"acme"}"#).unwrap()
}

/// Where the step of a crash falls: how many of the plan's writes land.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Land {
    All,
    /// Only the delivery Secret.
    Delivery,
    /// Delivery and hashed Secrets, not the status.
    Secrets,
    Nothing,
}

struct World {
    cfg: PlanConfig,
    token: ApiToken,
    hashed: Option<Secret>,
    delivery: Option<Secret>,
    reports: Vec<Arc<UsageReport>>,
    last_usage_write: Option<DateTime<Utc>>,
    issued: Vec<Token>,
    events: Vec<PlannedEvent>,
}

impl World {
    fn new(spec: ApiTokenSpec) -> Self {
        Self {
            cfg: cfg(),
            token: api_token(spec),
            hashed: None,
            delivery: None,
            reports: Vec::new(),
            last_usage_write: None,
            issued: Vec::new(),
            events: Vec::new(),
        }
    }

    fn plan(&self, now: DateTime<Utc>, fresh: &Token) -> Plan {
        let uid = self.token.metadata.uid.as_deref().unwrap();
        let hashed = HashedObs::observe(self.hashed.as_ref(), uid);
        let delivery = DeliveryObs::observe(self.delivery.as_ref(), uid);
        plan(
            &self.cfg,
            &Inputs {
                token: &self.token,
                hashed: &hashed,
                delivery: &delivery,
                reports: &self.reports,
                last_usage_write: self.last_usage_write,
                now,
                fresh_token: fresh,
            },
        )
        .unwrap()
    }

    fn pass(&mut self, now: DateTime<Utc>) -> Plan {
        self.pass_landing(now, Land::All)
    }

    fn pass_landing(&mut self, now: DateTime<Utc>, land: Land) -> Plan {
        let fresh = Token::generate("prod").unwrap();
        let p = self.plan(now, &fresh);
        if land == Land::Nothing {
            return p;
        }
        if let Some(s) = &p.put_delivery {
            self.issued.push(fresh);
            self.delivery = Some(s.clone());
        }
        if land == Land::Delivery {
            return p;
        }
        if let Some(r) = &p.put_hashed {
            self.hashed = Some(r.to_secret(NS).unwrap());
        }
        if land == Land::Secrets {
            return p;
        }
        if let Some(w) = &p.status {
            if w.status.usage != self.status().usage
                || w.status.last_used_at != self.status().last_used_at
            {
                self.last_usage_write = Some(now);
            }
            self.token.status = Some(w.status.clone());
        }
        if p.delete_delivery.is_some() {
            self.delivery = None;
        }
        self.events.extend(p.events.iter().cloned());
        p
    }

    fn status(&self) -> ApiTokenStatus {
        self.token.status.clone().unwrap_or_default()
    }

    fn record(&self) -> HashedRecord {
        HashedRecord::from_secret(self.hashed.as_ref().unwrap()).unwrap()
    }

    fn delivered(&self) -> String {
        let d = self.delivery.as_ref().unwrap().data.as_ref().unwrap();
        String::from_utf8(d[delivery::TOKEN_KEY].0.clone()).unwrap()
    }

    fn ready(&self) -> Condition {
        self.status()
            .conditions
            .into_iter()
            .find(|c| c.type_ == condition::READY)
            .unwrap()
    }

    fn reasons(&self) -> Vec<&'static str> {
        self.events.iter().map(|e| e.reason).collect()
    }

    /// A second pass over the result plans nothing.
    fn assert_settled(&self, now: DateTime<Utc>) {
        let p = self.plan(now, &Token::generate("prod").unwrap());
        assert!(!p.has_writes(), "not settled at {now}: {p:?}");
        assert!(
            p.events.is_empty(),
            "events on a settled pass: {:?}",
            p.events
        );
    }
}

fn sha(token: &str) -> String {
    TokenHash::of(token).to_hex()
}

#[test]
fn create_issues_delivers_and_hashes_one_token() {
    let mut w = World::new(spec());
    let p = w.pass(t(0));
    assert!(p.needs_fresh_read);
    assert_eq!(w.issued.len(), 1);
    let plaintext = w.delivered();
    assert_eq!(plaintext, w.issued[0].expose());
    let rec = w.record();
    assert_eq!(rec.hashes.len(), 1);
    assert_eq!(rec.hashes[0].sha256, sha(&plaintext));
    assert_eq!(rec.hashes[0].regeneration, 0);
    assert_eq!(rec.state, RecordState::Active);
    assert_eq!(
        (rec.namespace.as_str(), rec.name.as_str(), rec.uid.as_str()),
        ("team-a", "ci-bot", "u1")
    );

    let s = w.status();
    assert_eq!(s.phase, Some(Phase::Active));
    assert_eq!(s.prefix.as_deref(), Some(&plaintext[..8]));
    assert_eq!(s.created_at, Some(t(0)));
    assert_eq!(s.issued_regeneration, Some(0));
    assert_eq!(s.hashed_secret_name.as_deref(), Some("apitoken-u1"));
    assert_eq!(s.hashed_secret_namespace.as_deref(), Some(NS));
    assert_eq!(s.delivery_secret_name.as_deref(), Some("ci-bot-token"));
    assert_eq!(s.observed_generation, Some(1));
    let ready = w.ready();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", condition::REASON_ACTIVE)
    );
    assert_eq!(w.reasons(), [reason::ISSUED]);

    // The plaintext is nowhere but the delivery Secret.
    let hashed_json = serde_json::to_string(w.hashed.as_ref().unwrap()).unwrap();
    let record_json = serde_json::to_string(&rec).unwrap();
    let status_json = serde_json::to_string(&s).unwrap();
    let events = format!("{:?}", w.events);
    let debug = format!("{p:?}");
    for text in [&hashed_json, &record_json, &status_json, &events, &debug] {
        assert!(
            !text.contains(&plaintext[5..]),
            "plaintext leaked into {text}"
        );
    }
    let delivery = w.delivery.as_ref().unwrap();
    assert_eq!(delivery.type_.as_deref(), Some("Opaque"));
    assert_eq!(delivery.metadata.namespace.as_deref(), Some("team-a"));
    let owner = &delivery.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("ApiToken", "u1")
    );
    assert_eq!(
        delivery.metadata.labels.as_ref().unwrap()[TOKEN_NAME_LABEL],
        "ci-bot"
    );
    w.assert_settled(t(0));
    w.assert_settled(t(5000));
}

#[test]
fn record_carries_product_scopes_rate_limit_and_expiry_and_follows_spec_edits() {
    let mut s = spec();
    s.scopes = vec![Scope::AgentsRead];
    s.rate_limit = Some(RateLimit {
        requests_per_second: 3,
        burst: Some(6),
    });
    s.expires_at = Some(t(1000));
    let mut w = World::new(s);
    w.pass(t(0));
    let rec = w.record();
    assert_eq!(rec.product, "acme");
    assert_eq!(rec.scopes, vec![Scope::AgentsRead]);
    assert_eq!(rec.rate_limit.unwrap().burst(), 6);
    assert_eq!(rec.expires_at, Some(t(1000)));
    assert_eq!(w.status().expires_at, Some(t(1000)));

    let hash = rec.hashes[0].sha256.clone();
    w.token.spec.product = "other".into();
    w.token.spec.expires_at = None;
    w.token.metadata.generation = Some(2);
    let p = w.pass(t(10));
    assert!(p.put_delivery.is_none(), "a spec edit must not re-issue");
    let rec = w.record();
    assert_eq!((rec.product.as_str(), rec.expires_at), ("other", None));
    assert_eq!(rec.hashes[0].sha256, hash);
    assert_eq!(w.status().observed_generation, Some(2));
    assert_eq!(w.issued.len(), 1);
    w.assert_settled(t(10));
}

#[test]
fn phase_precedence_is_revoked_expired_inactive_active() {
    // (active, revoked, expired) -> phase, reason, Ready
    let cases = [
        (
            true,
            false,
            false,
            Phase::Active,
            condition::REASON_ACTIVE,
            "True",
        ),
        (
            false,
            false,
            false,
            Phase::Inactive,
            condition::REASON_INACTIVE,
            "False",
        ),
        (
            true,
            false,
            true,
            Phase::Expired,
            condition::REASON_EXPIRED,
            "False",
        ),
        (
            false,
            false,
            true,
            Phase::Expired,
            condition::REASON_EXPIRED,
            "False",
        ),
        (
            true,
            true,
            false,
            Phase::Revoked,
            condition::REASON_REVOKED,
            "False",
        ),
        (
            false,
            true,
            false,
            Phase::Revoked,
            condition::REASON_REVOKED,
            "False",
        ),
        (
            true,
            true,
            true,
            Phase::Revoked,
            condition::REASON_REVOKED,
            "False",
        ),
        (
            false,
            true,
            true,
            Phase::Revoked,
            condition::REASON_REVOKED,
            "False",
        ),
    ];
    for (active, revoked, expired, phase, why, ready) in cases {
        let mut w = World::new(spec());
        w.pass(t(0));
        w.token.spec.active = active;
        w.token.spec.revoked = revoked;
        w.token.spec.expires_at = Some(if expired { t(50) } else { t(500) });
        w.pass(t(100));
        let label = format!("active={active} revoked={revoked} expired={expired}");
        assert_eq!(w.status().phase, Some(phase), "{label}");
        let c = w.ready();
        assert_eq!(
            (c.reason.as_str(), c.status.as_str()),
            (why, ready),
            "{label}"
        );
        let state = w.record().state;
        let want = if revoked {
            RecordState::Revoked
        } else if active {
            RecordState::Active
        } else {
            RecordState::Inactive
        };
        assert_eq!(state, want, "{label}");
        w.assert_settled(t(100));
    }
}

#[test]
fn every_transition_emits_its_event_once() {
    let mut w = World::new(spec());
    w.pass(t(0));
    w.token.spec.active = false;
    w.pass(t(1));
    assert_eq!(w.status().phase, Some(Phase::Inactive));
    w.assert_settled(t(2));
    w.token.spec.active = true;
    w.pass(t(3));
    assert_eq!(w.status().phase, Some(Phase::Active));
    w.token.spec.expires_at = Some(t(10));
    w.pass(t(4));
    w.pass(t(10));
    assert_eq!(w.status().phase, Some(Phase::Expired));
    w.token.spec.revoked = true;
    w.pass(t(11));
    w.assert_settled(t(12));
    assert_eq!(
        w.reasons(),
        [
            reason::ISSUED,
            reason::DEACTIVATED,
            reason::ACTIVATED,
            reason::EXPIRED,
            reason::REVOKED
        ]
    );
    assert_eq!(w.issued.len(), 1, "no transition re-issues");
}

#[test]
fn expiry_turns_at_the_exact_instant_and_requeues_for_it() {
    let mut s = spec();
    s.expires_at = Some(t(3600));
    let mut w = World::new(s);
    let p = w.pass(t(0));
    assert_eq!(p.requeue_at, Some(t(3600)));

    let before = w.pass(t(3599));
    assert_eq!(w.status().phase, Some(Phase::Active));
    assert!(!before.has_writes());
    assert_eq!(before.requeue_at, Some(t(3600)));

    let at = w.pass(t(3600));
    assert_eq!(w.status().phase, Some(Phase::Expired));
    assert!(
        at.put_hashed.is_none(),
        "expiry is not a record change; the proxy checks it"
    );
    assert_eq!(at.requeue_at, None);
    assert_eq!(w.reasons(), [reason::ISSUED, reason::EXPIRED]);
    w.assert_settled(t(3601));

    // One second after, from a fresh operator that never saw it Active.
    let mut late = World::new(w.token.spec.clone());
    late.pass(t(0));
    late.pass(t(3601));
    assert_eq!(late.status().phase, Some(Phase::Expired));

    // Moving expiresAt forward revives it.
    w.token.spec.expires_at = Some(t(7200));
    w.pass(t(3602));
    assert_eq!(w.status().phase, Some(Phase::Active));
    assert_eq!(w.record().expires_at, Some(t(7200)));
}

#[test]
fn regeneration_without_grace_replaces_the_hash_at_once() {
    let mut w = World::new(spec());
    w.pass(t(0));
    let first = w.delivered();
    w.token.spec.regeneration = 1;
    let p = w.pass(t(100));
    assert!(p.put_delivery.is_some() && p.put_hashed.is_some());
    let second = w.delivered();
    assert_ne!(first, second);
    let rec = w.record();
    assert_eq!(rec.hashes.len(), 1);
    assert_eq!(rec.hashes[0].sha256, sha(&second));
    assert_eq!(rec.hashes[0].regeneration, 1);
    let s = w.status();
    assert_eq!(s.issued_regeneration, Some(1));
    assert_eq!(s.prefix.as_deref(), Some(&second[..8]));
    assert_eq!(s.created_at, Some(t(100)));
    assert_eq!(s.previous_valid_until, None);
    assert_eq!(w.reasons(), [reason::ISSUED, reason::REGENERATED]);
    assert!(w.events[1].note.contains("rejected"));
    w.assert_settled(t(100));
}

#[test]
fn regeneration_with_grace_keeps_the_previous_hash_until_the_grace_ends() {
    let mut s = spec();
    s.regeneration_grace_period = Some("5m".into());
    let mut w = World::new(s);
    w.pass(t(0));
    let first = w.delivered();
    w.token.spec.regeneration = 1;
    let p = w.pass(t(100));
    assert_eq!(p.requeue_at, Some(t(400)));
    let rec = w.record();
    assert_eq!(rec.hashes.len(), 2);
    assert_eq!(rec.hashes[0].sha256, sha(&w.delivered()));
    assert_eq!(rec.hashes[1].sha256, sha(&first));
    assert_eq!(rec.hashes[1].not_after, Some(t(400)));
    assert_eq!(w.status().previous_valid_until, Some(t(400)));
    assert!(w.events[1].note.contains("accepted until"));
    w.assert_settled(t(100));

    // One second before the end nothing changes; at the end it is dropped.
    w.assert_settled(t(399));
    let end = w.pass(t(400));
    assert!(end.put_hashed.is_some());
    assert!(end.put_delivery.is_none());
    assert_eq!(w.record().hashes.len(), 1);
    assert_eq!(w.status().previous_valid_until, None);
    w.assert_settled(t(401));
    assert_eq!(w.issued.len(), 2);
}

#[test]
fn zero_grace_is_no_grace_and_a_bad_grace_blocks_the_regeneration() {
    let mut s = spec();
    s.regeneration_grace_period = Some("0s".into());
    let mut w = World::new(s);
    w.pass(t(0));
    w.token.spec.regeneration = 1;
    w.pass(t(1));
    assert_eq!(w.record().hashes.len(), 1);

    // Overflowing or absurd durations pass the CRD's pattern but are refused.
    for absurd in ["99999999999999999999d", "9999999999d", "3651d"] {
        let mut s = spec();
        s.regeneration_grace_period = Some(absurd.into());
        let mut w = World::new(s);
        w.pass(t(0));
        w.token.spec.regeneration = 1;
        assert!(w.pass(t(1)).put_delivery.is_none(), "{absurd}");
        assert_eq!(w.ready().reason, condition::REASON_INVALID_SPEC, "{absurd}");
    }
    let mut s = spec();
    s.regeneration_grace_period = Some("99999999999999999999d".into());
    let mut w = World::new(s);
    w.pass(t(0));
    let hash = w.record().hashes[0].sha256.clone();
    w.token.spec.regeneration = 1;
    let p = w.pass(t(1));
    assert!(
        p.put_delivery.is_none(),
        "must not regenerate on a spec it cannot honour"
    );
    assert_eq!(w.record().hashes[0].sha256, hash);
    assert_eq!(w.ready().reason, condition::REASON_INVALID_SPEC);
    assert_eq!(w.status().phase, Some(Phase::Active));
    assert_eq!(w.reasons(), [reason::ISSUED, reason::INVALID_SPEC]);
    w.assert_settled(t(2));
    // Fixing the spec lets the regeneration through.
    w.token.spec.regeneration_grace_period = Some("1m".into());
    w.pass(t(3));
    assert_eq!(w.record().hashes.len(), 2);
    assert_eq!(w.ready().reason, condition::REASON_ACTIVE);
}

#[test]
fn a_second_regeneration_inside_the_grace_keeps_both_previous_tokens() {
    let mut s = spec();
    s.regeneration_grace_period = Some("10m".into());
    let mut w = World::new(s);
    w.pass(t(0));
    w.token.spec.regeneration = 1;
    w.pass(t(10));
    w.token.spec.regeneration = 2;
    let p = w.pass(t(20));
    let rec = w.record();
    let until: Vec<_> = rec.hashes.iter().map(|h| h.not_after).collect();
    assert_eq!(until, [None, Some(t(620)), Some(t(610))]);
    assert_eq!(p.requeue_at, Some(t(610)));
    assert_eq!(w.status().previous_valid_until, Some(t(620)));
    w.pass(t(610));
    assert_eq!(w.record().hashes.len(), 2);
    w.pass(t(620));
    assert_eq!(w.record().hashes.len(), 1);
    w.assert_settled(t(700));
}

#[test]
fn a_crash_between_any_two_writes_never_issues_a_second_token() {
    for land in [Land::Nothing, Land::Delivery, Land::Secrets] {
        let mut w = World::new(spec());
        w.pass_landing(t(0), land);
        w.pass(t(1));
        w.assert_settled(t(2));
        // A crash before any write loses nothing (nothing was delivered);
        // after the delivery Secret, the token written there is kept.
        assert_eq!(w.issued.len(), 1, "{land:?}");
        assert_eq!(w.record().hashes[0].sha256, sha(&w.delivered()), "{land:?}");
        assert_eq!(
            w.status().prefix.as_deref(),
            Some(&w.delivered()[..8]),
            "{land:?}"
        );
        assert_eq!(w.reasons(), [reason::ISSUED], "{land:?}");
        if land != Land::Nothing {
            assert_eq!(
                w.status().created_at,
                Some(t(0)),
                "{land:?}: issue time kept"
            );
        }
    }
}

#[test]
fn a_crash_during_a_regeneration_keeps_the_delivered_token_and_its_grace() {
    for land in [Land::Delivery, Land::Secrets] {
        let mut s = spec();
        s.regeneration_grace_period = Some("1m".into());
        let mut w = World::new(s);
        w.pass(t(0));
        w.token.spec.regeneration = 1;
        w.pass_landing(t(10), land);
        let delivered = w.delivered();
        w.pass(t(15));
        w.assert_settled(t(16));
        assert_eq!(w.issued.len(), 2, "{land:?}");
        assert_eq!(w.delivered(), delivered, "{land:?}");
        let rec = w.record();
        assert_eq!(rec.hashes[0].sha256, sha(&delivered));
        assert_eq!(rec.hashes[0].regeneration, 1);
        // The grace runs from the issue at t=10, not from the retry.
        assert_eq!(rec.hashes[1].not_after, Some(t(70)), "{land:?}");
        assert_eq!(w.status().created_at, Some(t(10)));
        assert_eq!(w.status().prefix.as_deref(), Some(&delivered[..8]));
        assert_eq!(
            w.reasons(),
            [reason::ISSUED, reason::REGENERATED],
            "{land:?}"
        );
    }
}

#[test]
fn a_lost_hashed_secret_is_rebuilt_from_the_delivery_secret() {
    let mut w = World::new(spec());
    w.pass(t(0));
    let before = w.record();
    w.hashed = None;
    let p = w.pass(t(50));
    assert!(p.needs_fresh_read);
    assert!(p.put_delivery.is_none(), "no re-issue");
    assert_eq!(w.record(), before, "the same hash comes back");
    assert_eq!(w.issued.len(), 1);
    assert_eq!(w.status().phase, Some(Phase::Active));
    let last = w.events.last().unwrap();
    assert!(last.warning);
    assert_eq!(last.reason, reason::HASHED_SECRET_LOST);
    w.assert_settled(t(51));

    // A corrupted record is treated the same way.
    let mut broken = w.hashed.clone().unwrap();
    broken.data.as_mut().unwrap().insert(
        prodgy_crds::hashed::RECORD_KEY.into(),
        ByteString(b"{".to_vec()),
    );
    w.hashed = Some(broken);
    w.pass(t(60));
    assert_eq!(w.record(), before);
}

#[test]
fn a_lost_hashed_secret_without_the_plaintext_waits_for_a_regeneration() {
    let mut s = spec();
    s.delivery = Some(Delivery {
        mode: Some(DeliveryMode::RevealOnce),
        secret_name: None,
    });
    let mut w = World::new(s);
    w.pass(t(0));
    w.pass(t(600));
    assert!(w.delivery.is_none());
    w.hashed = None;
    let p = w.pass(t(700));
    assert!(p.needs_fresh_read);
    assert!(
        p.put_delivery.is_none() && p.put_hashed.is_none(),
        "fail closed: {p:?}"
    );
    assert_eq!(w.status().phase, Some(Phase::Pending));
    let c = w.ready();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", condition::REASON_HASHED_SECRET_LOST)
    );
    assert!(c.message.contains("spec.regeneration"));
    assert_eq!(w.status().hashed_secret_name, None);
    assert_eq!(w.status().issued_regeneration, Some(0));
    let warnings: Vec<_> = w.events.iter().filter(|e| e.warning).collect();
    assert_eq!(warnings.len(), 1);
    w.assert_settled(t(701));

    w.token.spec.regeneration = 1;
    w.pass(t(800));
    assert_eq!(w.issued.len(), 2);
    assert_eq!(w.record().hashes.len(), 1);
    assert_eq!(w.record().hashes[0].sha256, sha(&w.delivered()));
    assert_eq!(w.status().phase, Some(Phase::Active));
    assert_eq!(w.events.last().unwrap().reason, reason::REGENERATED);

    // Lost while expired: still reported, phase stays Expired.
    w.token.spec.expires_at = Some(t(900));
    w.pass(t(900));
    w.pass(t(900 + 600));
    w.hashed = None;
    w.pass(t(2000));
    assert_eq!(w.status().phase, Some(Phase::Expired));
    assert_eq!(w.ready().reason, condition::REASON_HASHED_SECRET_LOST);
}

#[test]
fn reveal_once_deletes_the_delivery_secret_after_the_window() {
    for per_token in [false, true] {
        let mut w = World::new(spec());
        if per_token {
            w.token.spec.delivery = Some(Delivery {
                mode: Some(DeliveryMode::RevealOnce),
                secret_name: Some("handover".into()),
            });
        } else {
            w.cfg.delivery_mode = DeliveryMode::RevealOnce;
        }
        let name = if per_token {
            "handover"
        } else {
            "ci-bot-token"
        };
        let p = w.pass(t(0));
        assert_eq!(p.requeue_at, Some(t(600)));
        assert_eq!(w.status().delivery_secret_name.as_deref(), Some(name));
        assert!(w.ready().message.contains("RevealOnce"));
        w.assert_settled(t(599));

        let p = w.pass(t(600));
        assert_eq!(p.delete_delivery.as_deref(), Some(name));
        assert!(w.delivery.is_none());
        assert_eq!(w.status().delivery_secret_name, None);
        assert!(w.ready().message.contains("reveal window has closed"));
        assert_eq!(
            w.events.last().unwrap().reason,
            reason::REVEAL_WINDOW_CLOSED
        );
        assert_eq!(w.status().phase, Some(Phase::Active));
        w.assert_settled(t(601));
    }
}

#[test]
fn reveal_once_waits_for_a_durable_status_before_deleting() {
    let mut w = World::new(spec());
    w.cfg.delivery_mode = DeliveryMode::RevealOnce;
    // Issue lands but the status write is lost; the window passes.
    w.pass_landing(t(0), Land::Secrets);
    let p = w.pass(t(700));
    assert!(
        p.delete_delivery.is_none(),
        "status first, then the deletion"
    );
    assert_eq!(w.status().issued_regeneration, Some(0));
    let p = w.pass(t(701));
    assert!(p.delete_delivery.is_some());
}

#[test]
fn secret_mode_keeps_the_plaintext_and_reports_a_deleted_delivery_secret() {
    let mut w = World::new(spec());
    w.pass(t(0));
    w.assert_settled(t(100_000));
    assert!(w.delivery.is_some());
    w.delivery = None;
    let p = w.pass(t(10));
    assert!(
        p.put_delivery.is_none(),
        "a deleted delivery Secret is not re-issued"
    );
    assert_eq!(w.status().delivery_secret_name, None);
    assert!(w.ready().message.contains("is gone"));
    assert_eq!(w.status().phase, Some(Phase::Active));
}

#[test]
fn revoke_is_permanent_and_never_reissues() {
    let mut w = World::new(spec());
    w.pass(t(0));
    w.token.spec.revoked = true;
    w.pass(t(1));
    assert_eq!(w.record().state, RecordState::Revoked);
    w.token.spec.regeneration = 3;
    let p = w.pass(t(2));
    assert!(p.put_delivery.is_none());
    assert_eq!(w.issued.len(), 1);
    assert_eq!(w.status().phase, Some(Phase::Revoked));
    assert_eq!(w.reasons(), [reason::ISSUED, reason::REVOKED]);
    w.assert_settled(t(3));

    // Created revoked: nothing is issued at all.
    let mut s = spec();
    s.revoked = true;
    let mut w = World::new(s);
    let p = w.pass(t(0));
    assert!(!p.needs_fresh_read);
    assert!(w.delivery.is_none() && w.hashed.is_none());
    assert_eq!(w.status().phase, Some(Phase::Revoked));
    w.assert_settled(t(1));
}

#[test]
fn created_inactive_or_expired_still_gets_its_token() {
    let mut s = spec();
    s.active = false;
    let mut w = World::new(s);
    w.pass(t(0));
    assert_eq!(w.status().phase, Some(Phase::Inactive));
    assert_eq!(w.record().state, RecordState::Inactive);
    assert_eq!(w.reasons(), [reason::ISSUED]);

    let mut s = spec();
    s.expires_at = Some(t(-1));
    let mut w = World::new(s);
    w.pass(t(0));
    assert_eq!(w.status().phase, Some(Phase::Expired));
    assert_eq!(w.reasons(), [reason::ISSUED]);
}

#[test]
fn a_foreign_secret_of_the_delivery_name_is_never_touched() {
    let mut w = World::new(spec());
    let mut foreign = Secret::default();
    foreign.metadata.name = Some("ci-bot-token".into());
    w.delivery = Some(foreign.clone());
    let p = w.pass(t(0));
    assert!(p.put_delivery.is_none() && p.put_hashed.is_none());
    assert_eq!(w.delivery, Some(foreign));
    assert_eq!(w.status().phase, Some(Phase::Pending));
    let c = w.ready();
    assert_eq!(c.reason, condition::REASON_INVALID_SPEC);
    assert!(c.message.contains("secretName"));
    w.assert_settled(t(1));
    // Choosing another name unblocks it.
    w.token.spec.delivery = Some(Delivery {
        mode: None,
        secret_name: Some("ci-bot-token-2".into()),
    });
    w.delivery = None;
    w.pass(t(2));
    assert_eq!(w.status().phase, Some(Phase::Active));
}

#[test]
fn a_delivery_secret_left_by_an_earlier_token_of_that_name_is_replaced() {
    let mut old = World::new(spec());
    old.pass(t(0));
    let mut w = World::new(spec());
    w.token.metadata.uid = Some("u2".into());
    w.delivery = old.delivery.clone();
    w.pass(t(1));
    assert_ne!(w.delivered(), old.delivered());
    assert_eq!(w.record().uid, "u2");
    assert_eq!(w.reasons(), [reason::ISSUED]);
}

#[test]
fn a_record_of_another_uid_is_not_trusted() {
    let mut old = World::new(spec());
    old.pass(t(0));
    let secret = old.hashed.clone().unwrap();
    assert!(matches!(
        HashedObs::observe(Some(&secret), "u2"),
        HashedObs::Invalid(_)
    ));
    assert!(matches!(
        HashedObs::observe(Some(&secret), "u1"),
        HashedObs::Present(_)
    ));
    assert_eq!(HashedObs::observe(None, "u1"), HashedObs::Missing);
}

#[test]
fn usage_is_summed_and_written_with_a_debounce() {
    let mut w = World::new(spec());
    w.pass(t(0));
    w.reports = vec![
        report("a", 10, &[("u1", 5)]),
        report("b", 10, &[("u1", 2), ("u9", 100)]),
    ];
    let p = w.pass(t(10));
    assert!(p.status.as_ref().unwrap().usage_only);
    assert!(!p.needs_fresh_read, "usage is written from the caches");
    assert_eq!(w.status().usage, 7);
    assert_eq!(w.status().last_used_at, Some(t(9)));

    // Another flush 5 s later waits for the interval, then lands.
    w.reports[0] = report("a", 15, &[("u1", 9)]);
    let p = w.pass(t(15));
    assert!(p.status.is_none());
    assert_eq!(p.requeue_at, Some(t(25)));
    assert_eq!(w.status().usage, 7);
    w.pass(t(25));
    assert_eq!(w.status().usage, 11);

    // A lifecycle change is never delayed by the debounce.
    w.reports[0] = report("a", 26, &[("u1", 10)]);
    w.token.spec.active = false;
    let p = w.pass(t(26));
    assert!(!p.status.as_ref().unwrap().usage_only);
    assert_eq!(w.status().usage, 12);
    assert_eq!(w.status().phase, Some(Phase::Inactive));
}

#[test]
fn usage_folding_survives_crashes_without_double_counting() {
    let mut w = World::new(spec());
    w.pass(t(0));
    w.reports = vec![
        report("old", 10, &[("u1", 30)]),
        report("new", 100, &[("u1", 4)]),
    ];
    w.pass(t(100));
    assert_eq!(w.status().usage, 34);
    // The old report becomes retirable at 130; the plan asks to be woken.
    let p = w.plan(t(101), &Token::generate("prod").unwrap());
    assert_eq!(p.requeue_at, Some(t(130)));

    // Step 1 planned but the status write is lost: nothing changes.
    let lost = w.pass_landing(t(130), Land::Secrets);
    assert_eq!(lost.newly_folded, vec!["old".to_owned()]);
    assert_eq!(w.status().usage, 34);
    // Retried: folded once.
    w.pass(t(131));
    let ledger = w.status().usage_ledger.unwrap();
    assert_eq!((ledger.base, ledger.folded), (30, vec!["old".to_owned()]));
    assert_eq!(w.status().usage, 34);
    w.assert_settled(t(131));
    // Step 2 (the retirer deletes the report); step 3 tidies; usage steady.
    w.reports
        .retain(|r| r.metadata.name.as_deref() != Some("old"));
    w.pass(t(140));
    assert_eq!(w.status().usage, 34);
    let ledger = w.status().usage_ledger.unwrap();
    assert_eq!((ledger.base, ledger.folded.len()), (30, 0));
    w.assert_settled(t(141));
}

#[test]
fn an_operator_restart_changes_nothing() {
    let mut s = spec();
    s.regeneration_grace_period = Some("1h".into());
    s.expires_at = Some(t(99_999));
    let mut w = World::new(s);
    w.pass(t(0));
    w.token.spec.regeneration = 1;
    w.pass(t(1));
    w.reports = vec![report("a", 2, &[("u1", 3)])];
    w.pass(t(2));
    // A restarted operator has no memory of its last usage write.
    w.last_usage_write = None;
    w.assert_settled(t(3));
}

#[test]
fn a_token_without_identity_is_an_error_not_a_panic() {
    let mut tok = api_token(spec());
    tok.metadata.uid = None;
    let fresh = Token::generate("prod").unwrap();
    let r = plan(
        &cfg(),
        &Inputs {
            token: &tok,
            hashed: &HashedObs::Missing,
            delivery: &DeliveryObs::Missing,
            reports: &[],
            last_usage_write: None,
            now: t(0),
            fresh_token: &fresh,
        },
    );
    assert!(matches!(
        r,
        Err(Error::MissingField {
            field: "metadata.uid",
            ..
        })
    ));
}

#[test]
fn delivery_observation_reads_what_the_operator_wrote() {
    let mut w = World::new(spec());
    w.pass(t(0));
    let obs = DeliveryObs::observe(w.delivery.as_ref(), "u1");
    let DeliveryObs::Ours {
        regeneration,
        issued_at,
        token,
    } = &obs
    else {
        panic!("not ours: {obs:?}");
    };
    assert_eq!((*regeneration, *issued_at), (Some(0), Some(t(0))));
    assert_eq!(token.as_ref().unwrap().expose(), w.delivered());
    assert!(!format!("{obs:?}").contains(&w.delivered()[8..]));
    assert_eq!(
        DeliveryObs::observe(w.delivery.as_ref(), "u2"),
        DeliveryObs::Stale
    );
}

mod lifecycle_notices;
