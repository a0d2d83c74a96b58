//! The lifecycle notices pass after pass: the unused switch-off, its
//! warning, reactivation, and the expiry notices, with their events (each
//! once) and wake-ups.

use prodgy_crds::lifecycle::{
    DEACTIVATED_UNUSED_ANNOTATION, EXPIRING_SOON, REASON_UNUSED, UNUSED_SOON, event,
};

use super::*;

const DAY: i64 = 86_400;

fn unused_spec(limit: &str) -> ApiTokenSpec {
    serde_json::from_str(&format!(
        r#"{{"product":"acme","deactivateAfterUnused":"{limit}"}}"#
    ))
    .unwrap()
}

impl World {
    /// A pass whose switch-off lands as the shell writes it: the spec and
    /// the mark in one write.
    fn pass_switching(&mut self, now: DateTime<Utc>) -> Plan {
        let p = self.pass(now);
        if let Some(mark) = &p.switch_off {
            self.switch(mark);
        }
        p
    }

    fn switch(&mut self, mark: &str) {
        self.token.spec.active = false;
        self.token
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(DEACTIVATED_UNUSED_ANNOTATION.to_owned(), mark.to_owned());
    }

    fn condition(&self, type_: &str) -> Option<Condition> {
        self.status()
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
    }
}

#[test]
fn an_unused_token_is_warned_then_switched_off_once_and_restarts_when_switched_on() {
    let mut w = World::new(unused_spec("100s"));
    // Issued at 0: the warning is due at 75 (a quarter ahead), the switch-off at 100.
    w.pass(t(0));
    assert_eq!(w.pass(t(50)).requeue_at, Some(t(75)));
    w.assert_settled(t(50));

    let warned = w.pass(t(75));
    assert_eq!(warned.requeue_at, Some(t(100)));
    let soon = w.condition(UNUSED_SOON).unwrap();
    assert_eq!(soon.status, "True");
    assert!(soon.message.contains(&rfc3339(t(100))), "{}", soon.message);
    w.assert_settled(t(80));

    let off = w.pass_switching(t(100));
    assert!(off.switch_off.is_some() && off.needs_fresh_read);
    assert_eq!(
        w.record().state,
        RecordState::Inactive,
        "the proxy refuses it"
    );
    assert_eq!(w.status().phase, Some(Phase::Inactive));
    let ready = w.ready();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", REASON_UNUSED)
    );
    assert!(ready.message.contains("1m40s unused"), "{}", ready.message);
    assert_eq!(w.condition(UNUSED_SOON), None);
    let unused = w.status().unused.unwrap();
    assert_eq!(
        (unused.after.as_deref(), unused.deactivated_at),
        (Some("1m40s"), Some(t(100)))
    );
    w.assert_settled(t(101));
    w.assert_settled(t(10_000));
    assert_eq!(
        w.reasons(),
        [
            reason::ISSUED,
            event::UNUSED_SOON,
            event::DEACTIVATED_UNUSED
        ]
    );
    assert!(w.events[1..].iter().all(|e| e.warning));

    // The owner switches it on at 500: the clock restarts there.
    w.token.spec.active = true;
    let on = w.pass_switching(t(500));
    assert_eq!(on.switch_off, None);
    assert_eq!(w.status().phase, Some(Phase::Active));
    assert_eq!(w.ready().reason, condition::REASON_ACTIVE);
    assert_eq!(on.requeue_at, Some(t(575)));
    let unused = w.status().unused.unwrap();
    assert_eq!(
        (unused.deactivated_at, unused.reactivated_at),
        (None, Some(t(500)))
    );
    w.assert_settled(t(501));
    w.pass(t(575));
    w.pass_switching(t(600));
    assert_eq!(w.ready().reason, REASON_UNUSED);
    assert_eq!(
        w.reasons()[3..],
        [
            reason::ACTIVATED,
            event::UNUSED_SOON,
            event::DEACTIVATED_UNUSED
        ]
    );
}

#[test]
fn a_use_moves_the_deadline_and_ends_the_warning() {
    let mut w = World::new(unused_spec("100s"));
    w.pass(t(0));
    w.pass(t(80));
    assert!(w.condition(UNUSED_SOON).is_some());
    // A proxy reports a use at 89 (seen at 90): the deadline moves to 189.
    w.reports = vec![report("a", 90, &[("u1", 1)])];
    let used = w.pass(t(90));
    assert_eq!(w.condition(UNUSED_SOON), None);
    assert_eq!(w.status().last_used_at, Some(t(89)));
    assert_eq!(used.requeue_at, Some(t(164)));
    let p = w.pass_switching(t(150));
    assert_eq!(
        (p.switch_off, w.status().phase),
        (None, Some(Phase::Active))
    );
    // A use in a report not yet written to status still counts.
    w.reports = vec![report("a", 180, &[("u1", 2)])];
    w.last_usage_write = Some(t(179));
    let p = w.pass_switching(t(189));
    assert_eq!(
        p.switch_off, None,
        "used at 179, a report the status does not show yet"
    );
    assert_eq!(w.reasons(), [reason::ISSUED, event::UNUSED_SOON]);
}

#[test]
fn a_switch_off_whose_status_write_was_lost_still_reads_as_unused() {
    let mut w = World::new(unused_spec("100s"));
    w.pass(t(0));
    let off = w.pass_landing(t(100), Land::Secrets);
    // The shell's first write (spec and mark) landed; the status did not.
    w.switch(off.switch_off.as_deref().unwrap());
    let again = w.pass_switching(t(101));
    assert_eq!(again.switch_off, None, "not switched off twice");
    assert_eq!(w.ready().reason, REASON_UNUSED);
    assert_eq!(w.status().unused.unwrap().deactivated_at, Some(t(100)));
    assert_eq!(w.reasons(), [reason::ISSUED, event::DEACTIVATED_UNUSED]);
    w.assert_settled(t(102));
}

