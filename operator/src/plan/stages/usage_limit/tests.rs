//! The usage cap's window sums, record and status, case by case.

use std::collections::BTreeMap;

use chrono::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use prodgy_crds::{RecordState, Token, TokenUsage, UsageReportSpec};

use super::*;
use crate::usage::fold;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_900_000_000 + secs, 0).unwrap()
}

const RET: chrono::TimeDelta = chrono::TimeDelta::seconds(120);

fn token(limit: &str) -> ApiToken {
    let spec =
        serde_json::from_str(&format!(r#"{{"product":"acme","usageLimit":{limit}}}"#)).unwrap();
    let mut tok = ApiToken::new("ci-bot", spec);
    tok.metadata.namespace = Some("team-a".into());
    tok.metadata.uid = Some("u1".into());
    tok.metadata.creation_timestamp = Some(Time(Timestamp::from_second(t(0).timestamp()).unwrap()));
    tok
}

/// A report of epoch `epoch` updated at `updated` with `u1`'s lifetime
/// `count` and its count `in_window` of the window starting at `start`.
fn report(epoch: &str, updated: i64, count: i64, window: Option<(i64, i64)>) -> Arc<UsageReport> {
    let usage = TokenUsage {
        namespace: "team-a".into(),
        name: "ci-bot".into(),
        count,
        last_used_at: t(updated - 1),
        window: window.map(|(start, count)| WindowCount {
            start: t(start),
            count,
        }),
    };
    let mut r = UsageReport::new(
        &format!("proxy-{epoch}-0"),
        UsageReportSpec {
            replica: "proxy".into(),
            epoch: epoch.into(),
            shard: 0,
            updated_at: t(updated),
            tokens: BTreeMap::from([("u1".to_owned(), usage)]),
        },
    );
    r.metadata.namespace = Some("prodgy-tokens".into());
    Arc::new(r)
}

fn cap_at(tok: &ApiToken, ledger: &UsageLedger, reports: &[Arc<UsageReport>], now: i64) -> Capped {
    let folded = fold("u1", ledger, reports, t(now), RET);
    capped(tok, ledger, &folded, reports, t(now)).unwrap()
}

#[test]
fn no_cap_no_stage() {
    let mut tok = token("null");
    tok.spec.usage_limit = None;
    let folded = fold("u1", &UsageLedger::default(), &[], t(0), RET);
    assert_eq!(
        capped(&tok, &UsageLedger::default(), &folded, &[], t(0)),
        None
    );
}

#[test]
fn the_window_sums_only_reports_of_the_current_window_with_each_epochs_part() {
    let tok = token(r#"{"requests":10,"per":"1h"}"#);
    let reports = [
        report("a", 3_700, 50, Some((3_600, 4))),
        report("b", 3_700, 9, Some((3_600, 2))),
        // Not rolled over yet: its calls were in the previous window.
        report("c", 3_590, 7, Some((0, 7))),
        // Written before the cap: no window.
        report("d", 3_700, 30, None),
    ];
    let cap = cap_at(&tok, &UsageLedger::default(), &reports, 3_700);
    assert_eq!(cap.used, 6);
    assert_eq!(
        cap.reported,
        BTreeMap::from([("a".into(), 4), ("b".into(), 2)])
    );
    assert_eq!(cap.window.start, t(3_600));
    let status = cap.status();
    assert_eq!((status.used, status.remaining), (6, 4));
    assert_eq!(status.renews_at, Some(t(7_200)));
    assert_eq!(status.window_start, Some(t(3_600)));
    // The requeue moves to the renewal.
    assert_eq!(wake(Some(t(9_000)), Some(&cap)), Some(t(7_200)));
    assert_eq!(wake(Some(t(5_000)), Some(&cap)), Some(t(5_000)));
}

#[test]
fn a_retired_report_moves_its_window_count_to_the_ledger_never_twice() {
    let tok = token(r#"{"requests":10,"per":"1h"}"#);
    let reports = [
        report("old", 3_610, 5, Some((3_600, 3))),
        report("new", 3_800, 2, Some((3_600, 2))),
    ];
    // Before retirement: both live.
    let before = cap_at(&tok, &UsageLedger::default(), &reports, 3_700);
    assert_eq!(before.used, 5);
    // The pass that folds "old" moves its 3 into the ledger's window.
    let folded = fold("u1", &UsageLedger::default(), &reports, t(3_730), RET);
    let cap = capped(&tok, &UsageLedger::default(), &folded, &reports, t(3_730)).unwrap();
    assert_eq!(cap.used, 5);
    assert_eq!(cap.reported, BTreeMap::from([("new".into(), 2)]));
    assert_eq!(
        cap.retired,
        Some(WindowCount {
            start: t(3_600),
            count: 3
        })
    );
    // The next pass reads the written ledger: still 5, counted once.
    let mut ledger = folded.ledger;
    ledger.window = cap.retired;
    assert_eq!(cap_at(&tok, &ledger, &reports, 3_740).used, 5);
    // Once deleted, the ledger alone carries it.
    assert_eq!(cap_at(&tok, &ledger, &reports[1..], 3_750).used, 5);
    // The next window starts from zero, ledger included.
    let next = cap_at(&tok, &ledger, &reports[1..], 7_300);
    assert_eq!((next.used, next.retired), (0, None));
}

#[test]
fn a_lifetime_cap_counts_the_lifetime_usage_and_never_renews() {
    let tok = token(r#"{"requests":100}"#);
    let ledger = UsageLedger {
        base: 40,
        ..Default::default()
    };
    let reports = [
        report("a", 500, 12, Some((0, 5))),
        report("b", 500, 3, None),
    ];
    let cap = cap_at(&tok, &ledger, &reports, 500);
    assert_eq!(
        cap.used, 55,
        "base 40 + 12 + 3, calls before the cap included"
    );
    assert_eq!(cap.reported, BTreeMap::from([("a".into(), 5)]));
    let status = cap.status();
    assert_eq!(
        (status.remaining, status.renews_at, status.window_start),
        (45, None, None)
    );
    assert_eq!(wake(None, Some(&cap)), None);
}

#[test]
fn an_unusable_period_fails_closed_as_a_lifetime_cap() {
    let tok = token(r#"{"requests":5,"per":"10s"}"#);
    let cap = cap_at(
        &tok,
        &UsageLedger::default(),
        &[report("a", 10, 9, Some((0, 9)))],
        10,
    );
    assert_eq!((cap.per_s, cap.window.end, cap.used), (None, None, 9));
}

fn record(limit: Option<RecordLimit>) -> HashedRecord {
    let t = Token::generate("prod").unwrap();
    HashedRecord {
        usage_limit: limit.map(Box::new),
        ..HashedRecord::active("team-a", "ci-bot", "u1", "acme", &t.hash())
    }
}

#[test]
fn usage_alone_waits_for_the_status_write_unless_it_exhausts_the_cap() {
    let tok = token(r#"{"requests":10,"per":"1h"}"#);
    let cap = |a: i64| {
        cap_at(
            &tok,
            &UsageLedger::default(),
            &[report("a", 10, a, Some((0, a)))],
            10,
        )
    };
    let seen = record(Some(cap(3).record()));
    let settle = |used: i64, status_planned: bool| {
        let want = HashedRecord {
            usage_limit: None,
            ..seen.clone()
        };
        settle_record(Some(want), Some(&seen), Some(&cap(used)), status_planned).unwrap()
    };
    assert_eq!(settle(5, false), seen, "deferred with the status");
    assert_eq!(settle(5, true).usage_limit.unwrap().used, 5);
    assert_eq!(
        settle(10, false).usage_limit.unwrap().used,
        10,
        "exhausted: at once"
    );
    // Anything else in the record is never held back.
    let mut other = seen.clone();
    other.state = RecordState::Inactive;
    let got = settle_record(Some(other), Some(&seen), Some(&cap(5)), false).unwrap();
    assert_eq!(
        (got.state, got.usage_limit.unwrap().used),
        (RecordState::Inactive, 5)
    );
    // A new cap is written at once; a removed one goes.
    let bare = record(None);
    assert!(
        settle_record(Some(bare.clone()), Some(&bare), Some(&cap(1)), false)
            .unwrap()
            .usage_limit
            .is_some()
    );
    assert_eq!(
        settle_record(Some(bare.clone()), Some(&seen), None, false),
        Some(bare)
    );
}
