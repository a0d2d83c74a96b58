//! Each stage on its own: small inputs, one decision per test. The whole
//! planner, pass after pass and crash after crash, is tested in
//! `plan/tests.rs`.

use chrono::{TimeZone, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use prodgy_crds::ApiToken;

use super::*;
use crate::{plan::HashedObs, usage};

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_900_000_000 + secs, 0).unwrap()
}

fn cfg(mode: DeliveryMode) -> PlanConfig {
    PlanConfig {
        hashed_namespace: "prodgy-tokens".into(),
        delivery_mode: mode,
        reveal_window: TimeDelta::seconds(600),
        usage_report_retention: TimeDelta::seconds(120),
        usage_status_interval: TimeDelta::seconds(15),
        deactivate_after_unused: None,
        expiry_notices: Vec::new(),
    }
}

/// One token's world: spec, status, observed Secrets, a fresh token.
struct Case {
    cfg: PlanConfig,
    token: ApiToken,
    hashed: HashedObs,
    delivery: DeliveryObs,
    fresh: Token,
    now: DateTime<Utc>,
}

impl Case {
    fn new(spec_json: &str) -> Self {
        let spec = serde_json::from_str(spec_json).unwrap();
        let mut token = ApiToken::new("ci-bot", spec);
        token.metadata.namespace = Some("team-a".into());
        token.metadata.uid = Some("u1".into());
        token.metadata.generation = Some(3);
        Self {
            cfg: cfg(DeliveryMode::Secret),
            token,
            hashed: HashedObs::Missing,
            delivery: DeliveryObs::Missing,
            fresh: Token::generate("prod").unwrap(),
            now: t(0),
        }
    }

    /// A token issued at `t(0)` for `regeneration`, recorded everywhere.
    fn issued(mut self, regeneration: i64) -> Self {
        let token = Token::generate("prod").unwrap();
        let entry = HashEntry::current(&token.hash(), regeneration);
        let record = self.record_with(vec![entry]);
        self.hashed = HashedObs::Present(record);
        self.delivery = DeliveryObs::Ours {
            regeneration: Some(regeneration),
            issued_at: Some(t(0)),
            token: Some(token.clone()),
        };
        self.token.status = Some(ApiTokenStatus {
            phase: Some(Phase::Active),
            prefix: Some(token.display_prefix().to_owned()),
            created_at: Some(t(0)),
            issued_regeneration: Some(regeneration),
            ..Default::default()
        });
        self
    }

    fn record_with(&self, hashes: Vec<HashEntry>) -> HashedRecord {
        HashedRecord {
            version: RECORD_VERSION,
            namespace: "team-a".into(),
            name: "ci-bot".into(),
            uid: "u1".into(),
            product: "acme".into(),
            state: RecordState::Active,
            expires_at: None,
            scopes: Vec::new(),
            rate_limit: None,
            allowed_source_ranges: Vec::new(),
            hashes,
            usage_limit: None,
        }
    }

    fn status(&mut self) -> &mut ApiTokenStatus {
        self.token.status.get_or_insert_with(Default::default)
    }

    fn frame(&self) -> Frame<'_> {
        let input = Inputs {
            token: &self.token,
            hashed: &self.hashed,
            delivery: &self.delivery,
            reports: &[],
            last_usage_write: None,
            now: self.now,
            fresh_token: &self.fresh,
        };
        Frame::new(&self.cfg, &input).unwrap()
    }
}

