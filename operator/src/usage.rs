//! The operator's half of the usage algorithm of `prodgy_crds::usage`.
//!
//! Per token ([`fold`]): `status.usage = ledger.base + Σ live reports not in
//! ledger.folded`. A report not updated for the retention is retired in three
//! idempotent steps:
//!
//! 1. one status write adds its counts to `base` and its name to `folded`
//!    ([`fold`], per token);
//! 2. once every token it mentions has folded it, the report is deleted
//!    ([`retirable`], across tokens);
//! 3. a name in `folded` whose report is gone is dropped ([`fold`], per token).
//!
//! A crash between any two steps repeats nothing: after step 1 the report is
//! excluded from the sum because it is in `folded`; after step 2 it is gone
//! from the sum and still in `base`; step 3 only tidies the list.

use std::{collections::BTreeSet, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};
use prodgy_crds::{UsageLedger, UsageReport};

/// One token's usage as the status should show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folded {
    /// `status.usage`.
    pub usage: i64,
    /// `status.lastUsedAt`.
    pub last_used_at: Option<DateTime<Utc>>,
    /// `status.usageLedger` after steps 1 and 3.
    pub ledger: UsageLedger,
    /// Reports folded into `base` by this pass (step 1), for metrics.
    pub newly_folded: Vec<String>,
    /// When the next live report mentioning the token becomes retirable.
    pub next_retirement: Option<DateTime<Utc>>,
}

/// Computes usage for the token with `uid` from its ledger and every live
/// report (the whole report store: step 3 needs to know which reports exist).
pub fn fold(
    uid: &str,
    ledger: &UsageLedger,
    reports: &[Arc<UsageReport>],
    now: DateTime<Utc>,
    retention: TimeDelta,
) -> Folded {
    let live: BTreeSet<&str> = reports
        .iter()
        .filter_map(|r| r.metadata.name.as_deref())
        .collect();
    let mut next = UsageLedger {
        base: ledger.base,
        // Step 3: a retired report that is gone needs no remembering.
        folded: ledger
            .folded
            .iter()
            .filter(|n| live.contains(n.as_str()))
            .cloned()
            .collect(),
        last_used_at: ledger.last_used_at,
        window: ledger.window,
    };
    let mut usage_live: i64 = 0;
    let mut last_live: Option<DateTime<Utc>> = None;
    let mut newly_folded = Vec::new();
    let mut next_retirement: Option<DateTime<Utc>> = None;
    for report in reports {
        let Some(name) = report.metadata.name.as_deref() else {
            continue;
        };
        let Some(entry) = report.spec.tokens.get(uid) else {
            continue;
        };
        if next.folded.iter().any(|n| n == name) {
            continue;
        }
        let count = entry.count.max(0);
        let retire_at = crate::plan::later(report.spec.updated_at, retention);
        if now >= retire_at {
            // Step 1: move the count from the report into the ledger.
            next.base = next.base.saturating_add(count);
            next.last_used_at = max_time(next.last_used_at, Some(entry.last_used_at));
            next.folded.push(name.to_owned());
            newly_folded.push(name.to_owned());
        } else {
            usage_live = usage_live.saturating_add(count);
            last_live = max_time(last_live, Some(entry.last_used_at));
            next_retirement = min_time(next_retirement, Some(retire_at));
        }
    }
    next.folded.sort();
    next.folded.dedup();
    Folded {
        usage: next.base.saturating_add(usage_live),
        last_used_at: max_time(next.last_used_at, last_live),
        ledger: next,
        newly_folded,
        next_retirement,
    }
}

/// What the report retirer knows about a token a report mentions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mentioned {
    /// Outside the namespaces this operator reconciles: it will never fold,
    /// so it must not hold the report back.
    Unwatched,
    /// No such ApiToken (deleted), or one with another UID (recreated).
    Gone,
    /// The token exists; `folded` says whether its ledger lists the report.
    Present {
        /// Step 1 is done for this token.
        folded: bool,
    },
}