#[test]
fn the_operator_default_applies_unless_the_spec_says_otherwise() {
    let cases = [
        (spec(), true),
        (unused_spec("0s"), false),
        (unused_spec("1000s"), false),
        (unused_spec("50s"), true),
    ];
    for (s, off) in cases {
        let label = format!("{:?}", s.deactivate_after_unused);
        let mut w = World::new(s);
        w.cfg.deactivate_after_unused = Some(TimeDelta::seconds(100));
        w.pass(t(0));
        let p = w.pass_switching(t(100));
        assert_eq!(p.switch_off.is_some(), off, "{label}");
        assert_eq!(w.token.spec.active, !off, "{label}");
    }
    // The owner's own deactivation is not an unused one, and is not warned about.
    let mut w = World::new(unused_spec("100s"));
    w.pass(t(0));
    w.token.spec.active = false;
    w.pass_switching(t(10));
    w.pass_switching(t(1000));
    assert_eq!(w.ready().reason, condition::REASON_INACTIVE);
    assert_eq!(w.reasons(), [reason::ISSUED, reason::DEACTIVATED]);
}

fn expiring(at: i64) -> World {
    let mut s = spec();
    s.expires_at = Some(t(at));
    let mut w = World::new(s);
    w.cfg.expiry_notices = vec![TimeDelta::days(7), TimeDelta::days(1)];
    w
}

#[test]
fn expiry_notices_come_once_per_lead_and_go_with_the_expiry() {
    let mut w = expiring(10 * DAY);
    assert_eq!(w.pass(t(0)).requeue_at, Some(t(3 * DAY)));
    assert_eq!(w.condition(EXPIRING_SOON), None);

    assert_eq!(w.pass(t(3 * DAY)).requeue_at, Some(t(9 * DAY)));
    let c = w.condition(EXPIRING_SOON).unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Within7d"));
    assert!(c.message.contains(&rfc3339(t(10 * DAY))));
    w.assert_settled(t(4 * DAY));

    assert_eq!(w.pass(t(9 * DAY)).requeue_at, Some(t(10 * DAY)));
    let c = w.condition(EXPIRING_SOON).unwrap();
    assert_eq!(c.reason, "Within1d");
    assert_eq!(
        c.last_transition_time,
        to_time(t(3 * DAY)),
        "still True since 7d"
    );
    w.assert_settled(t(9 * DAY + 1));

    let p = w.pass(t(10 * DAY));
    assert_eq!(p.requeue_at, None);
    assert_eq!(w.status().phase, Some(Phase::Expired));
    assert_eq!(w.condition(EXPIRING_SOON), None);
    w.assert_settled(t(11 * DAY));
    assert_eq!(
        w.reasons(),
        [
            reason::ISSUED,
            event::EXPIRING_SOON,
            event::EXPIRING_SOON,
            reason::EXPIRED
        ]
    );
    assert!(w.events[1].note.contains("within 7d"));
    assert!(w.events[2].note.contains("within 1d"));
}

#[test]
fn a_token_first_seen_inside_the_last_day_gets_only_that_notice() {
    let mut w = expiring(3600);
    w.pass(t(0));
    assert_eq!(w.condition(EXPIRING_SOON).unwrap().reason, "Within1d");
    assert_eq!(w.reasons(), [reason::ISSUED, event::EXPIRING_SOON]);
    // Moving expiresAt out of every window clears the notice; back in, a new one.
    w.token.spec.expires_at = Some(t(30 * DAY));
    w.pass(t(10));
    assert_eq!(w.condition(EXPIRING_SOON), None);
    w.token.spec.expires_at = Some(t(2 * DAY));
    w.pass(t(20));
    assert_eq!(w.condition(EXPIRING_SOON).unwrap().reason, "Within7d");
    assert_eq!(w.reasons().len(), 3);
    // An inactive token is not warned about.
    w.token.spec.active = false;
    w.pass(t(30));
    assert_eq!(w.condition(EXPIRING_SOON), None);
    w.pass(t(2 * DAY - 10));
    assert_eq!(w.reasons().last(), Some(&reason::DEACTIVATED));
}

#[test]
fn the_requeue_is_the_nearest_future_notice_instant() {
    // (expires at, unused limit, now, want) with the token issued at 0.
    let cases = [
        (Some(10 * DAY), None, 0, Some(3 * DAY)),
        (Some(10 * DAY), None, 3 * DAY, Some(9 * DAY)),
        (Some(10 * DAY), None, 9 * DAY, Some(10 * DAY)),
        (None, Some("100s"), 0, Some(75)),
        (None, Some("100s"), 75, Some(100)),
        (Some(80), Some("100s"), 0, Some(75)),
        (Some(70), Some("100s"), 0, Some(70)),
        (Some(10 * DAY), Some("30d"), 0, Some(3 * DAY)),
        (
            Some(30 * DAY),
            Some("10d"),
            0,
            Some(10 * DAY - DAY * 10 / 4),
        ),
        (None, None, 0, None),
    ];
    for (expires, limit, now, want) in cases {
        let mut s = limit.map_or_else(spec, unused_spec);
        s.expires_at = expires.map(t);
        let mut w = World::new(s);
        w.cfg.expiry_notices = vec![TimeDelta::days(7), TimeDelta::days(1)];
        w.pass(t(0));
        let p = w.pass(t(now));
        assert_eq!(
            p.requeue_at,
            want.map(t),
            "expires {expires:?} limit {limit:?} at {now}"
        );
    }
}