#[test]
fn source_issues_fresh_when_nothing_exists_and_nothing_when_revoked() {
    let c = Case::new(r#"{"product":"acme"}"#);
    assert_eq!(source(&c.frame()).source, Source::Fresh);
    let c = Case::new(r#"{"product":"acme","revoked":true}"#);
    assert_eq!(
        source(&c.frame()).source,
        Source::None(Gap::RevokedUnissued)
    );
}

#[test]
fn source_keeps_the_record_of_the_current_regeneration() {
    let c = Case::new(r#"{"product":"acme"}"#).issued(0);
    assert!(matches!(source(&c.frame()).source, Source::Recorded(_)));
}

#[test]
fn source_rebuilds_from_the_delivered_plaintext_or_reports_it_lost() {
    let mut c = Case::new(r#"{"product":"acme"}"#).issued(0);
    c.hashed = HashedObs::Missing;
    assert!(matches!(
        source(&c.frame()).source,
        Source::Delivered(_, at) if at == t(0)
    ));
    c.delivery = DeliveryObs::Missing;
    let sourced = source(&c.frame());
    assert_eq!(sourced.source, Source::None(Gap::Lost));
    assert!(sourced.lost());
}

#[test]
fn a_foreign_delivery_secret_blocks_the_issue_and_says_why() {
    let mut c = Case::new(r#"{"product":"acme"}"#);
    c.delivery = DeliveryObs::Foreign;
    let sourced = source(&c.frame());
    assert_eq!(sourced.source, Source::None(Gap::Blocked));
    let why = sourced.invalid.unwrap();
    assert!(why.contains("team-a/ci-bot-token"), "{why}");
}

#[test]
fn a_bad_grace_period_blocks_only_a_regeneration() {
    let c = Case::new(r#"{"product":"acme","regenerationGracePeriod":"soon"}"#);
    let first = source(&c.frame());
    assert_eq!(first.source, Source::Fresh);
    assert_eq!(first.invalid, None);
    let mut c = Case::new(r#"{"product":"acme","regenerationGracePeriod":"soon"}"#).issued(0);
    c.token.spec.regeneration = 1;
    let regen = source(&c.frame());
    assert!(matches!(regen.source, Source::Recorded(_)));
    assert!(regen.invalid.unwrap().contains("regenerationGracePeriod"));
    assert_eq!(regen.grace, None);
}

#[test]
fn issued_prefers_the_status_and_falls_back_to_the_delivery_secret() {
    let mut c = Case::new(r#"{"product":"acme"}"#).issued(0);
    let prefix = c.token.status.as_ref().unwrap().prefix.clone();
    let f = c.frame();
    let s = source(&f);
    let i = issued(&f, &s.source);
    assert_eq!(
        (i.prefix.clone(), i.issued_at),
        (prefix.clone(), Some(t(0)))
    );
    assert_eq!(i.new_token, None);
    // A crash before the first status write: the delivery Secret knows.
    c.token.status = None;
    let f = c.frame();
    let s = source(&f);
    let i = issued(&f, &s.source);
    assert_eq!((i.prefix, i.issued_at), (prefix, Some(t(0))));
}

#[test]
fn issued_takes_the_fresh_token_when_issuing() {
    let mut c = Case::new(r#"{"product":"acme"}"#);
    c.now = t(5);
    let f = c.frame();
    let i = issued(&f, &Source::Fresh);
    assert_eq!(i.prefix.as_deref(), Some(c.fresh.display_prefix()));
    assert_eq!(i.issued_at, Some(t(5)));
    assert_eq!(i.regeneration(), Some(0));
    assert_eq!(i.new_token.map(|(tok, _)| tok), Some(&c.fresh));
}

#[test]
fn the_desired_record_follows_the_spec() {
    let c = Case::new(
        r#"{"product":"acme","active":false,"scopes":["agents:read"],"expiresAt":"2031-01-01T00:00:00Z"}"#,
    );
    let f = c.frame();
    let i = issued(&f, &Source::Fresh);
    let r = desired_record(&f, None, &i).unwrap();
    assert_eq!(r.state, RecordState::Inactive);
    assert_eq!(r.product, "acme");
    assert_eq!(r.scopes.len(), 1);
    assert_eq!(r.expires_at, c.token.spec.expires_at);
    assert_eq!(r.hashes.len(), 1);
    assert_eq!(desired_record(&f, None, &Issued::default()), None);
}

#[test]
fn a_regeneration_keeps_the_superseded_hash_through_the_grace_only() {
    let mut c = Case::new(r#"{"product":"acme"}"#).issued(0);
    c.token.spec.regeneration = 1;
    c.now = t(10);
    let f = c.frame();
    let i = issued(&f, &Source::Fresh);
    let with_grace = desired_record(&f, Some(TimeDelta::seconds(60)), &i).unwrap();
    assert_eq!(with_grace.hashes.len(), 2);
    assert_eq!(with_grace.hashes[1].not_after, Some(t(70)));
    assert_eq!(previous_valid_until(Some(&with_grace)), Some(t(70)));
    let without = desired_record(&f, None, &i).unwrap();
    assert_eq!(without.hashes.len(), 1);
    // Past its end, a superseded hash is dropped.
    let mut c = Case::new(r#"{"product":"acme"}"#).issued(1);
    let old = HashEntry {
        not_after: Some(t(70)),
        ..HashEntry::current(&Token::generate("prod").unwrap().hash(), 0)
    };
    let mut rec = c.hashed.record().unwrap().clone();
    rec.hashes.push(old);
    c.hashed = HashedObs::Present(rec);
    c.now = t(70);
    let f = c.frame();
    let s = source(&f);
    let i = issued(&f, &s.source);
    assert_eq!(desired_record(&f, None, &i).unwrap().hashes.len(), 1);
}

#[test]
fn delivery_writes_the_secret_only_for_a_fresh_token() {
    let c = Case::new(r#"{"product":"acme"}"#);
    let f = c.frame();
    let i = issued(&f, &Source::Fresh);
    let d = delivery(&f, &Source::Fresh, &i);
    assert!(d.put.is_some());
    assert!(d.holds_current);
    assert_eq!((d.delete, d.reveal_deadline), (None, None));
    let c = Case::new(r#"{"product":"acme"}"#).issued(0);
    let f = c.frame();
    let s = source(&f);
    let i = issued(&f, &s.source);
    let d = delivery(&f, &s.source, &i);
    assert!(d.put.is_none() && d.holds_current);
}

#[test]
fn reveal_once_deletes_after_the_window_once_the_status_is_durable() {
    let mut c = Case::new(r#"{"product":"acme"}"#).issued(0);
    c.cfg = cfg(DeliveryMode::RevealOnce);
    c.now = t(599);
    let run = |c: &Case| {
        let f = c.frame();
        let s = source(&f);
        let i = issued(&f, &s.source);
        delivery(&f, &s.source, &i)
    };
    let d = run(&c);
    assert_eq!((d.delete, d.reveal_deadline), (None, Some(t(600))));
    c.now = t(600);
    let d = run(&c);
    assert_eq!(d.delete.as_deref(), Some("ci-bot-token"));
    assert!(!d.holds_current);
    // Not durable yet: held back, with an immediate retry.
    c.status().issued_regeneration = None;
    let d = run(&c);
    assert_eq!((d.delete, d.reveal_deadline), (None, Some(t(600))));
}

#[test]
fn readiness_puts_revoked_then_invalid_spec_then_lost_before_the_phase() {
    let c = Case::new(r#"{"product":"acme"}"#);
    let f = c.frame();
    let d = Delivery::default();
    let sourced = |source, invalid: Option<&str>| Sourced {
        source,
        invalid: invalid.map(str::to_owned),
        grace: None,
    };
    let why = Some("spec.x is wrong");
    let r = readiness(&f, Phase::Revoked, &sourced(Source::Fresh, why), true, &d);
    assert_eq!((r.ready, r.reason), (false, condition::REASON_REVOKED));
    assert_eq!(r.message, "The token is revoked permanently.");
    let r = readiness(
        &f,
        Phase::Active,
        &sourced(Source::None(Gap::Lost), why),
        true,
        &d,
    );
    assert_eq!(r.reason, condition::REASON_INVALID_SPEC);
    assert!(r.message.starts_with("spec.x is wrong."), "{}", r.message);
    let lost = sourced(Source::None(Gap::Lost), None);
    let r = readiness(&f, Phase::Active, &lost, false, &d);
    assert_eq!(r.reason, condition::REASON_HASHED_SECRET_LOST);
    assert!(
        r.message.contains("prodgy-tokens/apitoken-u1"),
        "{}",
        r.message
    );
    for phase in [Phase::Active, Phase::Inactive, Phase::Expired] {
        let r = readiness(&f, phase, &sourced(Source::Fresh, None), true, &d);
        assert_eq!((r.ready, r.reason), phase.ready());
    }
}

#[test]
fn the_ready_message_says_where_the_plaintext_is() {
    let c = Case::new(r#"{"product":"acme"}"#);
    let f = c.frame();
    let fresh = Sourced {
        source: Source::Fresh,
        invalid: None,
        grace: None,
    };
    let held = Delivery {
        holds_current: true,
        ..Delivery::default()
    };
    let r = readiness(&f, Phase::Active, &fresh, true, &held);
    assert_eq!(
        r.message,
        "The token is accepted. The plaintext is in Secret team-a/ci-bot-token."
    );
    let r = readiness(&f, Phase::Active, &fresh, true, &Delivery::default());
    assert!(
        r.message
            .ends_with("is gone; the plaintext is no longer stored.")
    );
}

#[test]
fn the_phase_comes_from_the_contracts_precedence() {
    let mut c = Case::new(r#"{"product":"acme","active":false}"#);
    c.token.spec.expires_at = Some(t(100));
    let rec = c.record_with(Vec::new());
    c.now = t(99);
    assert_eq!(phase(&c.frame(), Some(&rec)), Phase::Inactive);
    assert_eq!(phase(&c.frame(), None), Phase::Pending);
    c.now = t(100);
    assert_eq!(phase(&c.frame(), Some(&rec)), Phase::Expired);
    c.token.spec.revoked = true;
    assert_eq!(phase(&c.frame(), None), Phase::Revoked);
}

#[test]
fn a_usage_only_change_waits_for_the_interval() {
    let mut c = Case::new(r#"{"product":"acme"}"#).issued(0);
    c.now = t(20);
    let f = c.frame();
    let mut desired = f.current.clone();
    desired.usage = 5;
    let (w, wake) = status_write(&f, Some(t(10)), desired.clone(), Some(t(100)));
    assert_eq!((w, wake), (None, Some(t(25))));
    let (w, wake) = status_write(&f, Some(t(0)), desired.clone(), Some(t(100)));
    assert!(w.is_some_and(|w| w.usage_only && w.status.usage == 5));
    assert_eq!(wake, Some(t(100)));
    // Anything else is written at once.
    desired.phase = Some(Phase::Inactive);
    let (w, _) = status_write(&f, Some(t(10)), desired, None);
    assert!(w.is_some_and(|w| !w.usage_only));
    let unchanged = f.current.clone();
    assert_eq!(status_write(&f, None, unchanged, None), (None, None));
}

/// Usage of a token no report mentions.
fn no_usage() -> Folded {
    usage::fold(
        "u1",
        &Default::default(),
        &[],
        t(0),
        TimeDelta::seconds(120),
    )
}

#[test]
fn the_wake_up_is_the_earliest_future_deadline() {
    let mut c = Case::new(r#"{"product":"acme"}"#);
    c.token.spec.expires_at = Some(t(100));
    let f = c.frame();
    let folded = no_usage();
    let reveal = Delivery {
        reveal_deadline: Some(t(-5)),
        ..Delivery::default()
    };
    assert_eq!(wake_at(&f, None, &reveal, &folded), Some(t(-5)));
    assert_eq!(
        wake_at(&f, None, &Delivery::default(), &folded),
        Some(t(100))
    );
}

#[test]
fn the_desired_status_carries_identity_usage_and_the_ready_condition() {
    let c = Case::new(r#"{"product":"acme"}"#);
    let f = c.frame();
    let sourced = source(&f);
    let i = issued(&f, &sourced.source);
    let rec = desired_record(&f, None, &i);
    let d = delivery(&f, &sourced.source, &i);
    let folded = no_usage();
    let readiness = readiness(&f, Phase::Active, &sourced, true, &d);
    let s = desired_status(
        &f,
        Outcome {
            phase: Phase::Active,
            sourced: &sourced,
            issued: &i,
            record: rec.as_ref(),
            delivery: &d,
            readiness,
            folded: &folded,
        },
    );
    assert_eq!(s.phase, Some(Phase::Active));
    assert_eq!(s.issued_regeneration, Some(0));
    assert_eq!(s.hashed_secret_name.as_deref(), Some("apitoken-u1"));
    assert_eq!(s.delivery_secret_name.as_deref(), Some("ci-bot-token"));
    assert_eq!(s.observed_generation, Some(3));
    let ready: &Condition = &s.conditions[0];
    assert_eq!(
        (ready.type_.as_str(), ready.status.as_str()),
        ("Ready", "True")
    );
    assert_eq!(ready.observed_generation, Some(3));
}

#[test]
fn phase_events_fire_on_transitions_only() {
    let mut c = Case::new(r#"{"product":"acme"}"#).issued(0);
    let reasons = |c: &Case, phase| {
        let f = c.frame();
        let s = source(&f);
        let i = issued(&f, &s.source);
        events(&f, &s, &i, phase, None, &Delivery::default())
            .into_iter()
            .map(|e| e.reason)
            .collect::<Vec<_>>()
    };
    assert_eq!(reasons(&c, Phase::Active), Vec::<&str>::new());
    assert_eq!(reasons(&c, Phase::Inactive), [reason::DEACTIVATED]);
    assert_eq!(reasons(&c, Phase::Revoked), [reason::REVOKED]);
    c.status().phase = Some(Phase::Inactive);
    assert_eq!(reasons(&c, Phase::Active), [reason::ACTIVATED]);
    assert_eq!(reasons(&c, Phase::Expired), [reason::EXPIRED]);
    c.status().phase = Some(Phase::Expired);
    assert_eq!(reasons(&c, Phase::Expired), Vec::<&str>::new());
}

#[test]
fn issue_events_name_the_delivery_secret_and_never_the_plaintext() {
    let c = Case::new(r#"{"product":"acme","delivery":{"secretName":"bot-cred"}}"#);
    let f = c.frame();
    let s = source(&f);
    let i = issued(&f, &s.source);
    let evs = events(&f, &s, &i, Phase::Active, None, &Delivery::default());
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].reason, reason::ISSUED);
    assert!(evs[0].note.contains("bot-cred"), "{}", evs[0].note);
    assert!(!evs[0].note.contains(c.fresh.expose()));
}

#[test]
fn the_desired_record_carries_the_source_ranges() {
    let c = Case::new(r#"{"product":"acme","allowedSourceRanges":["10.0.0.0/8","2001:db8::/32"]}"#);
    let f = c.frame();
    let r = desired_record(&f, None, &issued(&f, &Source::Fresh)).unwrap();
    assert_eq!(r.allowed_source_ranges, ["10.0.0.0/8", "2001:db8::/32"]);
    assert_eq!(r.source_ranges().unwrap().len(), 2);
    // Without ranges the record has no such key: older proxies read it.
    let c = Case::new(r#"{"product":"acme"}"#);
    let f = c.frame();
    let r = desired_record(&f, None, &issued(&f, &Source::Fresh)).unwrap();
    let json = serde_json::to_value(&r).unwrap();
    assert!(json.get("allowedSourceRanges").is_none(), "{json}");
}