/// Step 2: the reports that may be deleted now. `lookup(report, namespace,
/// name, uid)` says what became of each token the report mentions. A report is deleted only once
/// it is past the retention *and* every token it mentions has folded it, so a
/// deletion never loses a count.
pub fn retirable(
    reports: &[Arc<UsageReport>],
    now: DateTime<Utc>,
    retention: TimeDelta,
    lookup: impl Fn(&str, &str, &str, &str) -> Mentioned,
) -> Vec<&UsageReport> {
    reports
        .iter()
        .filter(|r| now >= crate::plan::later(r.spec.updated_at, retention))
        .filter(|r| {
            let Some(report) = r.metadata.name.as_deref() else {
                return false;
            };
            r.spec.tokens.iter().all(|(uid, t)| {
                !matches!(
                    lookup(report, &t.namespace, &t.name, uid),
                    Mentioned::Present { folded: false }
                )
            })
        })
        .map(AsRef::as_ref)
        .collect()
}

/// Whether a ledger lists a report as folded (for [`retirable`]'s lookup).
pub fn has_folded(ledger: Option<&UsageLedger>, report: &str) -> bool {
    ledger.is_some_and(|l| l.folded.iter().any(|n| n == report))
}

fn max_time(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn min_time(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;
    use prodgy_crds::{TokenUsage, UsageReportSpec};

    use super::*;

    pub(crate) fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_900_000_000 + secs, 0).unwrap()
    }

    pub(crate) fn report(name: &str, updated: i64, counts: &[(&str, i64)]) -> Arc<UsageReport> {
        let tokens: BTreeMap<String, TokenUsage> = counts
            .iter()
            .map(|(uid, c)| {
                (
                    (*uid).to_owned(),
                    TokenUsage {
                        namespace: "team-a".into(),
                        name: format!("tok-{uid}"),
                        count: *c,
                        last_used_at: t(updated - 1),
                        window: None,
                    },
                )
            })
            .collect();
        let mut r = UsageReport::new(
            name,
            UsageReportSpec {
                replica: "proxy-0".into(),
                epoch: name.into(),
                shard: 0,
                updated_at: t(updated),
                tokens,
            },
        );
        r.metadata.namespace = Some("prodgy-tokens".into());
        Arc::new(r)
    }

    const RET: TimeDelta = TimeDelta::seconds(120);

    #[test]
    fn usage_is_base_plus_live_reports_summed_over_replicas() {
        let reports = [
            report("a", 100, &[("u1", 5), ("u2", 7)]),
            report("b", 100, &[("u1", 3)]),
        ];
        let ledger = UsageLedger {
            base: 10,
            ..Default::default()
        };
        let f = fold("u1", &ledger, &reports, t(110), RET);
        assert_eq!(f.usage, 18);
        assert_eq!(f.last_used_at, Some(t(99)));
        assert!(f.newly_folded.is_empty());
        assert_eq!(f.next_retirement, Some(t(220)));
        assert_eq!(fold("u3", &ledger, &reports, t(110), RET).usage, 10);
    }

    #[test]
    fn a_rewritten_report_is_never_counted_twice() {
        // Counts are cumulative: the new value replaces the old one.
        let ledger = UsageLedger::default();
        let first = fold(
            "u1",
            &ledger,
            &[report("a", 100, &[("u1", 5)])],
            t(101),
            RET,
        );
        let second = fold(
            "u1",
            &ledger,
            &[report("a", 110, &[("u1", 9)])],
            t(111),
            RET,
        );
        assert_eq!((first.usage, second.usage), (5, 9));
    }

    /// Runs the three steps with a "crash" (a re-plan from the persisted
    /// state) between each, checking the visible usage never changes.
    #[test]
    fn retirement_survives_a_crash_between_every_step() {
        let stale = report("old", 0, &[("u1", 40), ("u2", 2)]);
        let live = report("new", 200, &[("u1", 2)]);
        let now = t(200);
        let ledger0 = UsageLedger::default();

        // Before step 1 the stale report still counts.
        let before = fold("u1", &ledger0, &[stale.clone(), live.clone()], t(100), RET);
        let mut reports = vec![stale, live];
        assert_eq!(before.usage, 42);

        // Step 1 (planned; a crash before the write changes nothing: same plan again).
        let s1 = fold("u1", &ledger0, &reports, now, RET);
        assert_eq!(s1, fold("u1", &ledger0, &reports, now, RET));
        assert_eq!(s1.usage, 42);
        assert_eq!(s1.ledger.base, 40);
        assert_eq!(s1.ledger.folded, vec!["old".to_owned()]);
        assert_eq!(s1.newly_folded, vec!["old".to_owned()]);

        // After the write, a re-plan folds nothing more.
        let again = fold("u1", &s1.ledger, &reports, now, RET);
        assert_eq!(again.usage, 42);
        assert_eq!(again.ledger, s1.ledger);
        assert!(again.newly_folded.is_empty());

        // Step 2 waits for u2 too.
        let mut ledgers: BTreeMap<String, UsageLedger> =
            BTreeMap::from([("u1".to_owned(), s1.ledger.clone())]);
        fn lookup(
            ledgers: &BTreeMap<String, UsageLedger>,
        ) -> impl Fn(&str, &str, &str, &str) -> Mentioned + use<> {
            let ledgers = ledgers.clone();
            move |report, _, _, uid| Mentioned::Present {
                folded: has_folded(ledgers.get(uid), report),
            }
        }
        assert!(retirable(&reports, now, RET, lookup(&ledgers)).is_empty());
        let s1b = fold("u2", &UsageLedger::default(), &reports, now, RET);
        ledgers.insert("u2".to_owned(), s1b.ledger);
        let doomed = retirable(&reports, now, RET, lookup(&ledgers));
        assert_eq!(doomed.len(), 1);
        assert_eq!(doomed[0].metadata.name.as_deref(), Some("old"));

        // Step 2 done: the report is gone; usage is unchanged, step 3 tidies.
        reports.retain(|r| r.metadata.name.as_deref() != Some("old"));
        let s3 = fold("u1", &s1.ledger, &reports, now, RET);
        assert_eq!(s3.usage, 42);
        assert_eq!(s3.ledger.base, 40);
        assert!(s3.ledger.folded.is_empty());
        // And after step 3 a re-plan is stable.
        assert_eq!(fold("u1", &s3.ledger, &reports, now, RET).ledger, s3.ledger);
        assert_eq!(fold("u1", &s3.ledger, &reports, now, RET).usage, 42);
    }

    #[test]
    fn retirement_boundary_is_exact() {
        let r = [report("a", 0, &[("u1", 4)])];
        let l = UsageLedger::default();
        let just_before = fold("u1", &l, &r, t(119), RET);
        assert!(just_before.newly_folded.is_empty());
        assert_eq!(just_before.next_retirement, Some(t(120)));
        assert_eq!(
            fold("u1", &l, &r, t(120), RET).newly_folded,
            vec!["a".to_owned()]
        );
    }

    #[test]
    fn retirer_ignores_tokens_that_cannot_fold() {
        let reports = [report("old", 0, &[("u1", 1), ("u2", 1)])];
        for other in [Mentioned::Unwatched, Mentioned::Gone] {
            let got = retirable(&reports, t(500), RET, |_, _, _, uid| {
                if uid == "u1" {
                    Mentioned::Present { folded: true }
                } else {
                    other
                }
            });
            assert_eq!(got.len(), 1, "{other:?}");
        }
        // A fresh report is never retired, whatever the tokens say.
        let fresh = [report("new", 490, &[("u1", 1)])];
        assert!(retirable(&fresh, t(500), RET, |_, _, _, _| Mentioned::Gone).is_empty());
    }

    #[test]
    fn negative_counts_are_ignored_and_sums_saturate() {
        let r = [
            report("a", 100, &[("u1", -5)]),
            report("b", 100, &[("u1", i64::MAX)]),
        ];
        let l = UsageLedger {
            base: 1,
            ..Default::default()
        };
        assert_eq!(fold("u1", &l, &r, t(100), RET).usage, i64::MAX);
        assert_eq!(
            fold("u1", &UsageLedger::default(), &r[..1], t(100), RET).usage,
            0
        );
    }
}
