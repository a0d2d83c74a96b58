//! The notices' rules on their own, as tables: the limit in force, the
//! warning lead, the expiry notice in force, the switch-off decision.

use std::collections::BTreeMap;

use chrono::TimeZone;

use super::*;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_900_000_000 + secs, 0).unwrap()
}

const DAY: TimeDelta = TimeDelta::days(1);

fn spec(json: &str) -> ApiTokenSpec {
    serde_json::from_str(json).unwrap()
}

#[test]
fn the_spec_limit_wins_over_the_default_and_0s_turns_it_off() {
    let week = Some(TimeDelta::days(7));
    let cases = [
        (r#"{"product":"a"}"#, None, None),
        (r#"{"product":"a"}"#, week, week),
        (
            r#"{"product":"a","deactivateAfterUnused":"3s"}"#,
            week,
            Some(TimeDelta::seconds(3)),
        ),
        (
            r#"{"product":"a","deactivateAfterUnused":"1h30m"}"#,
            None,
            Some(TimeDelta::minutes(90)),
        ),
        (
            r#"{"product":"a","deactivateAfterUnused":"0s"}"#,
            week,
            None,
        ),
        (
            r#"{"product":"a","deactivateAfterUnused":"3651d"}"#,
            week,
            None,
        ),
        (
            r#"{"product":"a","deactivateAfterUnused":"99999999999999999999d"}"#,
            week,
            None,
        ),
    ];
    for (json, default, want) in cases {
        assert_eq!(
            unused_limit(&spec(json), default),
            want,
            "{json} {default:?}"
        );
    }
}

#[test]
fn the_unused_warning_comes_a_week_ahead_or_a_quarter_of_a_short_limit() {
    for (limit, lead) in [
        (TimeDelta::days(90), TimeDelta::days(7)),
        (TimeDelta::days(28), TimeDelta::days(7)),
        (TimeDelta::days(8), TimeDelta::days(2)),
        (TimeDelta::seconds(8), TimeDelta::seconds(2)),
        (TimeDelta::seconds(3), TimeDelta::milliseconds(750)),
    ] {
        assert_eq!(unused_lead(limit), lead, "{limit}");
    }
}

#[test]
fn the_expiry_notice_in_force_is_the_shortest_lead_reached() {
    let leads = [DAY * 7, DAY];
    let at = t(0) + DAY * 30;
    let cases = [
        (at - DAY * 8, None),
        (at - DAY * 7, Some(DAY * 7)),
        (at - DAY * 2, Some(DAY * 7)),
        (at - DAY, Some(DAY)),
        (at - TimeDelta::seconds(1), Some(DAY)),
        (at, None),
        (at + DAY, None),
    ];
    for (now, want) in cases {
        assert_eq!(expiry_notice(&leads, at, now), want, "{now}");
    }
    assert_eq!(expiry_notice(&[], at, at - DAY), None);
}

/// An issued token at `t(0)`, as the status last written shows it.
fn token(json: &str, phase: Phase) -> ApiToken {
    let mut tok = ApiToken::new("ci-bot", spec(json));
    tok.metadata.uid = Some("u1".into());
    tok.status = Some(ApiTokenStatus {
        phase: Some(phase),
        created_at: Some(t(0)),
        ..Default::default()
    });
    tok
}

fn marked(mut tok: ApiToken, at: DateTime<Utc>) -> ApiToken {
    let value = at.to_rfc3339_opts(SecondsFormat::Nanos, true);
    tok.metadata.annotations = Some(BTreeMap::from([(
        DEACTIVATED_UNUSED_ANNOTATION.to_owned(),
        value,
    )]));
    tok
}

fn reactivated(mut tok: ApiToken, at: DateTime<Utc>) -> ApiToken {
    if let Some(s) = tok.status.as_mut() {
        s.unused = Some(UnusedStatus {
            reactivated_at: Some(at),
            ..Default::default()
        });
    }
    tok
}

#[test]
fn the_switch_off_decision() {
    let limit = Some(TimeDelta::seconds(100));
    let on = r#"{"product":"a"}"#;
    let off = r#"{"product":"a","active":false}"#;
    let revoked = r#"{"product":"a","revoked":true}"#;
    let expired = r#"{"product":"a","expiresAt":"2030-01-01T00:00:00Z"}"#;
    let mut never_issued = token(on, Phase::Pending);
    never_issued.status = None;
    // (case, token, last use, now, switch off, off since, reactivated)
    let cases = [
        (
            "not yet",
            token(on, Phase::Active),
            None,
            t(99),
            false,
            None,
            None,
        ),
        (
            "at the deadline",
            token(on, Phase::Active),
            None,
            t(100),
            true,
            Some(t(100)),
            None,
        ),
        (
            "used since",
            token(on, Phase::Active),
            Some(t(50)),
            t(120),
            false,
            None,
            None,
        ),
        (
            "used, then idle",
            token(on, Phase::Active),
            Some(t(50)),
            t(150),
            true,
            Some(t(150)),
            None,
        ),
        (
            "owner's own off",
            token(off, Phase::Inactive),
            None,
            t(500),
            false,
            None,
            None,
        ),
        (
            "revoked",
            token(revoked, Phase::Revoked),
            None,
            t(500),
            false,
            None,
            None,
        ),
        (
            "expired",
            token(expired, Phase::Expired),
            None,
            t(500),
            false,
            None,
            None,
        ),
        (
            "never issued",
            never_issued,
            None,
            t(500),
            false,
            None,
            None,
        ),
        (
            "off for unused",
            marked(token(off, Phase::Inactive), t(100)),
            None,
            t(500),
            false,
            Some(t(100)),
            None,
        ),
        // Switched on again: the clock restarts now, not at the old deadline.
        (
            "reactivated",
            marked(token(on, Phase::Inactive), t(100)),
            None,
            t(500),
            false,
            None,
            Some(t(500)),
        ),
        (
            "reactivated, status behind",
            marked(token(on, Phase::Active), t(100)),
            None,
            t(500),
            false,
            None,
            Some(t(500)),
        ),
        (
            "owner's own off again",
            reactivated(marked(token(off, Phase::Inactive), t(100)), t(200)),
            None,
            t(250),
            false,
            None,
            Some(t(200)),
        ),
        (
            "reactivation recorded",
            reactivated(marked(token(on, Phase::Active), t(100)), t(500)),
            None,
            t(550),
            false,
            None,
            Some(t(500)),
        ),
        (
            "idle after reactivation",
            reactivated(marked(token(on, Phase::Active), t(100)), t(500)),
            None,
            t(600),
            true,
            Some(t(600)),
            Some(t(500)),
        ),
    ];
    for (case, tok, last_use, now, switch, off_since, again) in cases {
        let u = unused(&tok, limit, last_use, now);
        assert_eq!(
            (u.switch_off, u.off_since, u.reactivated_at),
            (switch, off_since, again),
            "{case}"
        );
        assert_eq!(
            u.applied(&tok).map(|t| t.spec.active),
            switch.then_some(false),
            "{case}"
        );
    }
    // No limit: nothing is ever switched off.
    let u = unused(&token(on, Phase::Active), None, None, t(1_000_000));
    assert_eq!((u.switch_off, u.deadline), (false, None));
}
